"""Crafted .pt2 and TorchScript archives whose payload creates a marker file when torch's own loader (or the
loaded model) runs it. Built by rewriting members of archives torch saved for a tiny model; used by
test_torch_archive_safety.py to prove accelserve refuses them before any payload runs."""

from __future__ import annotations

import io
import json
import pickle
import zipfile
from pathlib import Path
from typing import Any, Callable

import torch


class _Payload:
    """Unpickling this runs ``exec(code)``."""

    def __init__(self, code: str) -> None:
        self.code = code

    def __reduce__(self) -> tuple[Any, ...]:
        return (exec, (self.code,))


def touch_code(marker: Path) -> str:
    return f"open({str(marker)!r}, 'w').close()"


def evil_pickle(marker: Path) -> bytes:
    return pickle.dumps(_Payload(touch_code(marker)), protocol=2)


class Tiny(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.lin = torch.nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.relu(self.lin(x))


def save_pt2(path: Path) -> Path:
    ep = torch.export.export(Tiny().eval(), (torch.randn(2, 4),), dynamic_shapes=({0: torch.export.Dim("batch")},))
    torch.export.save(ep, str(path))
    return path


def save_torchscript(path: Path) -> Path:
    torch.jit.save(torch.jit.script(Tiny().eval()), str(path))
    return path


def rewrite(src: Path, dst: Path, edit: Callable[[dict[str, bytes]], None]) -> Path:
    """Copy the zip ``src`` to ``dst`` with ``edit(members)`` applied to {name: bytes} (keeping the order)."""
    with zipfile.ZipFile(src) as zf:
        members = {n: zf.read(n) for n in zf.namelist()}
    edit(members)
    with zipfile.ZipFile(dst, "w", zipfile.ZIP_STORED) as zf:
        for name, data in members.items():
            zf.writestr(name, data)
    return dst


def _find(members: dict[str, bytes], suffix: str) -> str:
    return next(n for n in members if n.endswith(suffix))


def _edit_json(members: dict[str, bytes], suffix: str, fn: Callable[[Any], None]) -> None:
    name = _find(members, suffix)
    obj = json.loads(members[name])
    fn(obj)
    members[name] = json.dumps(obj).encode()


def pt2_pickled_weight(good: Path, dst: Path, marker: Path) -> Path:
    """A weight marked use_pickle: torch.export.load reads it with torch.load(weights_only=False)."""
    def edit(m: dict[str, bytes]) -> None:
        def cfg(c: Any) -> None:
            entry = c["config"]["lin.bias"]
            entry["use_pickle"] = True
            m[_find(m, "data/weights/" + entry["path_name"])] = evil_pickle(marker)
        _edit_json(m, "data/weights/model_weights_config.json", cfg)
    return rewrite(good, dst, edit)


def pt2_opaque_constant(good: Path, dst: Path, marker: Path) -> Path:
    """A constant stored as opaque_obj_*: torch.export.load reads it with pickle.loads."""
    def edit(m: dict[str, bytes]) -> None:
        root = _find(m, "archive_format").rsplit("/", 1)[0]
        m[f"{root}/data/constants/opaque_obj_0"] = evil_pickle(marker)
        _edit_json(m, "data/constants/model_constants_config.json",
                   lambda c: c["config"].update({"evil": {"path_name": "opaque_obj_0", "is_param": False,
                                                          "use_pickle": True, "tensor_meta": None}}))
    return rewrite(good, dst, edit)


def pt2_sample_inputs(good: Path, dst: Path, marker: Path) -> Path:
    """Sample inputs that fail weights_only=True: torch retries them with weights_only=False."""
    buf = io.BytesIO()
    torch.save(_Payload(touch_code(marker)), buf)

    def edit(m: dict[str, bytes]) -> None:
        m[_find(m, "data/sample_inputs/model.pt")] = buf.getvalue()
    return rewrite(good, dst, edit)


def pt2_shape_expression(good: Path, dst: Path, marker: Path) -> Path:
    """A symbolic-shape expression: torch parses it with sympy.sympify, which evaluates Python."""
    inject = f" + 0*len(str(__import__('builtins').exec({touch_code(marker)!r})))"

    def edit(m: dict[str, bytes]) -> None:
        def walk(o: Any) -> None:
            if isinstance(o, dict):
                for k, v in o.items():
                    if k == "expr_str" and isinstance(v, str):
                        o[k] = v + inject
                    else:
                        walk(v)
            elif isinstance(o, list):
                for v in o:
                    walk(v)
        _edit_json(m, "models/model.json", walk)
    return rewrite(good, dst, edit)


def pt2_guards_code(good: Path, dst: Path, marker: Path) -> Path:
    """guards_code: Python source torch compiles into the module's input check."""
    hexcode = touch_code(marker).encode().hex()  # no quotes inside: torch pastes the guard into a string literal
    guard = f"__import__('builtins').exec(bytes.fromhex('{hexcode}').decode()) is None"
    return rewrite(good, dst, lambda m: _edit_json(m, "models/model.json",
                                                   lambda p: p.update({"guards_code": [guard]})))


def torchscript_save_op(good: Path, dst: Path, marker: Path) -> Path:
    """TorchScript code calling aten::save, which writes any file, from forward()."""
    def edit(m: dict[str, bytes]) -> None:
        name = next(n for n in m if "/code/" in n and n.endswith(".py") and b"def forward" in m[n]
                    and b"Tiny" in m[n])
        text = m[name].decode()
        head, sep, rest = text.partition("-> Tensor:\n")
        m[name] = (head + sep + f"    ops.aten.save(x, {str(marker)!r})\n" + rest).encode()
        m.pop(name + ".debug_pkl", None)
    return rewrite(good, dst, edit)


def torchscript_pickled_global(good: Path, dst: Path, marker: Path) -> Path:
    """data.pkl replaced by a pickle naming builtins.exec."""
    return rewrite(good, dst, lambda m: m.update({_find(m, "/data.pkl"): evil_pickle(marker)}))


PT2_ATTACKS = {
    "pickled_weight": pt2_pickled_weight,
    "opaque_constant": pt2_opaque_constant,
    "sample_inputs": pt2_sample_inputs,
    "shape_expression": pt2_shape_expression,
    "guards_code": pt2_guards_code,
}
TORCHSCRIPT_ATTACKS = {"save_op": torchscript_save_op, "pickled_global": torchscript_pickled_global}
