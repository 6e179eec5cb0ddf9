"""Check a ``torch.export`` (.pt2) or TorchScript archive *before* torch loads it, so that a crafted file cannot
run its own code.

What torch 2.13 would execute from a file, and what is checked here (without importing torch for the static part):

``torch.export.load`` (``torch/export/pt2_archive/_package.py``, ``torch/_export/serde/serialize.py``)
  * weights/constants whose payload config says ``use_pickle`` -> ``torch.load(weights_only=False)``: refused;
  * constants ``custom_obj_*`` (TorchBind pickler) and ``opaque_obj_*`` (``pickle.loads``): refused;
  * legacy single-file weights/constants (``data/weights/MODEL.pt``) and the pre-2.8 zip layout (``version``,
    ``serialized_*.pt``): refused (re-save with a current torch);
  * ``data/aotinductor/`` (compiled shared libraries that ``load_pt2`` dlopens): refused;
  * ``data/sample_inputs/MODEL.pt`` (a ``torch.save`` zip that torch retries with ``weights_only=False``): its
    pickle may only name the tensor-rebuilding globals;
  * ``models/MODEL.json``: symbolic-shape expressions are parsed with ``sympy.sympify`` (which evaluates Python):
    each must be a plain shape expression; ``guards_code`` becomes Python source that ``program.module()``
    execs: each must be a shape condition over ``L['input'].size()[i]``; every node ``target`` must be an
    ATen/prims operator or a symbolic-int operator
    (a ``torch.*`` attribute such as ``torch.os.system`` would otherwise be called when the model runs).
``torch.jit.load``
  * pickles (``data.pkl``, ``constants.pkl``, ``*.debug_pkl``) are read by TorchScript's C++ unpickler, which
    resolves no Python globals; they are still checked to name only TorchScript classes and tensor rebuilders;
  * the TorchScript code (``code/**.py``, compiled, run by ``__setstate__`` at load time and by ``forward``) may
    call any registered operator, including ones with side effects: ``aten::save`` writes any file,
    ``aten::from_file`` reads one, ``prim::rpc_*`` talk to the network. Code naming those is refused.

``safe_torch_load_guard()`` additionally makes the load itself fail closed (``torch.load`` forced to
``weights_only=True``, ``pickle.loads``, the TorchBind unpickler and the AOTInductor loader refused) in case a
torch version adds a path the static checks do not know. ``--trust-source`` skips all of this for files the user
vouches for.
"""

from __future__ import annotations

import ast
import contextlib
import io
import json
import pickletools
import re
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from accelserve.errors import InvalidInputError

TRUST_HINT = ("if you made this file yourself and trust it, pass --trust-source (trust_source=True) to load it "
              "with torch's own loader, which runs the code it contains")

#: globals a tensor-only pickle (torch.save of tensors, TorchScript data) may name
_TENSOR_GLOBALS = {
    "torch._utils._rebuild_tensor", "torch._utils._rebuild_tensor_v2", "torch._utils._rebuild_tensor_v3",
    "torch._utils._rebuild_parameter", "torch._utils._rebuild_parameter_with_state", "torch._utils._rebuild_qtensor",
    "torch._utils._rebuild_sparse_tensor", "torch._utils._rebuild_device_tensor_from_numpy",
    "torch._tensor._rebuild_from_type_v2", "torch.Tensor", "torch.nn.parameter.Parameter",
    "collections.OrderedDict", "builtins.set", "builtins.frozenset", "builtins.complex", "builtins.slice",
    "torch.device", "torch.Size", "torch.storage.UntypedStorage",
}
_TENSOR_GLOBAL_PATTERNS = (
    re.compile(r"torch\.[A-Za-z0-9]+Storage"),  # torch.FloatStorage, torch.BFloat16Storage, ...
    re.compile(r"torch\.(float|double|half|bfloat16|u?int\d+|bool|complex\d+|float8_\w+|q[u]?int\d+\w*)"),
    re.compile(r"torch\.jit\._pickle\.\w+"),  # TorchScript's build_intlist & co
)
_TORCHSCRIPT_CLASS = re.compile(r"__torch__(\.[A-Za-z_]\w*)*\.[A-Za-z_]\w*")

#: operators with side effects outside the model (file system, network, process), refused in any archive
_UNSAFE_OPS = {"save", "from_file", "rpc_async", "rpc_sync", "rpc_remote", "load_tensor", "_load_for_mobile"}
_UNSAFE_NAMESPACES = {"debugprims", "profiler", "symm_mem"}

# names a torch.export shape expression may use: sympy's srepr() of shape formulas (torch's serializer), the
# functions of torch.utils._sympy.functions, and Symbol() assumptions (keyword arguments). Nothing that parses
# strings (sympify, Poly, ...) and no Python builtins: parse_expr() would resolve eval/getattr/exec otherwise.
_SYMPY_NAMES = {
    "Symbol", "Integer", "Rational", "Float", "Add", "Mul", "Pow", "Max", "Min", "Eq", "Ne", "Lt", "Le", "Gt", "Ge",
    "Equality", "Unequality", "StrictGreaterThan", "StrictLessThan", "GreaterThan", "LessThan", "And", "Or", "Not",
    "BooleanTrue", "BooleanFalse", "true", "false", "True", "False", "Abs", "floor", "ceiling", "Mod", "Piecewise",
    "ExprCondPair", "sqrt", "oo", "zoo", "nan", "Infinity", "NegativeInfinity", "ComplexInfinity", "NaN", "Half",
    "One", "Zero", "NegativeOne", "IntInfinity", "NegativeIntInfinity", "int_oo",
    "FloorDiv", "ModularIndexing", "Where", "PythonMod", "CleanDiv", "CeilToInt", "FloorToInt", "CeilDiv", "LShift",
    "RShift", "PowByNatural", "FloatPow", "FloatTrueDiv", "IntTrueDiv", "IsNonOverlappingAndDenseIndicator",
    "TruncToFloat", "TruncToInt", "RoundToInt", "RoundDecimal", "ToFloat", "Identity", "BitwiseFn_bitwise_and",
    "BitwiseFn_bitwise_or", "BitwiseFn_bitwise_xor", "OpaqueUnaryFn_sqrt",
    "positive", "negative", "integer", "nonnegative", "nonpositive", "real", "finite", "zero", "nonzero", "even",
    "odd", "commutative", "rational", "extended_real",
}
_SYMBOL_NAME = re.compile(r"[a-z]{1,4}\d+")  # s0, u3, zf1, zuf0, ...
_EXPR_TOKEN = re.compile(
    r"\s+|(?P<name>[A-Za-z_]\w*)|(?P<num>\d+(\.\d+)?([eE][-+]?\d+)?)|(?P<str>'[A-Za-z_]\w*')"
    r"|\*\*|//|==|!=|<=|>=|[-+*/%<>(),=&|~^]"
)


def _refuse(path: Path, what: str, hint: str = TRUST_HINT) -> InvalidInputError:
    return InvalidInputError(f"refusing to load {path}: {what}; accelserve never runs code from a model file",
                             hint=hint)


# --------------------------------------------------------------------------------------------------------------
# pickles


def pickle_globals(data: bytes) -> list[str]:
    """Every global a pickle names (``module.name``), without unpickling it. A ``STACK_GLOBAL`` whose operands
    are not plain strings pushed just before it is reported as ``<unresolved>``; ``INST``/``OBJ`` as themselves."""
    found: list[str] = []
    memo: dict[int, Any] = {}
    pushed: list[Any] = []  # values of the most recent pushes (str or None for "something else")
    unknown = object()
    try:
        for op, arg, _pos in pickletools.genops(data):
            name = op.name
            if name in ("GLOBAL", "INST"):
                module, _, attr = str(arg).partition(" ")
                found.append(f"{module}.{attr}")
                pushed.append(unknown)
            elif name == "STACK_GLOBAL":
                if len(pushed) >= 2 and isinstance(pushed[-2], str) and isinstance(pushed[-1], str):
                    found.append(f"{pushed[-2]}.{pushed[-1]}")
                else:
                    found.append("<unresolved>")
                pushed.append(unknown)
            elif name in ("SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                          "BINSTRING", "STRING"):
                pushed.append(str(arg))
            elif name in ("BINPUT", "LONG_BINPUT", "PUT"):
                memo[int(arg)] = pushed[-1] if pushed else unknown
            elif name == "MEMOIZE":
                memo[len(memo)] = pushed[-1] if pushed else unknown
            elif name in ("BINGET", "LONG_BINGET", "GET"):
                pushed.append(memo.get(int(arg), unknown))
            elif name in ("OBJ", "NEWOBJ_EX", "EXT1", "EXT2", "EXT4"):
                found.append(f"<{name}>")
                pushed.append(unknown)
            elif name not in ("PROTO", "FRAME", "STOP"):
                pushed.append(unknown)
            del pushed[:-4]
    except Exception as exc:  # truncated or not a pickle
        found.append(f"<unreadable pickle: {exc}>")
    return found


def _allowed_global(name: str, *, torchscript: bool) -> bool:
    if name in _TENSOR_GLOBALS or any(p.fullmatch(name) for p in _TENSOR_GLOBAL_PATTERNS):
        return True
    return torchscript and bool(_TORCHSCRIPT_CLASS.fullmatch(name))


def check_pickle(data: bytes, path: Path, member: str, *, torchscript: bool = False) -> None:
    bad = sorted({g for g in pickle_globals(data) if not _allowed_global(g, torchscript=torchscript)})
    if bad:
        raise _refuse(path, f"its member {member} is a pickle that refers to {', '.join(bad[:5])} "
                            "(only tensors are accepted)")


def _check_torch_save_bytes(data: bytes, path: Path, member: str) -> None:
    """A ``torch.save`` payload (zip with ``*/data.pkl``, or a legacy raw pickle) naming only tensor globals."""
    if data.startswith(b"PK\x03\x04"):
        try:
            with zipfile.ZipFile(io.BytesIO(data)) as inner:
                pickles = [n for n in inner.namelist() if n.endswith(".pkl")]
                for name in pickles:
                    check_pickle(inner.read(name), path, f"{member}:{name}")
        except zipfile.BadZipFile as exc:
            raise _refuse(path, f"its member {member} is a broken zip ({exc})") from exc
    elif data:
        raise _refuse(path, f"its member {member} is a raw pickle, not a torch.save archive of tensors")


# --------------------------------------------------------------------------------------------------------------
# torch.export (.pt2)


def _check_expr(expr: str, path: Path) -> None:
    """A shape expression is handed to ``sympy.sympify`` (Python ``eval``): allow only allowlisted names, numbers,
    operators, and a quoted identifier as the first argument of ``Symbol(``; no attribute access, no call of a
    call's result."""
    def refuse(why: str) -> InvalidInputError:
        return _refuse(path, f"a shape expression holds {why}, which is not part of a shape formula: {expr[:120]!r}")

    pos = 0
    previous: list[str] = []  # the last two significant tokens
    while pos < len(expr):
        m = _EXPR_TOKEN.match(expr, pos)
        if m is None:
            raise refuse(repr(expr[pos:pos + 20]))
        token = m.group(0)
        pos = m.end()
        if token.isspace():
            continue
        name = m.group("name")
        if name and name not in _SYMPY_NAMES and not _SYMBOL_NAME.fullmatch(name):
            raise refuse(f"the name {name!r}")
        if m.group("str") and previous[-2:] != ["Symbol", "("]:
            raise refuse("a string outside Symbol('...')")
        if token == "(" and previous[-1:] == [")"]:
            raise refuse("a call of a call's result")
        previous = [*previous[-1:], token]


_GUARD_NODES = (ast.Expression, ast.Compare, ast.BoolOp, ast.BinOp, ast.UnaryOp, ast.Call, ast.Attribute,
                ast.Subscript, ast.Name, ast.Constant, ast.Load, ast.operator, ast.unaryop, ast.cmpop, ast.boolop)
_GUARD_NAMES = {"L", "math", "max", "min", "abs", "int", "float", "round", "bool", "IsNonOverlappingAndDenseIndicator",
                "cast_symbool_to_symint_guardless"}
_GUARD_ATTRS = {"size", "stride", "storage_offset", "dim", "numel", "floor", "ceil", "sqrt", "trunc", "log2", "inf"}


def _check_guard(code: Any, path: Path) -> None:
    """``guards_code`` entries are pasted into Python source that torch execs (``torch/export/_unlift.py``): only a
    shape condition over ``L['input'].size()[i]`` with arithmetic, comparisons and a few math functions passes."""
    def refuse(why: str) -> InvalidInputError:
        return _refuse(path, f"its guards_code (Python source torch compiles into the module) holds {why}: "
                             f"{str(code)[:120]!r}")

    if not isinstance(code, str):
        raise refuse("a non-string entry")
    try:
        tree = ast.parse(code, mode="eval")
    except SyntaxError as exc:
        raise refuse("something that is no Python expression") from exc
    for node in ast.walk(tree):
        if not isinstance(node, _GUARD_NODES):
            raise refuse(f"a {type(node).__name__}, which no shape guard needs")
        if isinstance(node, ast.Name) and node.id not in _GUARD_NAMES:
            raise refuse(f"the name {node.id!r}")
        if isinstance(node, ast.Attribute) and node.attr not in _GUARD_ATTRS:
            raise refuse(f"the attribute {node.attr!r}")
        if isinstance(node, ast.Constant) and not (
                isinstance(node.value, (bool, int, float)) or
                (isinstance(node.value, str) and re.fullmatch(r"[A-Za-z_]\w*", node.value))):
            raise refuse(f"the constant {node.value!r}")


def _walk_json(obj: Any) -> Iterator[tuple[str, Any]]:
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield k, v
            yield from _walk_json(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from _walk_json(v)


_OP_TARGET = re.compile(r"torch\.ops\.(?P<ns>\w+)\.(?P<op>\w+)(\.\w+)?")
# torch's _SYM_OPS (symbolic-size arithmetic), by the names its serializer writes
_SYM_TARGET = re.compile(r"_operator\.(add|sub|mul|truediv|floordiv|mod|pow|neg|pos|abs|eq|ne|lt|le|gt|ge|and_|or_|xor"
                         r"|not_|invert|lshift|rshift)|math\.(trunc|floor|ceil|sqrt)"
                         r"|torch\.(sym_float|sym_int|sym_not|sym_ite|sym_max|sym_min|sym_sum|_sym_sqrt)")


def _check_target(target: str, path: Path) -> None:
    m = _OP_TARGET.fullmatch(target)
    if m:
        if m.group("op") in _UNSAFE_OPS or m.group("ns") in _UNSAFE_NAMESPACES:
            raise _refuse(path, f"its graph calls {target}, an operator with effects outside the model")
        return
    if _SYM_TARGET.fullmatch(target):
        return
    raise _refuse(path, f"its graph calls {target!r}, which is not a torch operator "
                        "(a torch.export graph only calls torch.ops.* and symbolic-size operators)")


def check_exported_program_archive(path: Path) -> None:
    """Raise :class:`InvalidInputError` unless loading ``path`` with ``torch.export.load`` runs no code of its own."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable torch.export archive: {exc}") from exc
    with zf:
        names = zf.namelist()
        roots = {n.split("/", 1)[0] for n in names if n.count("/") >= 1 and n.endswith("/archive_format")}
        legacy = [n for n in names if n == "version" or n.startswith("serialized_")]  # torch.export.load's fallback
        if len(roots) != 1 or legacy:
            raise _refuse(path, "it is not in the torch.export archive format of torch >= 2.8 (an older layout "
                                "holds pickled state)", hint="re-save it with torch.export.save in torch 2.13")
        root = roots.pop() + "/"
        rel = {n[len(root):]: n for n in names if n.startswith(root)}
        for name in rel:
            if name.startswith("data/aotinductor/"):
                raise _refuse(path, "it holds AOTInductor compiled code (data/aotinductor/), which torch loads as a "
                                    "native library")
        models = [n[len("models/"):-len(".json")] for n in rel if n.startswith("models/") and n.endswith(".json")]
        if not models:
            raise InvalidInputError(f"{path} holds no exported program (no models/*.json)")
        for model in models:
            for legacy in (f"data/weights/{model}.pt", f"data/constants/{model}.pt"):
                if legacy in rel:
                    raise _refuse(path, f"it stores {legacy} in the legacy pickled form",
                                  hint="re-save it with torch.export.save in torch 2.13")
            for kind, cfg_name in (("weights", f"data/weights/{model}_weights_config.json"),
                                   ("constants", f"data/constants/{model}_constants_config.json")):
                if cfg_name not in rel:
                    continue
                config = json.loads(zf.read(rel[cfg_name]) or b"{}").get("config", {})
                for fqn, meta in config.items():
                    member = str(meta.get("path_name", ""))
                    if meta.get("use_pickle"):
                        raise _refuse(path, f"its {kind} entry {fqn!r} ({member}) is a pickled payload")
                    if member.startswith(("custom_obj", "opaque_obj")):
                        raise _refuse(path, f"its constant {fqn!r} ({member}) is a pickled Python/TorchBind object")
            sample = f"data/sample_inputs/{model}.pt"
            if sample in rel:
                _check_torch_save_bytes(zf.read(rel[sample]), path, sample)
            try:
                program = json.loads(zf.read(rel[f"models/{model}.json"]))
            except (ValueError, UnicodeDecodeError) as exc:
                raise InvalidInputError(f"{path}: models/{model}.json is not valid JSON ({exc})") from exc
            for guard in program.get("guards_code") or []:
                _check_guard(guard, path)
            for key, value in _walk_json(program):
                if key == "expr_str" and isinstance(value, str):
                    _check_expr(value, path)
                elif key == "target" and isinstance(value, str):
                    _check_target(value, path)
        for name, full in rel.items():  # any other pickle-looking member is refused too
            if name.endswith((".pkl", ".pickle")):
                check_pickle(zf.read(full), path, name)


# --------------------------------------------------------------------------------------------------------------
# TorchScript


class _UnsafeCall(ast.NodeVisitor):
    def __init__(self) -> None:
        self.found: list[str] = []

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if node.attr in _UNSAFE_OPS or node.attr in _UNSAFE_NAMESPACES:
            self.found.append(ast.unparse(node))
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if node.id in _UNSAFE_OPS or node.id in {"exec", "eval", "open", "__import__"}:
            self.found.append(node.id)


def check_torchscript_archive(path: Path) -> None:
    """Raise :class:`InvalidInputError` when the archive's pickles name globals beyond TorchScript classes and
    tensors, or its TorchScript code calls operators with effects outside the model (file system, network)."""
    try:
        zf = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise InvalidInputError(f"{path} is not a readable TorchScript archive: {exc}") from exc
    with zf:
        for name in zf.namelist():
            if name.endswith((".pkl", ".debug_pkl")):
                check_pickle(zf.read(name), path, name, torchscript=True)
            elif "/code/" in name and name.endswith(".py"):
                source = zf.read(name).decode("utf-8", "replace")
                try:
                    tree = ast.parse(source)
                except SyntaxError as exc:
                    raise InvalidInputError(f"{path}: {name} is not TorchScript code ({exc.msg})") from exc
                visitor = _UnsafeCall()
                visitor.visit(tree)
                if visitor.found:
                    raise _refuse(path, f"its TorchScript code ({name}) calls {', '.join(sorted(set(visitor.found)))}, "
                                        "which acts outside the model (files, network)")


# --------------------------------------------------------------------------------------------------------------
# fail-closed load


def _refused_call(what: str) -> Any:
    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise InvalidInputError(f"the archive asked torch to {what}; refused (accelserve never runs code from a "
                                "model file)", hint=TRUST_HINT)
    return refuse


@contextlib.contextmanager
def safe_torch_load_guard(torch: Any) -> Iterator[None]:
    """While loading an untrusted archive: ``torch.load`` only with ``weights_only=True``; ``pickle.loads``, the
    TorchBind unpickler and the AOTInductor loader in torch's pt2 reader refused."""
    from torch.export.pt2_archive import _package  # type: ignore[import-not-found]

    original_load = torch.load

    def weights_only_load(*args: Any, **kwargs: Any) -> Any:
        kwargs["weights_only"] = True
        return original_load(*args, **kwargs)

    class _NoPickle:
        loads = staticmethod(_refused_call("unpickle a Python object"))

    patches = [
        (torch, "load", weights_only_load),
        (_package, "pickle", _NoPickle),
        (torch._C, "_pickle_load_obj", _refused_call("unpickle a TorchBind object")),
        (_package, "_load_aoti", _refused_call("load AOTInductor compiled code")),
    ]
    saved = [(obj, attr, getattr(obj, attr)) for obj, attr, _ in patches]
    try:
        for obj, attr, value in patches:
            setattr(obj, attr, value)
        yield
    finally:
        for obj, attr, value in saved:
            setattr(obj, attr, value)
