"""Versioned, atomic add to a Triton model repository."""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest

from accelserve.artifact import ModelArtifact
from accelserve.errors import InvalidInputError, InvalidModelError, RepositoryError
from accelserve.triton import repository
from accelserve.triton.config import TritonModelOptions, read_config
from accelserve.triton.repository import STAGING_MARKER, add_model, list_models, next_version, version_dirs
from tests.triton import onnx_builders as ob


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` (dirs too) with a hash of each file's bytes."""
    if not root.exists():
        return {}
    out = {}
    for p in sorted(root.rglob("*")):
        rel = str(p.relative_to(root))
        out[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "<dir>"
    return out


def no_staging_left(*dirs: Path) -> bool:
    return not any(STAGING_MARKER in p.name for d in dirs if d.exists() for p in d.rglob("*"))


@pytest.fixture
def model(tmp_path: Path) -> Path:
    return ob.save(ob.identity(("batch", 4)), tmp_path / "src" / "model.onnx")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return tmp_path / "workdir" / "model_repository"


def test_first_add_creates_config_and_version_1(model: Path, repo: Path) -> None:
    result = add_model(model, repo, "ident")
    assert result.version == 1 and result.created_model and result.config_written
    assert (repo / "ident" / "1" / "model.onnx").read_bytes() == model.read_bytes()
    assert read_config(repo / "ident" / "config.pbtxt") == result.config
    assert result.files == (repo / "ident" / "1" / "model.onnx",)
    assert no_staging_left(repo.parent)


def test_next_adds_create_new_versions_and_never_overwrite(model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    first = snapshot(repo / "ident" / "1")
    second = add_model(model, repo, "ident", TritonModelOptions(instances=2), force_new_version=True)
    assert second.version == 2 and not second.created_model
    assert snapshot(repo / "ident" / "1") == first
    assert read_config(repo / "ident").instance_group[0].count == 2  # serving options follow the latest add
    assert add_model(model, repo, "ident", force_new_version=True).version == 3
    assert list(version_dirs(repo / "ident")) == [1, 2, 3]
    assert no_staging_left(repo.parent)


def test_next_version_is_one_past_the_highest_numeric_dir(tmp_path: Path) -> None:
    assert next_version(tmp_path / "missing") == 1
    for name in ("1", "5", "007", "notes", ".hidden"):
        (tmp_path / name).mkdir()
    assert next_version(tmp_path) == 8  # '007' is ignored by Triton but its number is still never reused
    assert list(version_dirs(tmp_path)) == [1, 5]


def test_external_data_is_copied_under_its_relative_name(tmp_path: Path, repo: Path) -> None:
    src = ob.save(ob.with_weights(), tmp_path / "src" / "big.onnx", external_data=True)
    result = add_model(ModelArtifact(src), repo, "weights")
    version_dir = repo / "weights" / "1"
    assert sorted(p.name for p in version_dir.iterdir()) == ["big.onnx.data", "model.onnx"]
    assert result.files == (version_dir / "model.onnx", version_dir / "big.onnx.data")
    x = np.ones((2, 4096), dtype=np.float32)
    session = ort.InferenceSession(str(version_dir / "model.onnx"), providers=["CPUExecutionProvider"])
    np.testing.assert_array_equal(session.run(None, {"x": x})[0], x + np.arange(4096, dtype=np.float32))


def test_incompatible_model_is_refused_unless_replace_config(tmp_path: Path, model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    other = ob.save(ob.identity(("batch", 7)), tmp_path / "other.onnx")
    before = snapshot(repo)
    with pytest.raises(RepositoryError, match=r"input 'x'.*\[4\] -> .*\[7\]") as err:
        add_model(other, repo, "ident")
    assert "--replace-config" in (err.value.hint or "")
    assert snapshot(repo) == before
    result = add_model(other, repo, "ident", replace_config=True)
    assert result.version == 2 and list(read_config(repo / "ident").input[0].dims) == [7]
    assert any("replaced an incompatible config" in n for n in result.notes)


def test_existing_version_policy_is_kept_and_a_specific_policy_is_flagged(model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    config_path = repo / "ident" / "config.pbtxt"
    config_path.write_text(config_path.read_text() + "version_policy { specific { versions: [1] } }\n")
    result = add_model(model, repo, "ident", force_new_version=True)
    assert list(read_config(config_path).version_policy.specific.versions) == [1]
    assert any("will not load version 2" in n for n in result.notes)


def _variant(model: Path, tag: str) -> Path:
    """The same graph with other bytes (adding identical bytes again is a no-op)."""
    proto = onnx.load(str(model))
    proto.doc_string = tag
    out = model.with_name(f"{model.stem}_{tag}.onnx")
    onnx.save(proto, str(out))
    return out


def test_a_latest_policy_raises_no_note_and_a_listed_version_none_either(model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    config_path = repo / "ident" / "config.pbtxt"
    config_path.write_text(config_path.read_text() + "version_policy { latest { num_versions: 2 } }\n")
    result = add_model(_variant(model, "v2"), repo, "ident")
    assert result.version == 2 and result.notes == ()
    config_path.write_text(config_path.read_text().replace("latest { num_versions: 2 }", "specific { versions: [3] }"))
    result = add_model(_variant(model, "v3"), repo, "ident")
    assert result.version == 3 and result.notes == ()  # version 3 is listed


@pytest.mark.parametrize("header, compatible", [
    ('backend: "onnxruntime"', True),  # Triton's other spelling of an ONNX model
    ('platform: "onnxruntime_onnx"\nbackend: "onnxruntime"', True),
    ('backend: "python"', False),
    ('platform: "tensorrt_plan"', False),
    ('platform: "tensorrt_plan"\nbackend: "onnxruntime"', False),
])
def test_existing_config_of_another_backend_is_incompatible(model: Path, repo: Path, header: str,
                                                            compatible: bool) -> None:
    add_model(model, repo, "ident")
    config_path = repo / "ident" / "config.pbtxt"
    lines = [ln for ln in config_path.read_text().splitlines() if not ln.startswith(("platform:", "backend:"))]
    config_path.write_text(header + "\n" + "\n".join(lines) + "\n")
    if compatible:
        assert add_model(_variant(model, "v2"), repo, "ident").version == 2
        return
    with pytest.raises(RepositoryError) as err:
        add_model(model, repo, "ident")
    old = header.split('"')[1]
    assert f"does not match the existing config of 'ident' ({config_path}): platform/backend '{old}' -> " \
           f"'onnxruntime_onnx'" in str(err.value)
    assert err.value.hint == ("add it under a new --name, or pass --replace-config to write a fresh config (older "
                              "versions stay on disk; with Triton's default version policy only the newest is served)")
    result = add_model(_variant(model, "v2"), repo, "ident", replace_config=True)
    assert result.notes == (f"replaced an incompatible config: platform/backend '{old}' -> 'onnxruntime_onnx'",)


def test_a_version_taken_by_a_concurrent_add_moves_on_to_a_free_number(
    monkeypatch: pytest.MonkeyPatch, model: Path, repo: Path
) -> None:
    add_model(model, repo, "ident")
    real_rename = os.rename
    taken = repo / "ident" / "2"

    def rename(src: object, dst: object) -> None:  # version 2 is always "taken" by someone else
        if Path(dst) == taken:
            raise OSError(errno.EEXIST, os.strerror(errno.EEXIST))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    second = _variant(model, "v2")
    result = add_model(second, repo, "ident")
    assert result.version == 3 and list(version_dirs(repo / "ident")) == [1, 3]
    assert (repo / "ident" / "3" / "model.onnx").read_bytes() == second.read_bytes()


def test_model_dir_with_versions_but_no_config_needs_replace_config(model: Path, repo: Path) -> None:
    (repo / "legacy" / "1").mkdir(parents=True)
    with pytest.raises(RepositoryError, match="no config.pbtxt"):
        add_model(model, repo, "legacy")
    assert add_model(model, repo, "legacy", replace_config=True).version == 2


def test_unparsable_existing_config_is_reported(model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    (repo / "ident" / "config.pbtxt").write_text("max_batch_sise: 3\n")
    with pytest.raises(RepositoryError, match=r"config.pbtxt:1:1"):
        add_model(model, repo, "ident")


def _fail_copy(*args: object, **kwargs: object) -> None:
    raise OSError(errno.ENOSPC, "No space left on device")


@pytest.mark.parametrize("existing", [False, True], ids=["new-model", "new-version"])
def test_disk_full_during_copy_leaves_the_repository_unchanged(
    monkeypatch: pytest.MonkeyPatch, model: Path, repo: Path, existing: bool
) -> None:
    repo.mkdir(parents=True)
    if existing:
        add_model(model, repo, "ident")
    before = snapshot(repo)
    monkeypatch.setattr(shutil, "copy2", _fail_copy)
    with pytest.raises(RepositoryError, match="No space left on device") as err:
        add_model(model, repo, "ident", force_new_version=True)
    assert "disk space" in (err.value.hint or "")
    assert snapshot(repo) == before
    assert no_staging_left(repo.parent)


def test_failed_config_replace_rolls_back_the_new_version(
    monkeypatch: pytest.MonkeyPatch, model: Path, repo: Path
) -> None:
    add_model(model, repo, "ident")
    before = snapshot(repo)

    def failing_replace(src: object, dst: object) -> None:
        raise OSError(errno.EIO, "I/O error")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(RepositoryError, match="I/O error"):
        add_model(model, repo, "ident", TritonModelOptions(instances=4), force_new_version=True)  # config changes
    assert snapshot(repo) == before
    assert no_staging_left(repo.parent)


def _fail_rename_into(target: Path, err: int, monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Make the final move of a new model directory onto ``target`` fail with ``err`` (fault injection)."""
    real_rename = os.rename
    tried: list[Path] = []

    def rename(src: object, dst: object) -> None:
        if Path(dst).absolute() == target.absolute():
            tried.append(Path(dst))
            raise OSError(err, os.strerror(err))
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    return tried


@pytest.mark.parametrize("missing", [0, 1, 3], ids=["repo-exists", "repo-missing", "three-dirs-missing"])
def test_a_failed_final_move_of_a_new_model_leaves_everything_as_it_was(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: Path, missing: int
) -> None:
    root = tmp_path / "disk"
    root.mkdir()
    (root / "other.txt").write_text("unrelated")
    repo = root.joinpath(*[f"d{i}" for i in range(missing - 1)], "model_repository") if missing else root
    if not missing:
        add_model(model, repo, "kept")  # an existing model must be untouched too
    before = snapshot(tmp_path)
    tried = _fail_rename_into(repo / "ident", errno.EIO, monkeypatch)
    with pytest.raises(RepositoryError, match="failed: Input/output error; the repository was left unchanged") as err:
        add_model(model, repo, "ident")
    assert err.value.hint is None  # the disk-space hint is only for ENOSPC
    assert tried  # the fault was injected at the final move
    assert snapshot(tmp_path) == before  # byte for byte: no model dir, no repo dirs created on the way, no staging
    assert repo.exists() is (not missing)


def test_a_model_that_appeared_during_the_add_is_reported_and_nothing_is_left(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, model: Path, repo: Path
) -> None:
    before = snapshot(tmp_path)
    _fail_rename_into(repo / "ident", errno.ENOTEMPTY, monkeypatch)
    with pytest.raises(RepositoryError, match="appeared while the model was being added"):
        add_model(model, repo, "ident")
    assert snapshot(tmp_path) == before and not repo.exists()


def test_a_concurrent_add_that_took_the_version_number_is_skipped(
    monkeypatch: pytest.MonkeyPatch, model: Path, repo: Path
) -> None:
    add_model(model, repo, "ident")
    add_model(model, repo, "ident", force_new_version=True)
    calls = iter([2])  # simulate a stale read: another add created version 2 after we looked

    monkeypatch.setattr(repository, "next_version", lambda d: next(calls, 3))
    result = add_model(model, repo, "ident", force_new_version=True)
    assert result.version == 3
    assert list(version_dirs(repo / "ident")) == [1, 2, 3]


@pytest.mark.parametrize("existing", [False, True], ids=["new-model", "new-version"])
def test_staging_falls_back_inside_when_the_parent_is_not_writable(
    monkeypatch: pytest.MonkeyPatch, model: Path, repo: Path, existing: bool
) -> None:
    repo.mkdir(parents=True)
    if existing:
        add_model(model, repo, "ident")
    real_mkdtemp = tempfile.mkdtemp
    used: list[Path] = []

    def mkdtemp(prefix: str, dir: Path) -> str:  # noqa: A002 - tempfile's own keyword
        if Path(dir) == repo.parent.absolute():
            raise PermissionError(errno.EACCES, "Permission denied")
        used.append(Path(dir))
        return real_mkdtemp(prefix=prefix, dir=dir)

    monkeypatch.setattr(tempfile, "mkdtemp", mkdtemp)
    result = add_model(model, repo, "ident", force_new_version=True)
    assert used == [(repo / "ident").absolute() if existing else repo.absolute()]
    assert result.version == (2 if existing else 1)
    assert (result.version_dir / "model.onnx").read_bytes() == model.read_bytes()
    assert no_staging_left(repo)


def test_truncated_model_is_refused_and_nothing_is_created(tmp_path: Path, model: Path, repo: Path) -> None:
    broken = tmp_path / "broken.onnx"
    broken.write_bytes(model.read_bytes()[:40])
    with pytest.raises(InvalidModelError, match="truncated"):
        add_model(broken, repo, "ident")
    assert not repo.exists()
    assert no_staging_left(tmp_path)


def test_model_failing_the_checker_is_refused(tmp_path: Path, repo: Path) -> None:
    bad = ob.identity()
    bad.graph.node[0].input[0] = "undefined_tensor"
    path = tmp_path / "bad.onnx"
    path.write_bytes(bad.SerializeToString())
    with pytest.raises(InvalidModelError, match="ONNX checker"):
        add_model(path, repo, "bad")
    assert not repo.exists()


@pytest.mark.parametrize("name", ["a/b", "..", "../escape", "a\\b", "", " ", ".hidden", "tab\tname", "bell\x07",
                                  "sp ace", "x" * 256])
def test_bad_model_names_are_refused(model: Path, repo: Path, name: str) -> None:
    repo.mkdir(parents=True)
    before = snapshot(repo.parent)
    with pytest.raises(InvalidInputError, match="invalid model name"):
        add_model(model, repo, name)
    assert snapshot(repo.parent) == before


def test_options_that_do_not_fit_the_model_write_nothing(tmp_path: Path, repo: Path) -> None:
    fixed = ob.save(ob.identity((1, 4)), tmp_path / "fixed.onnx")
    with pytest.raises(InvalidInputError, match="dynamic batch axis"):
        add_model(fixed, repo, "fixed", TritonModelOptions(max_batch_size=8))
    assert not repo.exists()


def test_repository_path_that_is_a_file_is_refused(tmp_path: Path, model: Path) -> None:
    not_a_dir = tmp_path / "repo.txt"
    not_a_dir.write_text("x")
    with pytest.raises(RepositoryError, match="not a directory"):
        add_model(model, not_a_dir, "ident")


def test_dry_run_writes_nothing(model: Path, repo: Path) -> None:
    result = add_model(model, repo, "ident", dry_run=True)
    assert result.dry_run and result.version == 1 and 'name: "ident"' in result.config_text
    assert not repo.exists()


def test_list_models_reports_versions_and_config_errors(model: Path, repo: Path) -> None:
    add_model(model, repo, "a")
    add_model(model, repo, "a", force_new_version=True)
    (repo / "b" / "1").mkdir(parents=True)
    entries = {e.name: e for e in list_models(repo)}
    assert entries["a"].versions == [1, 2] and entries["a"].max_batch_size == 32 and entries["a"].error is None
    assert entries["b"].error is not None and "does not exist" in entries["b"].error


def test_an_identical_model_adds_no_version_unless_forced(tmp_path: Path, model: Path, repo: Path) -> None:
    add_model(model, repo, "ident")
    before = snapshot(repo)
    again = add_model(model, repo, "ident")
    assert again.identical_to == 1 and again.version == 1 and not again.config_changes
    assert snapshot(repo) == before
    proto = ob.identity(("batch", 4))
    proto.doc_string = "retrained"
    other = ob.save(proto, tmp_path / "other.onnx")  # same inputs/outputs, other bytes
    assert other.read_bytes() != model.read_bytes()
    assert add_model(other, repo, "ident").version == 2
    assert add_model(other, repo, "ident", force_new_version=True).version == 3
    assert list(version_dirs(repo / "ident")) == [1, 2, 3]


def test_changed_serving_options_list_the_config_changes(model: Path, repo: Path) -> None:
    add_model(model, repo, "ident", TritonModelOptions(max_batch_size=8, max_queue_delay_us=100))
    result = add_model(model, repo, "ident", TritonModelOptions(max_batch_size=16, instances=2))
    assert result.identical_to == 1 and result.config_written  # no new version, but the shared config changed
    assert result.config_changes == (
        'dynamic_batching.max_queue_delay_microseconds: "100" -> (unset)',
        "instance_group[0].count: 1 -> 2",
        "max_batch_size: 8 -> 16",
    )
    assert read_config(repo / "ident").max_batch_size == 16
