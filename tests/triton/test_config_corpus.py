"""The config corpus (tests/fixtures/triton_config_corpus/README.md): every case Triton accepts validates clean,
every case Triton rejects is reported with Triton's reason.

ONNX models run on the real tritonserver through accelserve's ONNX Runtime stand-in (a python-backend model),
because the native onnxruntime backend is missing from the nvidia-pytriton tritonserver."""

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


# ------------------------------------------------------------------------------------------------ end to end
#: accept cases loaded in the local tritonserver (python backend + accelserve's ONNX Runtime stand-in)
TRITON_ACCEPT_SAMPLE = ("accept_example_densenet", "accept_reshape_variable", "accept_example_simple_dyna_sequence",
                        "accept_example_simple_string", "accept_implicit_state_zero", "accept_model_warmup")
#: reject cases decided by Triton's core (not the onnxruntime backend, which the stand-in replaces here): the real
#: tritonserver must refuse them with the reason the validator gives
TRITON_CORE_REJECTS = (
    "reject_control_kind_start_multiple", "reject_control_tensor_multiple", "reject_control_tensor_no_value",
    "reject_control_two_value_lists", "reject_control_three_values", "reject_corrid_bad_type",
    "reject_corrid_with_false_true", "reject_oldest_preferred_too_big", "reject_direct_slot_utilization",
    "reject_default_priority_level0", "reject_priority_level_policy", "reject_preserve_ordering_priorities",
    "reject_preserve_ordering_delay", "reject_preferred_batch_size", "reject_reshape_elementcount",
    "reject_reshape_nobatch_empty", "reject_reshape_variable_count", "reject_zerodims_input",
    "reject_reshape_zerodims", "reject_missing_datatype", "reject_negative_max_batch_size", "reject_invalid_cpu",
    "reject_shape_tensor_not_tensorrt", "reject_nchw_two_dims", "reject_batch_output_unknown_target",
    "reject_warmup_variable_dims",
)


def _merged_repository(names: tuple[str, ...], destination: Path) -> dict[str, str]:
    """One repository holding the models of the named cases, each renamed after its case; model name -> case."""
    import re
    import shutil

    destination.mkdir()
    models = {}
    for name in names:
        installed = install(next(c for c in CASES if c.name == name), destination.parent / f"{name}.case")
        model_dirs = sorted(p for p in installed.iterdir() if p.is_dir())
        for model_dir in model_dirs:
            model = name if len(model_dirs) == 1 else f"{name}-{model_dir.name}"
            shutil.move(str(model_dir), destination / model)
            config = destination / model / "config.pbtxt"
            text = re.sub(r'^name\s*:\s*"[^"]*"\s*$', "", config.read_text(), flags=re.M)
            config.write_text(f'name: "{model}"\n{text}')
            models[model] = name
    return models


@pytest.mark.e2e
def test_real_tritonserver_agrees_on_a_sample(tmp_path: Path) -> None:
    from accelserve.errors import ServerError
    from accelserve.triton.model_control import ModelControl
    from accelserve.triton.server import TritonServer

    models = _merged_repository(TRITON_ACCEPT_SAMPLE + TRITON_CORE_REJECTS, tmp_path / "repo")
    disagreements = []
    with TritonServer(tmp_path / "repo", model_control=ModelControl(mode="explicit", strict=False)) as server:
        for name, case in models.items():
            reason = expectation(next(c for c in CASES if c.name == case))
            try:
                server.load_model(name)
                if reason is not None:
                    disagreements.append(f"{name}: Triton loaded it; expected {reason!r}")
            except ServerError as exc:
                triton_says = exc.message.replace(f" for {name}", "")  # Triton appends " for <model>"
                if reason is None or reason not in triton_says:
                    disagreements.append(f"{name}: Triton says {exc.message!r}; expected {reason!r}")
    assert not disagreements, "\n".join(disagreements)
