"""Turning whatever the user gave the TensorFlow exporter into one callable shape.

A source may be an in-memory Keras 3 model (Functional, Sequential, subclassed), a ``tf.function`` (with an
input signature), a ``ConcreteFunction``, a loaded SavedModel, a path to a ``.keras``/``.h5`` file or a SavedModel
directory, or on the command line ``MODULE:ATTR`` (or ``FILE.py:ATTR``) naming any of these or a factory returning
one. Each becomes a :class:`TFModel`: ordered input names (and specs, where the model defines them), a function of
positional tensors returning the model's outputs, and a hint for output names.

Imports TensorFlow (through :func:`accelserve._lazy.require`); the core never imports this module.
"""

from __future__ import annotations

import inspect
import os
import sys
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from accelserve._lazy import require
from accelserve.errors import ExportError, InvalidInputError, InvalidModelError
from accelserve.specs import InputSpec, numpy_dtype

PURPOSE = "exporting a TensorFlow/Keras model"
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
DEFAULT_SIGNATURE = "serving_default"
SOURCE_HELP = (
    "a .keras/.h5 file, a SavedModel directory, or MODULE:ATTR (also FILE.py:ATTR) naming a Keras model, "
    "a tf.function with an input_signature, or a factory returning one"
)


def import_tensorflow() -> Any:
    """Import TensorFlow quietly (its C++ INFO/WARNING lines only when the user asked for them)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    return require("tensorflow", PURPOSE)


@dataclass
class TFModel:
    """A TensorFlow model reduced to what the exporter needs.

    ``call`` takes the input tensors in ``input_specs`` order (or, when the model does not define its inputs, in
    the order of the user's input specs) and returns the model's outputs in any structure (tensor, list, dict).
    """

    kind: str  #: "keras", "saved_model", "tf.function"
    description: str
    call: Callable[[list[Any]], Any]
    input_specs: list[InputSpec] | None = None  #: derived from the model; None when it does not define its inputs
    output_names: list[str] | None = None  #: names for non-dict outputs, in order, when the model names them
    keep_alive: Any = None  #: the object owning the variables


# --------------------------------------------------------------------------------------------------------------
# Input specs from TensorFlow shapes


def spec_from_tf(name: str, shape: Sequence[int | None] | None, dtype: Any, what: str) -> InputSpec:
    """An InputSpec for a TensorFlow input: ``None`` dims are dynamic (the first one is ``batch``)."""
    tf = import_tensorflow()
    dtype_name = tf.as_dtype(dtype).name
    try:
        numpy_dtype(dtype_name)
    except InvalidInputError:
        raise ExportError(
            f"input '{name}' of {what} has dtype {dtype_name}, which accelserve cannot feed or serve",
            hint="export a wrapper whose inputs are numeric tensors (float*, int*, uint8 or bool)",
        ) from None
    if shape is None:
        raise ExportError(
            f"input '{name}' of {what} has an unknown rank, so its shape cannot be derived",
            hint=f"pass it explicitly: --input {name}:1xDIMS:{dtype_name}",
        )
    dims: list[int | str] = []
    sample: list[int] = []
    for i, d in enumerate(shape):
        if d is None:
            dims.append("batch" if i == 0 else f"{name}_dim{i}")
            sample.append(1 if i == 0 else 2)
        else:
            dims.append(int(d))
            sample.append(int(d))
    return InputSpec(name=name, shape=tuple(dims), dtype=dtype_name, sample_shape=tuple(sample))


# --------------------------------------------------------------------------------------------------------------
# In-memory objects


def _is_keras_model(obj: Any) -> bool:
    keras = sys.modules.get("keras")
    return keras is not None and isinstance(obj, keras.Model)


def _is_tf_function(obj: Any) -> bool:
    return hasattr(obj, "get_concrete_function") and hasattr(obj, "python_function")


def _is_concrete_function(obj: Any) -> bool:
    return hasattr(obj, "structured_input_signature") and hasattr(obj, "structured_outputs")


def _has_signatures(obj: Any) -> bool:
    return isinstance(getattr(obj, "signatures", None), Mapping)


def is_tensorflow_model(obj: Any) -> bool:
    return _is_keras_model(obj) or _is_tf_function(obj) or _is_concrete_function(obj) or _has_signatures(obj)


def _keras_layer_name(tensor: Any) -> str | None:
    history = getattr(tensor, "_keras_history", None)
    op = getattr(history, "operation", None)
    return getattr(op, "name", None)


def from_keras_model(model: Any) -> TFModel:
    """Functional and Sequential models define their inputs; subclassed models need input specs from the user."""
    keras = require("keras", PURPOSE)
    what = f"Keras model '{model.name}' ({type(model).__name__})"
    try:
        defined = list(model.inputs or [])  # Functional/Sequential (built); subclassed models have none
    except (AttributeError, ValueError):
        defined = []

    if not defined:
        def call_subclassed(args: list[Any]) -> Any:
            return model(args[0] if len(args) == 1 else list(args), training=False)

        return TFModel("keras", what, call_subclassed, None, None, model)

    try:
        struct = model.input  # the structure the model is called with (a dict for dict-input Functional models)
    except (AttributeError, ValueError):  # a Sequential model built from an Input but never called
        struct = defined if len(defined) > 1 else defined[0]
    if len(defined) == 1 and not isinstance(struct, Mapping):
        struct = defined[0]
    flat = keras.tree.flatten(struct)
    if isinstance(struct, Mapping):
        names = [next(k for k, v in struct.items() if v is t) for t in flat]
    else:
        names = [_keras_layer_name(t) or t.name for t in flat]
    specs = [spec_from_tf(n, tuple(t.shape), t.dtype, what) for n, t in zip(names, flat)]

    def call_keras(args: list[Any]) -> Any:
        return model(keras.tree.pack_sequence_as(struct, list(args)), training=False)

    output_names = None
    try:
        outputs = list(model.outputs)
        output_names = [_keras_layer_name(t) or t.name for t in outputs]
    except (AttributeError, ValueError):
        pass
    return TFModel("keras", what, call_keras, specs, output_names, model)


def from_tf_function(fn: Any) -> TFModel:
    """A ``tf.function``; its ``input_signature`` (a flat list of TensorSpecs) gives names, shapes and dtypes."""
    tf = import_tensorflow()
    name = getattr(fn, "__name__", None) or getattr(getattr(fn, "python_function", None), "__name__", "function")
    what = f"tf.function '{name}'"
    signature = getattr(fn, "input_signature", None)
    specs = None
    if signature is not None:
        if not all(isinstance(s, tf.TensorSpec) for s in signature):
            raise ExportError(
                f"{what} has a nested input_signature {signature}; only a flat list of tf.TensorSpec is supported",
                hint="wrap it in a tf.function whose input_signature is a flat list of tf.TensorSpec",
            )
        try:
            params = list(inspect.signature(fn.python_function).parameters)
        except (TypeError, ValueError):
            params = []
        params = [p for p in params if p != "self"]
        names = [s.name or (params[i] if i < len(params) else f"input_{i}") for i, s in enumerate(signature)]
        specs = [
            spec_from_tf(n, s.shape.as_list() if s.shape.rank is not None else None, s.dtype, what)
            for n, s in zip(names, signature)
        ]
    return TFModel("tf.function", what, lambda args: fn(*args), specs, None, fn)


def _signature_args(fn: Any) -> dict[str, Any]:
    """A signature's keyword arguments (name -> TensorSpec) in the order it declares them."""
    args = dict(fn.structured_input_signature[1]) if fn.structured_input_signature else {}
    # structured_input_signature's dict is not in declaration order; function_type's parameters are
    declared = [p for p in getattr(getattr(fn, "function_type", None), "parameters", {}) if p in args]
    names = declared if sorted(declared) == sorted(args) else list(args)
    return {n: args[n] for n in names}


def _describe_signature(fn: Any) -> str:
    args = _signature_args(fn)
    parts = [f"{k}: {v.dtype.name}{v.shape.as_list() if v.shape.rank is not None else '[?]'}" for k, v in args.items()]
    return f"({', '.join(parts)})"


def from_signatures(obj: Any, signature: str | None, where: str) -> TFModel:
    """A loaded SavedModel (or any object with ``.signatures``): its serving signature, called by keyword."""
    key = signature or DEFAULT_SIGNATURE
    signatures = obj.signatures
    if key not in signatures:
        found = "; ".join(f"'{k}' {_describe_signature(v)}" for k, v in signatures.items()) or "none"
        raise InvalidModelError(
            f"the SavedModel {where} has no '{key}' signature (signatures found: {found})",
            hint=(
                "pick one with the 'signature' option (export_tensorflow(..., signature=NAME)), or re-save the model "
                "with a serving signature: model.export(DIR) for Keras, or tf.saved_model.save(obj, DIR, "
                "signatures={'serving_default': fn.get_concrete_function()})"
            ),
        )
    fn = signatures[key]
    what = f"signature '{key}' of the SavedModel {where}"
    if fn.structured_input_signature and fn.structured_input_signature[0]:
        raise ExportError(f"{what} takes positional arguments; serving signatures take keyword arguments only")
    args = _signature_args(fn)
    names = list(args)
    specs = [
        spec_from_tf(n, args[n].shape.as_list() if args[n].shape.rank is not None else None, args[n].dtype, what)
        for n in names
    ]

    def call_signature(tensors: list[Any]) -> Any:
        outputs = fn(**dict(zip(names, tensors)))
        # a loaded signature's output dict has no stable key order: sort it (as tf.nest does) so exports agree
        return {k: outputs[k] for k in sorted(outputs)} if isinstance(outputs, Mapping) else outputs

    return TFModel("saved_model", what, call_signature, specs, None, (obj, fn))


def from_concrete_function(fn: Any) -> TFModel:
    """A ``ConcreteFunction``: positional TensorSpecs, or keyword ones as in a signature."""
    name = fn.name.decode() if isinstance(fn.name, bytes) else str(fn.name)
    positional, keyword = fn.structured_input_signature if fn.structured_input_signature else ((), {})
    if keyword and not positional:
        holder = type("_Signatures", (), {})()
        holder.signatures = {DEFAULT_SIGNATURE: fn}
        model = from_signatures(holder, None, "(in memory)")
        model.description = f"concrete function '{name}'"
        return model
    what = f"concrete function '{name}'"
    specs = [
        spec_from_tf(s.name or f"input_{i}", s.shape.as_list() if s.shape.rank is not None else None, s.dtype, what)
        for i, s in enumerate(positional)
    ]
    return TFModel("tf.function", what, lambda args: fn(*args), specs, None, fn)


def from_object(obj: Any, *, signature: str | None = None, where: str = "(in memory)") -> TFModel:
    if _is_keras_model(obj):
        return from_keras_model(obj)
    if _is_tf_function(obj):
        return from_tf_function(obj)
    if _is_concrete_function(obj):
        return from_concrete_function(obj)
    if _has_signatures(obj):
        return from_signatures(obj, signature, where)
    raise InvalidInputError(
        f"{type(obj).__module__}.{type(obj).__qualname__} is not a TensorFlow model the exporter knows",
        hint=f"pass a keras.Model, a tf.function with an input_signature, or a loaded SavedModel; or {SOURCE_HELP}",
    )


# --------------------------------------------------------------------------------------------------------------
# Paths and MODULE:ATTR


def load_saved_model(path: Path, signature: str | None) -> TFModel:
    tf = import_tensorflow()
    try:
        loaded = tf.saved_model.load(str(path))
    except Exception as exc:
        raise InvalidModelError(
            f"TensorFlow cannot load the SavedModel {path}: {type(exc).__name__}: {str(exc).strip()[:500]}"
        ) from exc
    return from_signatures(loaded, signature, str(path))


def load_keras_file(path: Path) -> TFModel:
    import_tensorflow()  # first: without TensorFlow, the error should name it (Keras 3 needs a backend)
    keras = require("keras", PURPOSE)
    try:
        model = keras.saving.load_model(str(path), compile=False)
    except Exception as exc:
        raise InvalidModelError(
            f"Keras cannot load {path}: {type(exc).__name__}: {str(exc).strip()[:500]}",
            hint=(
                "a model with custom layers or a subclassed model needs its classes importable and registered "
                "(@keras.saving.register_keras_serializable); export it as MODULE:ATTR from code that imports them"
            ),
        ) from exc
    return from_keras_model(model)


def load_path(path: Path, signature: str | None) -> TFModel:
    if path.is_dir():
        if (path / "saved_model.pb").exists() or (path / "saved_model.pbtxt").exists():
            return load_saved_model(path, signature)
        raise InvalidInputError(
            f"{path} is a directory but not a TensorFlow SavedModel (it has no saved_model.pb)",
            hint="pass a SavedModel directory, a .keras/.h5 file, or MODULE:ATTR",
        )
    if path.suffix.lower() in KERAS_SUFFIXES:
        return load_keras_file(path)
    what = {
        ".onnx": "an ONNX model already; use it directly (accelserve verify / repo add)",
        ".pb": "a frozen graph or a bare protobuf; pass the SavedModel directory that contains saved_model.pb",
        ".tflite": "a TensorFlow Lite model, which this exporter does not convert",
        ".pt": "a PyTorch file; use `accelserve export torch`",
        ".pth": "a PyTorch file; use `accelserve export torch`",
    }.get(path.suffix.lower(), f"not a Keras model file ({', '.join(KERAS_SUFFIXES)}) or a SavedModel directory")
    raise InvalidInputError(f"{path} is {what}", hint=f"the tensorflow exporter takes {SOURCE_HELP}")


def load_module_attr(text: str, signature: str | None) -> TFModel:
    """``MODULE:ATTR`` naming a model, a tf.function, a loaded SavedModel, or a zero-argument factory of one."""
    from accelserve.exporters.torch_loading import (  # framework-free MODULE:ATTR resolution
        required_params,
        resolve_object,
    )

    import_tensorflow()
    obj = resolve_object(text, what="TensorFlow model")
    if not is_tensorflow_model(obj):
        if not callable(obj):
            raise InvalidInputError(
                f"'{text}' is a {type(obj).__name__}, not a Keras model, tf.function or SavedModel",
                hint=f"the tensorflow exporter takes {SOURCE_HELP}",
            )
        required = required_params(obj)
        if required:
            raise InvalidInputError(
                f"'{text}' is neither a Keras model nor a tf.function, and as a factory it needs argument(s) "
                f"{', '.join(required)}",
                hint="point at a keras.Model, a @tf.function(input_signature=...) or a factory taking no arguments",
            )
        try:
            obj = obj()
        except Exception as exc:
            raise InvalidInputError(f"building the model with {text}() failed: {type(exc).__name__}: {exc}") from exc
        if not is_tensorflow_model(obj):
            raise InvalidInputError(
                f"{text}() returned a {type(obj).__name__}, not a Keras model, tf.function or SavedModel",
                hint=f"the tensorflow exporter takes {SOURCE_HELP}",
            )
    return from_object(obj, signature=signature, where=text)


def load_source(source: Any, *, signature: str | None = None) -> TFModel:
    """Resolve an in-memory model, a path or a ``MODULE:ATTR`` string into a :class:`TFModel`."""
    if isinstance(source, TFModel):
        return source
    if isinstance(source, (str, os.PathLike)):
        text = os.fspath(source)
        path = Path(text)
        if path.exists():
            return load_path(path, signature)
        if ":" in text and not text.endswith(":"):
            return load_module_attr(text, signature)
        raise InvalidInputError(
            f"'{text}' does not exist and is not MODULE:ATTR", hint=f"the tensorflow exporter takes {SOURCE_HELP}"
        )
    import_tensorflow()
    return from_object(source, signature=signature)
