"""The config corpus (tests/fixtures/triton_config_corpus/README.md): every case Triton accepts validates clean,
every case Triton rejects is reported with Triton's reason."""

from __future__ import annotations

from pathlib import Path

import pytest

from accelserve.triton.validate import errors, validate_repository
from tests.triton.corpus import cases, expectation, install

CASES = cases()


def test_the_corpus_has_both_kinds_of_case() -> None:
    kinds = [expectation(c) is None for c in CASES]
    assert sum(kinds) >= 25 and len(kinds) - sum(kinds) >= 60


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_case_validates_as_triton_decides(case: Path, tmp_path: Path) -> None:
    repo = install(case, tmp_path / "repo")
    problems = errors(validate_repository(repo))
    text = "\n".join(str(p) for p in problems)
    reason = expectation(case)
    if reason is None:
        assert problems == [], text
    else:
        assert reason in text, f"expected Triton's reason {reason!r}, got:\n{text or '(no problems)'}"
