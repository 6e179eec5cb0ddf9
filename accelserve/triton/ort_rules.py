"""The checks Triton's onnxruntime backend makes when it loads an ONNX model against its config.

Written from triton-inference-server/onnxruntime_backend ``src/onnxruntime.cc`` (``AutoCompleteConfig``,
``AutoCompleteMaxBatch``, ``ValidateInputs``, ``ValidateOutputs``, ``ValidateBooleanSequenceControl``,
``ValidateTypedSequenceControl``) and ``src/onnxruntime_utils.cc`` (``CompareDimsSupported``):

* the model's inputs are exactly the config's non-optional inputs, plus the batch inputs, the sequence control
  tensors (START/END/READY/CORRID) and the implicit-state inputs: Triton supplies the latter itself, so they are
  never listed under ``input``;
* an input dim that is dynamic in the model accepts any config dim; a fixed one must be equal. Outputs compare
  exactly (a dynamic model dim needs -1 in the config). With ``max_batch_size > 0`` the model's first dim must be
  dynamic; ``reshape`` gives the shape the model sees; a scalar (or shapeless) model tensor takes config dims of 1;
* control tensors have de-batched dims [1] and the data type the control implies;
* ``optional`` inputs only without batching; ``allow_ragged_batch`` inputs have model shape [-1];
* a config without inputs or outputs is auto-completed from the model (``max_batch_size`` must then be 0 unless
  every model tensor has a dynamic first dim).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

from accelserve.errors import InvalidModelError
from accelserve.onnx_io import read_onnx
from accelserve.triton.config import TensorSignature, graph_signature
from accelserve.triton.core_rules import WILDCARD, control_tensors
from accelserve.triton.dtypes import onnx_to_triton, onnx_type_name

#: default-max-batch-size of the onnxruntime backend (backend config), used when auto-complete enables batching
DEFAULT_AUTOCOMPLETE_MAX_BATCH = 4


def _shape(sig: TensorSignature) -> list[int]:
    """The shape ONNX Runtime reports: -1 for a dynamic dim, [] for an unknown rank."""
    return [WILDCARD if d is None else d for d in (sig.shape or ())]


def _shape_text(shape: Sequence[int]) -> str:
    return "[" + ",".join(str(d) for d in shape) + "]"


def _triton_type(sig: TensorSignature) -> int | None:
    try:
        return onnx_to_triton(sig.elem_type)
    except InvalidModelError:
        return None


def compare_dims(name: str, tensor: str, model_shape: list[int], dims: list[int], max_batch_size: int,
                 exact: bool) -> str | None:
    """CompareDimsSupported: None when the config dims fit the model shape, else Triton's message."""
    if max_batch_size > 0:
        if not model_shape or model_shape[0] != WILDCARD:
            return (f"model '{name}', tensor '{tensor}': for the model to support batching the shape should have at "
                    "least 1 dimension and the first dimension must be -1; but shape expected by the model is "
                    f"{_shape_text(model_shape)}")
        full = [WILDCARD, *dims]
        ok = len(model_shape) == len(full) and all(
            m == f for m, f in zip(model_shape, full) if exact or m != WILDCARD)
        if not ok:
            return (f"model '{name}', tensor '{tensor}': the model expects {len(model_shape)} dimensions (shape "
                    f"{_shape_text(model_shape)}) but the model configuration specifies {len(full)} dimensions (an "
                    "initial batch dimension because max_batch_size > 0 followed by the explicit tensor shape, "
                    f"making complete shape {_shape_text(full)})")
        return None
    ok = len(model_shape) == len(dims) and all(m == d for m, d in zip(model_shape, dims) if exact or m != WILDCARD)
    if not ok:
        return (f"model '{name}', tensor '{tensor}': the model expects {len(model_shape)} dimensions (shape "
                f"{_shape_text(model_shape)}) but the model configuration specifies {len(dims)} dimensions (shape "
                f"{_shape_text(dims)})")
    return None


def autocomplete(config: mc.ModelConfig, inputs: list[TensorSignature], outputs: list[TensorSignature]) -> list[str]:
    """AutoCompleteConfig, in place: fill max_batch_size and the inputs/outputs a config leaves out."""
    if config.input and config.output:
        return []
    batchable = all(len(_shape(s)) > 0 and _shape(s)[0] == WILDCARD for s in [*inputs, *outputs])
    if batchable:
        if config.max_batch_size == 0:
            config.max_batch_size = DEFAULT_AUTOCOMPLETE_MAX_BATCH
        if config.max_batch_size > 1 and not config.HasField("sequence_batching"):
            config.dynamic_batching.SetInParent()
    elif config.max_batch_size != 0:
        return [f"autofill failed for model '{config.name}': model does not support batching while non-zero "
                "max_batch_size is specified"]
    for entries, sigs in ((config.input, inputs), (config.output, outputs)):
        if entries:
            continue
        for sig in sigs:
            data_type = _triton_type(sig)
            if data_type is None:
                return [f"'{sig.name}' has ONNX type {onnx_type_name(sig.elem_type)}, which Triton cannot serve"]
            entry = entries.add(name=sig.name, data_type=data_type)
            dims = _shape(sig)[1 if config.max_batch_size > 0 else 0:]
            entry.dims.extend(dims or [1])
            if not dims and config.max_batch_size > 0:
                entry.reshape.SetInParent()
    return []


def _control_problems(config: mc.ModelConfig, model_inputs: dict[str, TensorSignature]) -> list[str]:
    out = []
    name = config.name
    for kind, (tensor, data_type) in control_tensors(config.sequence_batching).items():
        sig = model_inputs.get(tensor)
        if sig is None:
            out.append(f"configuration specified sequence control '{tensor}', but model does not provide that input")
            continue
        shape = _shape(sig)
        debatched = shape[1:] if config.max_batch_size > 0 else shape
        if debatched != [1]:
            out.append(f"unable to load model '{name}', sequence control '{tensor}' in model has dims "
                       f"{_shape_text(debatched)} but dims [1] is expected")
        if data_type != mc.TYPE_INVALID and _triton_type(sig) != data_type:
            out.append(f"unable to load model '{name}', sequence control '{tensor}', the model expects data-type "
                       f"{onnx_type_name(sig.elem_type)} but the model configuration specifies data-type "
                       f"{mc.DataType.Name(data_type)}")
    return out


def _io_problems(config: mc.ModelConfig, kind: str, entry: mc.ModelInput | mc.ModelOutput,
                 tensors: dict[str, TensorSignature], batch_output_targets: set[str]) -> list[str]:
    name = config.name
    sig = tensors.get(entry.name)
    if sig is None:
        return [f"unexpected inference {kind} '{entry.name}', allowed {kind}s are: {', '.join(sorted(tensors))}"]
    out = []
    model_type = _triton_type(sig)
    if model_type is None:
        return [f"{kind} '{entry.name}' has ONNX type {onnx_type_name(sig.elem_type)}, which Triton cannot serve"]
    if model_type != entry.data_type and entry.data_type != mc.TYPE_INVALID:  # a missing type: core's problem
        out.append(f"unable to load model '{name}', configuration expects datatype "
                   f"{mc.DataType.Name(entry.data_type)} for {kind} '{entry.name}', model provides "
                   f"{mc.DataType.Name(model_type)}")
    dims = list(entry.reshape.shape) if entry.HasField("reshape") else list(entry.dims)
    model_shape = _shape(sig)
    optional = kind == "input" and entry.optional
    ragged = kind == "input" and entry.allow_ragged_batch
    if optional and config.max_batch_size != 0:
        out.append(f"unable to load model '{name}', optional input '{entry.name}' is not supported for models that "
                   "support batching")
    if optional and ragged:
        out.append(f"unable to load model '{name}', configuration expects model provides input with shape [-1] for "
                   f"ragged input '{entry.name}', which is not supported for optional input")
    elif ragged:
        if model_shape != [WILDCARD]:
            out.append(f"unable to load model '{name}', configuration expects model provides input with shape [-1] "
                       f"for ragged input '{entry.name}', model provides {_shape_text(model_shape)}")
    elif kind == "output" and entry.name in batch_output_targets:
        pass  # a batch output's shape need not match the model
    elif model_shape:
        problem = compare_dims(name, entry.name, model_shape, dims, config.max_batch_size, exact=kind == "output")
        if problem:
            out.append(problem)
    elif any(d != 1 for d in dims):
        out.append(f"unable to load model '{name}', scalar tensor '{entry.name}', should only provide 1 in the model "
                   "configuration when the model doesn't support batching. Model configuration provided: "
                   f"{_shape_text(dims)}.")
    return out


def onnx_problems(config: mc.ModelConfig, model_file: Path) -> list[str]:
    """How the config disagrees with the ONNX model file, as the onnxruntime backend would report it."""
    try:
        model = read_onnx(model_file, load_external_data=False)
        inputs, outputs = graph_signature(model, require_shapes=False)
    except InvalidModelError as exc:
        return [exc.message]
    # initializers that are also graph inputs can be overridden by a request (ORT "overridable initializers")
    graph_inputs = {v.name for v in model.graph.input}
    overridable = {t.name for t in model.graph.initializer if t.name in graph_inputs}
    completed = mc.ModelConfig()
    completed.CopyFrom(config)
    problems = autocomplete(completed, inputs, outputs)
    if problems:
        return problems
    config = completed
    model_inputs = {s.name: s for s in inputs}
    model_outputs = {s.name: s for s in outputs}
    out = []
    controls = control_tensors(config.sequence_batching)
    states = list(config.sequence_batching.state)
    expected = (sum(1 for i in config.input if not i.optional) + len(config.batch_input) + len(controls)
                + len(states))
    if len(model_inputs) != expected:
        supplied = {i.name for i in config.input} | {t for t, _ in controls.values()} \
            | {s.input_name for s in states} | {t for b in config.batch_input for t in b.target_name}
        unlisted = [n for n in model_inputs if n not in supplied]
        detail = f"; model inputs not in the config: {', '.join(unlisted)}" if unlisted else ""
        out.append(f"unable to load model '{config.name}', configuration expects {expected} inputs, model provides "
                   f"{len(model_inputs)}{detail}")
    all_inputs = dict(model_inputs)
    for init in model.graph.initializer:
        if init.name in overridable:
            all_inputs[init.name] = TensorSignature(init.name, init.data_type, tuple(init.dims))
    targets = {t for b in config.batch_output for t in b.target_name}
    for entry in config.input:
        out += _io_problems(config, "input", entry, all_inputs, targets)
    for entry in config.output:
        out += _io_problems(config, "output", entry, model_outputs, targets)
    out += _control_problems(config, model_inputs)
    for state in states:
        if state.input_name not in model_inputs:
            out.append(f"sequence batching state input '{state.input_name}' is not an input of the model (model "
                       f"inputs: {', '.join(model_inputs) or '-'})")
        if state.output_name not in model_outputs:
            out.append(f"sequence batching state output '{state.output_name}' is not an output of the model (model "
                       f"outputs: {', '.join(model_outputs) or '-'})")
        for tensor, sigs in ((state.input_name, model_inputs), (state.output_name, model_outputs)):
            sig = sigs.get(tensor)
            if sig is not None and _triton_type(sig) != state.data_type:
                out.append(f"unable to load model '{config.name}', configuration expects datatype "
                           f"{mc.DataType.Name(state.data_type)} for state '{tensor}', model provides "
                           f"{onnx_type_name(sig.elem_type)}")
    return out
