"""Entry point: ``accelserve COMMAND ...``.

Each command lives in its own module with ``register(subparsers)``; the module sets ``func`` on its parser, a
callable ``func(args) -> int`` (the exit code). User errors (:class:`AccelserveError`) print their message and
exit 1 without a traceback; anything else is a bug and shows its traceback.

Signals, for every command alike: SIGINT raises KeyboardInterrupt and SIGTERM raises :class:`Terminated` (a
KeyboardInterrupt), so the commands' ``finally`` blocks and context managers remove temporary directories and stop
child processes; the process then exits 130 (SIGINT) or 143 (SIGTERM) with a message. Both handlers are installed
explicitly: a background job of a non-interactive shell (``accelserve serve repo &`` in a script) starts with
SIGINT ignored, and Python keeps an ignored SIGINT ignored.
"""

from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback
from collections.abc import Sequence

from accelserve import __version__
from accelserve.errors import AccelserveError, Terminated

#: command modules under accelserve.cli, in --help order
COMMAND_MODULES = [
    "plugins_cmd",
    "export_cmd",
    "verify_cmd",
    "repo_cmd",
    "serve_cmd",
    "infer_cmd",
    "loadtest_cmd",
    "tune_cmd",
    "optimize_cmd",
    "evaluate_cmd",
    "build_engine_cmd",
    "train_compress_cmd",
    "demo_cmd",
    "run_cmd",
]

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3
EXIT_SIGINT = 128 + signal.SIGINT  # 130, as a shell reports a process killed by SIGINT
EXIT_SIGTERM = 128 + signal.SIGTERM  # 143


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is a user error (exit 1), not exit 2 (reserved for failed gates)."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        sys.stderr.write(f"error: {message}\n")
        sys.exit(EXIT_USER_ERROR)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="accelserve",
        description="Export, verify, optimize and serve models on NVIDIA Triton Inference Server.",
    )
    parser.add_argument("--version", action="version", version=f"accelserve {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    sub.required = True
    for name in COMMAND_MODULES:
        importlib.import_module(f"accelserve.cli.{name}").register(sub)
    return parser


class _StopSignals:
    """While active: SIGINT raises KeyboardInterrupt, SIGTERM raises Terminated (once: a second SIGTERM while
    the first one's cleanup runs is ignored, so the cleanup finishes). Restores the previous handlers on exit.
    Only the main thread can install handlers; elsewhere (a test calling main() in a thread) nothing changes."""

    def __init__(self) -> None:
        self._previous: dict[int, object] = {}
        self._terminating = False

    def _on_sigterm(self, signum: int, frame: object) -> None:
        if self._terminating:
            return
        self._terminating = True
        raise Terminated()

    def __enter__(self) -> _StopSignals:
        try:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, signal.default_int_handler)
            self._previous[signal.SIGTERM] = signal.signal(signal.SIGTERM, self._on_sigterm)
        except ValueError:  # not the main thread
            pass
        return self

    def __exit__(self, *exc: object) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)  # type: ignore[arg-type]


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _StopSignals():
            return int(args.func(args) or 0)
    except AccelserveError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except Terminated:
        sys.stderr.write("terminated (SIGTERM): stopped and cleaned up\n")
        return EXIT_SIGTERM
    except KeyboardInterrupt:
        sys.stderr.write("interrupted (SIGINT): stopped and cleaned up\n")
        return EXIT_SIGINT
    except Exception:  # a bug: show everything
        sys.stderr.write("internal error (a bug in accelserve; please report it with this traceback):\n")
        traceback.print_exc()
        return EXIT_INTERNAL_ERROR


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
