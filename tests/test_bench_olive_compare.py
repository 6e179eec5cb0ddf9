"""bench/olive_compare.py needs Olive in its own virtual environment; without one it (and bench/run_all.py) must
skip with a message and exit 0, so the benchmark suite still runs on a machine without Olive."""

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_olive_compare_skips_without_olive_venv(tmp_path):
    missing = tmp_path / "no-olive-venv"
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "olive_compare.py"), "--olive-venv", str(missing)],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "SKIPPED" in proc.stdout and str(missing) in proc.stdout
    assert "pip install olive-ai" in proc.stdout
    assert not missing.exists()


def test_run_all_skips_olive_compare_without_olive_venv(tmp_path):
    env = {"ACCELSERVE_OLIVE_VENV": str(tmp_path / "none"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run([sys.executable, str(ROOT / "bench" / "run_all.py"), "--quick", "--only", "olive_compare"],
                          capture_output=True, text=True, timeout=60, env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "== olive_compare: SKIPPED" in proc.stdout  # run_all's own check, before starting the script
