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
import os
import signal
import sys
import traceback
from collections.abc import Sequence

from accelserve import __version__, stop
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
        stop.record(signum)
        raise Terminated()

    @staticmethod
    def _on_sigint(signum: int, frame: object) -> None:
        stop.record(signum)
        raise KeyboardInterrupt()

    def __enter__(self) -> _StopSignals:
        stop.reset()
        try:
            self._previous[signal.SIGINT] = signal.signal(signal.SIGINT, self._on_sigint)
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
            code = int(args.func(args) or 0)
            stop.check()  # a stop whose exception a library swallowed still ends as a stop
            return code
    except KeyboardInterrupt as exc:
        return _stopped(exc)
    except Exception as exc:
        interrupt = _interrupt_behind(exc)
        if interrupt is not None:  # a library wrapped the signal's exception (e.g. "Error calling __set_name__")
            return _stopped(interrupt)
        if isinstance(exc, AccelserveError):
            sys.stderr.write(f"error: {exc}\n")
            return exc.exit_code
        sys.stderr.write("internal error (a bug in accelserve; please report it with this traceback):\n")
        traceback.print_exc()  # a bug: show everything
        return EXIT_INTERNAL_ERROR


def _stopped(exc: KeyboardInterrupt) -> int:
    if isinstance(exc, Terminated):
        sys.stderr.write("terminated (SIGTERM): stopped and cleaned up\n")
        return EXIT_SIGTERM
    sys.stderr.write("interrupted (SIGINT): stopped and cleaned up\n")
    return EXIT_SIGINT


def _interrupt_behind(exc: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt (SIGINT) or Terminated (SIGTERM) that ``exc`` was raised from or while handling."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None


def run() -> None:
    code = main()
    if code in (EXIT_SIGINT, EXIT_SIGTERM):
        # Cleanup has run. CPython ends a process by SIGINT (exit status -2, not ours) whenever a KeyboardInterrupt
        # passed through code it ran with PyRun_* (a C extension's import, e.g. onnxruntime's), even when that
        # interrupt was caught afterwards; leave with the documented status instead.
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    sys.exit(code)


if __name__ == "__main__":
    run()
