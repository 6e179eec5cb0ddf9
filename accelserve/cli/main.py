"""Entry point: ``accelserve COMMAND ...``.

Each command lives in its own module with ``register(subparsers)``; the module sets ``func`` on its parser, a
callable ``func(args) -> int`` (the exit code). User errors (:class:`AccelserveError`) print their message and
exit 1 without a traceback; anything else is a bug and shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
import traceback
from collections.abc import Sequence

from accelserve import __version__
from accelserve.errors import AccelserveError

#: command modules under accelserve.cli, in --help order
COMMAND_MODULES = [
    "plugins_cmd",
    "export_cmd",
    "verify_cmd",
    "repo_cmd",
    "serve_cmd",
    "infer_cmd",
    "loadtest_cmd",
    "optimize_cmd",
    "evaluate_cmd",
    "build_engine_cmd",
    "train_compress_cmd",
    "demo_cmd",
]

EXIT_USER_ERROR = 1
EXIT_INTERNAL_ERROR = 3


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


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except AccelserveError as exc:
        sys.stderr.write(f"error: {exc}\n")
        return exc.exit_code
    except KeyboardInterrupt:
        sys.stderr.write("interrupted\n")
        return 130
    except Exception:  # a bug: show everything
        sys.stderr.write("internal error (a bug in accelserve; please report it with this traceback):\n")
        traceback.print_exc()
        return EXIT_INTERNAL_ERROR


def run() -> None:
    sys.exit(main())


if __name__ == "__main__":
    run()
