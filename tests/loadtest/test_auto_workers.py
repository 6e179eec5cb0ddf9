"""``--workers auto``: steps whose generator process passed 80% of a core are measured again with more workers.

The load process is replaced by a fake here (named so): a CPU-bound generator cannot be provoked reliably on a
shared test machine. The fake returns synthetic steps whose CPU depends on the worker count it is given.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from accelserve.loadtest import runner
from accelserve.loadtest.results import RunResult, SweepSettings
from tests.loadtest.synthetic import make_run


def fake_load_process(cpu_by_workers: dict[int, dict[float, float]], calls: list[tuple[int, tuple]]):
    def run(plan, settings: SweepSettings, work_dir: Path) -> tuple[RunResult, int]:
        calls.append((settings.workers, settings.levels))
        result = make_run([(lv, 100.0 * (1 + settings.workers), 2.0) for lv in settings.levels])
        for step in result.steps:
            step.load_generator_cpu_percent = cpu_by_workers[settings.workers][step.level]
        return result, 0

    return run


@pytest.fixture
def two_cores(monkeypatch) -> None:
    monkeypatch.setattr(runner, "max_auto_workers", lambda: 2)


def test_fake_process_auto_workers_remeasure_only_limited_steps(monkeypatch, tmp_path: Path, two_cores) -> None:
    calls: list = []
    cpu = {0: {1: 30.0, 4: 95.0, 16: 99.0}, 2: {4: 60.0, 16: 90.0}}
    monkeypatch.setattr(runner, "run_load_process", fake_load_process(cpu, calls))
    settings = SweepSettings(levels=(1, 4, 16), workers_auto=True)
    result, _ = runner.run_sweep(None, settings, tmp_path)  # type: ignore[arg-type]
    assert calls == [(0, (1, 4, 16)), (2, (4, 16))]  # at most one worker per core: stops at 2
    assert [s.workers for s in result.steps] == [0, 2, 2]
    assert [s.requests_per_s > 250 for s in result.steps] == [False, True, True]  # the re-measured steps replace
    assert [s.generator_limited for s in result.steps] == [False, False, True]  # still limited at the maximum
    assert result.load_generator["auto_workers"] == [{"workers": 0, "levels": [1, 4, 16]},
                                                     {"workers": 2, "levels": [4, 16]}]


def test_fake_process_without_auto_nothing_is_remeasured(monkeypatch, tmp_path: Path, two_cores) -> None:
    calls: list = []
    monkeypatch.setattr(runner, "run_load_process", fake_load_process({0: {4: 99.0}}, calls))
    result, _ = runner.run_sweep(None, replace(SweepSettings(levels=(4,))), tmp_path)  # type: ignore[arg-type]
    assert calls == [(0, (4,))] and result.steps[0].generator_limited
