"""``validate_repository``: every problem at once, on repositories written by accelserve and by others."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from accelserve.errors import RepositoryError
from accelserve.triton.config import TritonModelOptions
from accelserve.triton.repository import add_model
from accelserve.triton.validate import Problem, validate_repository
from tests.triton import onnx_builders as ob

EXAMPLES = Path(__file__).resolve().parent.parent / "fixtures" / "triton_examples"


def messages(problems: list[Problem]) -> str:
    return "\n".join(str(p) for p in problems)


def install_example(repo: Path, name: str, model) -> Path:  # noqa: ANN001 - an onnx.ModelProto
    """Copy a Triton example config into ``repo`` and generate its version-1 model."""
    shutil.copytree(EXAMPLES / name, repo / name)
    ob.save(model, repo / name / "1" / "model.onnx")
    return repo / name


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "repo"
    path.mkdir()
    return path


def test_repository_written_by_add_model_is_valid(tmp_path: Path, repo: Path) -> None:
    src = ob.save(ob.identity(("batch", 3, "w")), tmp_path / "m.onnx")
    add_model(src, repo, "plain")
    add_model(src, repo, "plain", force_new_version=True)
    add_model(src, repo, "tuned", TritonModelOptions(max_batch_size=0, warmup="random"))
    add_model(ob.save(ob.identity(("batch",)), tmp_path / "b.onnx"), repo, "batch_only")
    assert validate_repository(repo) == []


def test_triton_densenet_and_simple_examples_are_valid(repo: Path) -> None:
    install_example(repo, "densenet_onnx", ob.densenet_like(batch=1))
    install_example(repo, "simple", ob.simple_like())
    assert validate_repository(repo) == []


def test_densenet_example_with_a_mismatching_model_is_reported(repo: Path) -> None:
    model = ob.densenet_like(batch=1)
    model.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 999
    model_dir = install_example(repo, "densenet_onnx", model)
    (model_dir / "densenet_labels.txt").unlink()
    text = messages(validate_repository(repo))
    assert ("tensor 'fc6_1': the model expects 4 dimensions (shape [1,999,1,1]) but the model configuration "
            "specifies 4 dimensions (shape [1,1000,1,1])") in text
    assert "label file 'densenet_labels.txt', which is missing" in text


def test_misspelled_field_is_reported_with_file_and_line_and_other_models_still_checked(repo: Path) -> None:
    bad = install_example(repo, "simple", ob.simple_like())
    config = bad / "config.pbtxt"
    lines = config.read_text().splitlines()
    number = next(i for i, line in enumerate(lines, 1) if line.startswith("max_batch_size"))
    lines[number - 1] = "max_batch_sise: 8"
    config.write_text("\n".join(lines) + "\n")
    (repo / "orphan" / "1").mkdir(parents=True)  # a second, independent problem
    problems = validate_repository(repo)
    parse = [p for p in problems if p.path == config]
    assert len(parse) == 1 and parse[0].line == number and "max_batch_sise" in parse[0].message
    assert str(parse[0]).startswith(f"{config}:{number}:1:")
    assert any(p.path == repo / "orphan" / "config.pbtxt" for p in problems)


def test_all_io_mismatches_are_reported_together(repo: Path) -> None:
    model_dir = install_example(repo, "simple", ob.simple_like())
    text = (model_dir / "config.pbtxt").read_text()
    text = text.replace('name: "INPUT1"\n    data_type: TYPE_INT32\n    dims: [ 16 ]',
                        'name: "INPUT1"\n    data_type: TYPE_FP32\n    dims: [ 16 ]')
    text = text.replace('name: "OUTPUT1"\n    data_type: TYPE_INT32\n    dims: [ 16 ]',
                        'name: "OUTPUT1"\n    data_type: TYPE_INT32\n    dims: [ 8 ]')
    text = text.replace('name: "INPUT0"', 'name: "INPUT9"').replace('name: "simple"', 'name: "simpel"')
    (model_dir / "config.pbtxt").write_text(text)
    text = messages(validate_repository(repo))
    assert "name 'simpel' does not match the model directory name 'simple'" in text
    assert "unexpected inference input 'INPUT9', allowed inputs are: INPUT0, INPUT1" in text
    assert "configuration expects datatype TYPE_FP32 for input 'INPUT1', model provides TYPE_INT32" in text
    assert "tensor 'OUTPUT1': the model expects 2 dimensions (shape [-1,16])" in text
    assert "making complete shape [-1,8])" in text


def test_config_consistency_problems(repo: Path) -> None:
    model_dir = repo / "m"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        'platform: "onnxruntime_onnx"\nbackend: "tensorrt"\nmax_batch_size: 4\n'
        'input [{ name: "x" data_type: TYPE_FP32 dims: [0, 4] reshape { shape: [5] } }]\n'
        'input [{ name: "x" dims: [2] }]\n'
        'output [{ name: "y" data_type: TYPE_FP32 dims: [4] }]\n'
        "dynamic_batching { preferred_batch_size: [8] }\n"
    )
    text = messages(validate_repository(repo))
    assert "unexpected 'platform' and 'backend' pair, got:onnxruntime_onnx, tensorrt" in text
    assert "model input 'x' dimension must be integer >= 1, or -1 to indicate a variable-size dimension" in text
    assert "model input 'x' has different size for dims and reshape" in text
    assert "input 'x' is listed twice" in text and "model input 'x' must specify 'data_type'" in text
    assert "dynamic batching preferred size must be <= max batch size (got 8, max_batch_size 4)" in text
    assert "missing model file for version 1" in text


def test_batching_config_for_a_model_with_a_fixed_first_dim(tmp_path: Path, repo: Path) -> None:
    add_model(ob.save(ob.identity((1, 4)), tmp_path / "m.onnx"), repo, "m")
    config = repo / "m" / "config.pbtxt"
    assert validate_repository(repo) == []
    config.write_text("max_batch_size: 4\n" + config.read_text().replace("[1, 4]", "[4]"))
    text = messages(validate_repository(repo))
    assert ("tensor 'x': for the model to support batching the shape should have at least 1 dimension and the "
            "first dimension must be -1; but shape expected by the model is [1,4]") in text


def test_only_versions_loaded_under_the_version_policy_are_checked(tmp_path: Path, repo: Path) -> None:
    add_model(ob.save(ob.identity(("batch", 4)), tmp_path / "a.onnx"), repo, "m")
    add_model(ob.save(ob.identity(("batch", 5)), tmp_path / "b.onnx"), repo, "m", replace_config=True)
    assert validate_repository(repo) == []  # default policy latest 1: version 1 is never loaded
    config = repo / "m" / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all {} }\n")
    problems = validate_repository(repo)
    assert {p.path for p in problems} == {repo / "m" / "1" / "model.onnx"}
    config.write_text(config.read_text().replace("all {}", "specific { versions: [7] }"))
    assert "selects none of the versions on disk [1, 2]" in messages(validate_repository(repo))


def test_hidden_and_leftover_staging_directories_are_reported(repo: Path) -> None:
    (repo / ".ipynb_checkpoints").mkdir()
    (repo / ".accelserve-staging-abc123").mkdir()
    text = messages(validate_repository(repo))
    assert "hidden directory" in text and "leftover staging directory" in text


def test_unreadable_model_file_is_reported(repo: Path) -> None:
    model_dir = install_example(repo, "simple", ob.simple_like())
    model_file = model_dir / "1" / "model.onnx"
    model_file.write_bytes(model_file.read_bytes()[:30])
    problems = validate_repository(repo)
    assert len(problems) == 1 and problems[0].path == model_file and "truncated" in problems[0].message


def test_ensemble_steps_must_name_models_of_the_repository(repo: Path) -> None:
    model_dir = repo / "ens"
    (model_dir / "1").mkdir(parents=True)
    (model_dir / "config.pbtxt").write_text(
        'name: "ens"\nplatform: "ensemble"\nmax_batch_size: 1\n'
        'input [{ name: "IN" data_type: TYPE_FP32 dims: [1] }]\n'
        'output [{ name: "OUT" data_type: TYPE_FP32 dims: [1] }]\n'
        'ensemble_scheduling { step [{ model_name: "missing_model" model_version: -1 '
        'input_map { key: "x" value: "IN" } output_map { key: "y" value: "OUT" } }] }\n'
    )
    assert messages(validate_repository(repo)) == (
        f"{model_dir / 'config.pbtxt'}: ensemble ens contains models that are not available or ambiguous: "
        "missing_model (no such model directory in the repository)"
    )


def test_missing_repository_is_a_user_error(tmp_path: Path) -> None:
    with pytest.raises(RepositoryError, match="does not exist"):
        validate_repository(tmp_path / "nope")


def test_capacity_errors_and_warnings_follow_the_machine() -> None:
    from tritonclient.grpc import model_config_pb2 as mc

    from accelserve.triton.validate import capacity_problems

    config = mc.ModelConfig(max_batch_size=8)
    config.input.add(name="x", data_type=mc.TYPE_FP32, dims=[1024])
    config.instance_group.add(count=8, kind=mc.ModelInstanceGroup.KIND_CPU)
    assert capacity_problems(config, 1 << 20, memory=64 << 30, cpus=16) == []
    [(severity, message)] = capacity_problems(config, 1 << 20, memory=64 << 30, cpus=1)
    assert severity == "warning" and "8 CPU instances on a machine with 1 CPU(s)" in message
    [(severity, message)] = capacity_problems(config, 1 << 30, memory=4 << 30, cpus=16)
    assert severity == "error" and "asks for 8 instances" in message
    config.max_batch_size = 1 << 20  # 1 Mi samples x 4 KiB = 4 GiB
    assert [s for s, m in capacity_problems(config, 1 << 20, memory=2 << 30, cpus=16) if "max_batch_size" in m] \
        == ["error"]


def test_warnings_do_not_fail_repo_validate(tmp_path: Path, repo: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import os

    from accelserve.cli.main import main

    add_model(ob.save(ob.identity(("batch", 4)), tmp_path / "m.onnx"), repo, "m",
              TritonModelOptions(instances=8 * (os.cpu_count() or 1)))
    assert main(["repo", "validate", str(repo)]) == 0
    captured = capsys.readouterr()
    assert "warning: " in captured.err and "1 warning(s)" in captured.out


# --------------------------------------------------------------------------------------------------------------
# config_problems and loaded_versions, one rule at a time, with the exact message


BASE = """name: "m"
platform: "onnxruntime_onnx"
max_batch_size: 8
input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]
output [ { name: "y" data_type: TYPE_FP32 dims: [ 4 ] } ]
"""


def _config(text: str):  # noqa: ANN202 - a ModelConfig message
    from google.protobuf import text_format
    from tritonclient.grpc import model_config_pb2 as mc

    return text_format.Parse(text, mc.ModelConfig())


WARM_X = ' inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] zero_data: true } }'


def _x(fields: str) -> str:
    return BASE.replace('dims: [ 4 ] } ]\noutput', fields + " } ]\noutput", 1)


@pytest.mark.parametrize("text, expected", [
    (BASE, []),
    (BASE.replace("max_batch_size: 8", "max_batch_size: 0"), []),
    (BASE.replace('name: "m"', 'name: "other"'), ["name 'other' does not match the model directory name 'm'"]),
    (BASE.replace("max_batch_size: 8", "max_batch_size: -1"), ["'max_batch_size' must be non-negative value (got -1)"]),
    (BASE.replace('platform: "onnxruntime_onnx"', 'platform: "onnx"'),
     ["unexpected platform type 'onnx' (known: onnxruntime_onnx, tensorrt_plan, tensorflow_savedmodel, tensorflow_graphdef, "
      "pytorch_libtorch, ensemble)"]),
    (BASE.replace('platform: "onnxruntime_onnx"', 'platform: "onnxruntime_onnx" backend: "tensorrt"'),
     ["unexpected 'platform' and 'backend' pair, got:onnxruntime_onnx, tensorrt (platform 'onnxruntime_onnx' runs on "
      "backend 'onnxruntime')"]),
    (BASE.replace('platform: "onnxruntime_onnx"', 'backend: "onnxruntime"'), []),
    (BASE.replace('platform: "onnxruntime_onnx"', ""), []),  # Triton infers the backend from the model file
    (_x('dims: [ 4 ] reshape { shape: [ 2, 2 ] }'), []),
    (_x('dims: [ 4 ] reshape { shape: [ ] }').replace("dims: [ 4 ] reshape", "dims: [ 1 ] reshape"), []),
    (_x('dims: [ 1 ] reshape { shape: [ ] }').replace("max_batch_size: 8", "max_batch_size: 0"),
     ["model input 'x' cannot have empty reshape for non-batching model as scalar tensors are not supported"]),
    (_x('dims: [ 4 ] reshape { shape: [ 2, 3 ] }'),
     ["model input 'x' has different size for dims and reshape (dims [4], reshape [2, 3])"]),
    (_x('dims: [ 4 ] reshape { shape: [ 4, 0 ] }'),
     ["model input 'x' reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension "
      "(reshape [4, 0])"]),
    (_x('dims: [ -1, 4 ] reshape { shape: [ -1, 2, 2 ] }'), []),
    (_x('dims: [ -1, 4 ] reshape { shape: [ 4, -1 ] }'),
     ["model input 'x' has different size for dims and reshape (dims [-1, 4], reshape [4, -1])"]),
    (_x('dims: [ 0, 4 ]'), ["model input 'x' dimension must be integer >= 1, or -1 to indicate a variable-size "
                                 "dimension (dims [0, 4])"]),
    (BASE.replace('dims: [ 4 ] } ]\noutput', "} ]\noutput"), ["model input 'x' must specify 'dims'"]),
    (BASE.replace('data_type: TYPE_FP32 dims: [ 4 ] } ]\noutput', "dims: [ 4 ] } ]\noutput"),
     ["model input 'x' must specify 'data_type'"]),
    (BASE.replace('{ name: "y"', '{ name: "y" label_filename: "labels.txt"'),
     ["output 'y' names label file 'labels.txt', which is missing"]),
    (BASE + 'input [ { name: "x" data_type: TYPE_FP32 dims: [ 4 ] } ]', ["model input 'x' is listed twice"]),
    (BASE + "dynamic_batching { preferred_batch_size: [ 1, 8 ] }", []),
    (BASE + "dynamic_batching { preferred_batch_size: [ 0, 9 ] }",
     ["dynamic batching preferred size must be positive (got 0)",
      "dynamic batching preferred size must be <= max batch size (got 9, max_batch_size 8)"]),
    (BASE + 'model_warmup [ { name: "w" batch_size: 8 inputs { key: "x" value: { data_type: TYPE_FP32 dims: [ 4 ] '
            "zero_data: true } } } ]", []),
    (BASE + 'model_warmup [ { name: "w" batch_size: 9' + WARM_X + ' } ]',
     ["model_warmup 'w' batch_size 9 exceeds max_batch_size 8"]),
    (BASE.replace("max_batch_size: 8", "max_batch_size: 0") + 'model_warmup [ { name: "w" batch_size: 1' + WARM_X
     + ' } ]', []),
    (BASE.replace("max_batch_size: 8", "max_batch_size: 0") + 'model_warmup [ { name: "w" batch_size: 2' + WARM_X
     + ' } ]', ["model_warmup 'w' batch_size 2: a model without batching (max_batch_size 0) runs batch 1 only"]),
    (BASE + 'model_warmup [ { name: "w" batch_size: 1' + WARM_X + ' inputs { key: "z" value: { data_type: TYPE_FP32 '
            'dims: [ 4 ] input_data_file: "z.bin" } } } ]',
     ["model_warmup 'w' feeds 'z', which is not an input of the model (config inputs: x)",
      "model_warmup 'w' data file warmup/z.bin is missing"]),
], ids=lambda v: "" if isinstance(v, (str, list)) else None)
def test_config_rules(tmp_path: Path, text: str, expected: list[str]) -> None:
    from accelserve.triton.validate import config_problems

    model_dir = tmp_path / "m"
    model_dir.mkdir()
    assert config_problems(_config(text), model_dir) == expected


def test_a_present_warmup_file_is_accepted(tmp_path: Path) -> None:
    from accelserve.triton.validate import config_problems

    model_dir = tmp_path / "m"
    (model_dir / "warmup").mkdir(parents=True)
    (model_dir / "warmup" / "x.bin").write_bytes(b"\0" * 16)
    warm = BASE + ('model_warmup [ { name: "w" batch_size: 1 inputs { key: "x" value: { data_type: TYPE_FP32 '
                   'dims: [ 4 ] input_data_file: "x.bin" } } } ]')
    assert config_problems(_config(warm), model_dir) == []



@pytest.mark.parametrize("policy, loaded", [
    ("", [7]),
    ("version_policy { latest { num_versions: 2 } }", [3, 7]),
    ("version_policy { latest { num_versions: 0 } }", []),
    ("version_policy { all { } }", [1, 3, 7]),
    ("version_policy { specific { versions: [ 1, 5 ] } }", [1]),
])
def test_loaded_versions_follow_the_version_policy(policy: str, loaded: list[int]) -> None:
    from accelserve.triton.validate import loaded_versions

    assert loaded_versions(_config(BASE + policy), [7, 1, 3]) == loaded


def test_version_problems_name_each_file(tmp_path: Path, repo: Path) -> None:
    from accelserve.triton.validate import validate_model_dir

    src = ob.save(ob.identity(("batch", 4)), tmp_path / "m.onnx")
    add_model(src, repo, "m")
    model_dir = repo / "m"
    for version in ("2", "3"):
        shutil.copytree(model_dir / "1", model_dir / version)
    config = model_dir / "config.pbtxt"
    config.write_text(config.read_text() + "version_policy { all { } }\n")
    (model_dir / "1" / "model.onnx").unlink()
    (model_dir / "3" / "model.onnx").unlink()
    assert validate_model_dir(model_dir) == [
        Problem(model_dir / "1" / "model.onnx", "missing model file for version 1"),
        Problem(model_dir / "3" / "model.onnx", "missing model file for version 3"),
    ]
    config.write_text(config.read_text().replace("all { }", "specific { versions: [ 9 ] }"))
    assert validate_model_dir(model_dir) == [
        Problem(config, "version_policy selects none of the versions on disk [1, 2, 3]")]
    for version in ("1", "2", "3"):
        shutil.rmtree(model_dir / version)
    assert validate_model_dir(model_dir) == [
        Problem(model_dir, "no version directories (numeric subdirectories such as 1/)")]
