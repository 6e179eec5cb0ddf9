"""`import accelserve` and the CLI's --help must not import a deep-learning framework or Locust/gevent."""

from __future__ import annotations

import json
import subprocess
import sys

HEAVY = ["torch", "tensorflow", "tensorrt", "locust", "gevent", "tf2onnx", "matplotlib"]


def _modules_after(code: str) -> set[str]:
    probe = f"{code}\nimport sys, json\nprint(json.dumps(sorted(sys.modules)))"
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def test_import_accelserve_is_light() -> None:
    loaded = _modules_after("import accelserve")
    assert not [m for m in HEAVY if m in loaded]


def test_cli_parser_is_light() -> None:
    loaded = _modules_after("from accelserve.cli.main import build_parser\nbuild_parser()")
    assert not [m for m in HEAVY if m in loaded]
