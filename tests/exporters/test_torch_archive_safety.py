"""A crafted .pt2 / TorchScript archive must not run its own code through `accelserve export` or `verify --torch`.

Each archive in evil_archives.py creates a marker file when torch's own loader (or the loaded model) runs its
payload; each of those was seen to create it with plain torch.export.load / torch.jit.load. Here the marker must
stay absent and the command must end with a clear error (exit 1)."""

from __future__ import annotations

import contextlib
import io
import sys
from pathlib import Path
from typing import Any

import pytest

torch = pytest.importorskip("torch", reason="PyTorch is not installed (pip install 'accelserve[torch]')")

from accelserve.cli.main import main  # noqa: E402
from accelserve.errors import InvalidInputError  # noqa: E402
from accelserve.exporters.torch_archive_safety import (  # noqa: E402
    check_exported_program_archive,
    pickle_globals,
    safe_torch_load_guard,
)
from accelserve.exporters.torch_loading import load_torch_model  # noqa: E402
from tests.graphs import make_linear_model  # noqa: E402

pytestmark = [pytest.mark.torch,
              pytest.mark.filterwarnings(r"ignore:`torch\.jit\.\w+` is deprecated:DeprecationWarning")]

sys.path.insert(0, str(Path(__file__).parent))
import evil_archives as ea  # noqa: E402

sys.path.remove(str(Path(__file__).parent))


@pytest.fixture(scope="module")
def good(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    d = tmp_path_factory.mktemp("archives")
    return {"pt2": ea.save_pt2(d / "good.pt2"), "ts": ea.save_torchscript(d / "good.pt")}


def _build(kind: str, name: str, good: dict[str, Path], tmp_path: Path) -> tuple[Path, Path]:
    marker = tmp_path / f"PWNED_{name}"
    if kind == "pt2":
        return ea.PT2_ATTACKS[name](good["pt2"], tmp_path / f"evil_{name}.pt2", marker), marker
    return ea.TORCHSCRIPT_ATTACKS[name](good["ts"], tmp_path / f"evil_{name}.pt", marker), marker


def _run(argv: list[Any]) -> tuple[int, str]:
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        rc = main([str(a) for a in argv])
    return rc, err.getvalue()


ATTACKS = [("pt2", n) for n in ea.PT2_ATTACKS] + [("ts", n) for n in ea.TORCHSCRIPT_ATTACKS]


@pytest.mark.parametrize(("kind", "name"), ATTACKS)
def test_export_refuses_crafted_archive(kind: str, name: str, good: dict[str, Path], tmp_path: Path) -> None:
    evil, marker = _build(kind, name, good, tmp_path)
    out = tmp_path / "o.onnx"
    rc, err = _run(["export", "torch", evil, "-i", "x:2x4", "-o", out])
    assert not marker.exists(), "the archive's payload ran"
    assert rc == 1, err
    assert "refusing to load" in err and "never runs code from a model file" in err, err
    assert "--trust-source" in err and "Traceback" not in err
    assert not out.exists()


@pytest.mark.parametrize(("kind", "name"), [("pt2", "pickled_weight"), ("pt2", "shape_expression"),
                                            ("ts", "save_op")])
def test_verify_refuses_crafted_archive(kind: str, name: str, good: dict[str, Path], tmp_path: Path) -> None:
    evil, marker = _build(kind, name, good, tmp_path)
    onnx_model = make_linear_model(tmp_path / "m.onnx")
    rc, err = _run(["verify", onnx_model, "--torch", evil, "--random", "1"])
    assert not marker.exists(), "the archive's payload ran"
    assert rc == 1 and "refusing to load" in err, err


def test_archives_torch_saved_still_load(good: dict[str, Path]) -> None:
    x = torch.randn(3, 4)
    expected = ea.Tiny().eval()(x)
    for path in good.values():
        module = load_torch_model(str(path)).module
        torch.testing.assert_close(module(x), expected)


def test_guard_fails_closed_without_the_static_checks(good: dict[str, Path], tmp_path: Path) -> None:
    """Even if the inspection missed a pickled weight, the guarded load refuses to unpickle it."""
    evil, marker = _build("pt2", "pickled_weight", good, tmp_path)
    original = torch.load
    with pytest.raises(Exception), safe_torch_load_guard(torch):  # noqa: B017 - torch wraps the refusal
        torch.export.load(str(evil))
    assert not marker.exists()
    assert torch.load is original  # restored


def test_trust_source_uses_torchs_loader(good: dict[str, Path], tmp_path: Path) -> None:
    # a pickle TorchScript's C++ unpickler rejects by itself (it imports no Python globals): safe to try
    evil, marker = _build("ts", "pickled_global", good, tmp_path)
    with pytest.raises(InvalidInputError, match="cannot be loaded as a torchscript archive"):
        load_torch_model(str(evil), trust_source=True)
    for argv in (["export", "torch", evil, "-i", "x:2x4", "-o", tmp_path / "o.onnx", "--trust-source"],
                 ["verify", make_linear_model(tmp_path / "m.onnx"), "--torch", evil, "--trust-source"]):
        rc, err = _run(argv)
        assert rc == 1 and "cannot be loaded as a torchscript archive" in err and "refusing" not in err, err
    assert not marker.exists()


def test_pickle_globals_sees_stack_global_and_memo() -> None:
    import pickle

    data = pickle.dumps(ea._Payload("1"), protocol=4)  # STACK_GLOBAL with memoized operands
    assert pickle_globals(data) == ["builtins.exec"]
    assert pickle_globals(b"\x80\x04\x95")[-1].startswith("<unreadable pickle")


def test_non_pt2_zip_is_refused_clearly(tmp_path: Path) -> None:
    import zipfile

    path = tmp_path / "old.pt2"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("version", "1.0")
        zf.writestr("serialized_state_dict.pt", b"x")
    with pytest.raises(InvalidInputError, match="torch >= 2.8"):
        check_exported_program_archive(path)


class _SharedDims(torch.nn.Module):
    """Two inputs sharing the batch axis (torch writes a guards_code entry), derived sizes, a bounded axis, a cond."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.conv = torch.nn.Conv2d(3, 4, 3, stride=2, padding=1)
        self.register_buffer("pos", torch.arange(64).unsqueeze(0), persistent=False)

    def forward(self, x: torch.Tensor, ids: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        y = self.conv(x).flatten(2)
        z = torch.cond(ids.shape[1] > 4, lambda t: t + 1, lambda t: t - 1, (torch.cat([y, y], dim=2),))
        return z.sum(-1), (ids + self.pos[:, : ids.shape[1]]).float().mean(-1)


def test_real_archive_with_guards_and_shape_formulas_loads(tmp_path: Path) -> None:
    batch, half = torch.export.Dim("batch"), torch.export.Dim("h", min=4, max=64)
    seq = torch.export.Dim("seq", max=64)
    args = (torch.randn(2, 3, 16, 16), torch.randint(0, 9, (2, 8)))
    program = torch.export.export(_SharedDims().eval(), args,
                                  dynamic_shapes=({0: batch, 2: 2 * half, 3: 2 * half}, {0: batch, 1: seq}))
    torch.export.save(program, str(tmp_path / "shared.pt2"))
    import json
    import zipfile

    with zipfile.ZipFile(tmp_path / "shared.pt2") as zf:
        model_json = json.loads(zf.read(next(n for n in zf.namelist() if n.endswith("models/model.json"))))
    assert model_json["guards_code"], "the test needs an archive with guards"
    module = load_torch_model(str(tmp_path / "shared.pt2")).module
    x, ids = torch.randn(3, 3, 20, 20), torch.randint(0, 9, (3, 10))
    torch.testing.assert_close(module(x, ids), _SharedDims().eval()(x, ids))


@pytest.mark.parametrize("expr", [
    "Symbol('s77', positive=True, integer=True)", "Mul(Integer(2), Pow(Symbol('s3', integer=True), Integer(2)))",
    "StrictGreaterThan(Symbol('s27', positive=True, integer=True), Integer(4))", "FloorDiv(s0, 2) + Max(1, s1)",
])
def test_shape_formulas_pass(expr: str, tmp_path: Path) -> None:
    from accelserve.exporters.torch_archive_safety import _check_expr

    _check_expr(expr, tmp_path / "m.pt2")


@pytest.mark.parametrize("expr", [
    "eval('exit')(Integer(0))", "Symbol('s0').__class__", "Add('exec')", "Symbol('s0')(Integer(1))",
    "getattr(s0, 'x')", "Symbol('a b')", "Symbol(\"s0\")", "lambda: 0", "s0[0]",
])
def test_shape_formulas_refused(expr: str, tmp_path: Path) -> None:
    from accelserve.exporters.torch_archive_safety import _check_expr

    with pytest.raises(InvalidInputError, match="shape expression"):
        _check_expr(expr, tmp_path / "m.pt2")


@pytest.mark.parametrize(("guard", "ok"), [
    ("L['ids'].size()[0] == L['x'].size()[0]", True),
    ("2*((L['x'].size()[2]//2)) == L['x'].size()[2] and math.floor(L['x'].size()[1] / 2) >= 1", True),
    ("__import__('os').system('true') is None", False),
    ("L['x'].__class__", False),
    ("L['x\"); import os; (\"'].size()[0] == 1", False),
    ("L['x'].size()[0], 'msg'", False),
    ("(lambda: 0)()", False),
])
def test_guards(guard: str, ok: bool, tmp_path: Path) -> None:
    from accelserve.exporters.torch_archive_safety import _check_guard

    if ok:
        _check_guard(guard, tmp_path / "m.pt2")
    else:
        with pytest.raises(InvalidInputError, match="guards_code"):
            _check_guard(guard, tmp_path / "m.pt2")


@pytest.mark.parametrize(("target", "ok"), [
    ("torch.ops.aten.add.Tensor", True), ("torch.ops.higher_order.cond", True), ("_operator.floordiv", True),
    ("torch.sym_max", True), ("math.trunc", True),
    # torch resolves any callable under torch.* / operator.* and calls it when the module runs
    ("torch.os.system", False), ("_operator.call", False), ("_operator.methodcaller", False),
    ("torch.ops.aten.save.default", False), ("torch.ops.aten.from_file.default", False), ("builtins.exec", False),
])
def test_graph_targets(target: str, ok: bool, tmp_path: Path) -> None:
    from accelserve.exporters.torch_archive_safety import _check_target

    if ok:
        _check_target(target, tmp_path / "m.pt2")
    else:
        with pytest.raises(InvalidInputError, match="its graph calls"):
            _check_target(target, tmp_path / "m.pt2")
