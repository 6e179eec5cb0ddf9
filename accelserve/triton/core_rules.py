"""The checks Triton's core makes on a model configuration before any backend sees it.

Written from Triton core's ``src/model_config_utils.cc`` (``NormalizeModelConfig``, ``ValidateModelConfig``,
``ValidateIOShape``, ``ValidateBatchIO``, ``ValidateInstanceGroup``, ``GetBooleanSequenceControlProperties``,
``GetTypedSequenceControlProperties``, ``ValidateEnsembleSchedulingConfig``), the sequence batcher's implicit-state
set-up (``sequence_batch_scheduler.cc`` ``GenerateInitialStateData``) and the warmup set-up
(``backend_model_instance.cc`` ``GenerateWarmupData``). Messages keep Triton's own wording (without its trailing
"for <model>": every problem already names its file), so a user can search for them. Unlike Triton, which stops
at the first problem, every problem is reported.

The backend-specific comparison with the model file lives in :mod:`accelserve.triton.ort_rules`.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from pathlib import Path

from tritonclient.grpc import model_config_pb2 as mc

WILDCARD = -1
Control = mc.ModelSequenceBatching.Control
BOOLEAN_CONTROLS = (Control.CONTROL_SEQUENCE_START, Control.CONTROL_SEQUENCE_END, Control.CONTROL_SEQUENCE_READY)
CORRID_TYPES = (mc.TYPE_UINT64, mc.TYPE_INT64, mc.TYPE_UINT32, mc.TYPE_INT32, mc.TYPE_STRING)
#: what each *_false_true list makes the control tensor's data type
_FALSE_TRUE_TYPES = {"int32_false_true": mc.TYPE_INT32, "fp32_false_true": mc.TYPE_FP32,
                     "bool_false_true": mc.TYPE_BOOL}
TENSORRT_PLATFORM = "tensorrt_plan"
ENSEMBLE_PLATFORM = "ensemble"


def _kind_name(kind: int) -> str:
    return Control.Kind.Name(kind)


def _type_name(data_type: int) -> str:
    return mc.DataType.Name(data_type)


# --------------------------------------------------------------------------------------------------------------
# Inputs and outputs


def _element_count(dims: Sequence[int]) -> int:
    """Triton's GetElementCount: -1 when a dim is variable; an empty shape counts 0 elements."""
    if WILDCARD in dims:
        return WILDCARD
    count = 0
    for i, d in enumerate(dims):
        count = d if i == 0 else count * d
    return count


def _chunks(dims: Sequence[int]) -> list[int]:
    """Element counts of the runs between variable-size dims (Triton's reshape rule)."""
    out, current = [], 1
    for d in dims:
        if d == WILDCARD:
            out.append(current)
            current = 1
        else:
            current *= d
    return [*out, current]


def io_shape_problems(kind: str, io: mc.ModelInput | mc.ModelOutput, max_batch_size: int, platform: str) -> list[str]:
    """ValidateIOShape + ValidateModelInput/Output for one entry (``kind``: "input" or "output")."""
    prefix = f"model {kind} "
    if not io.name:
        return [prefix + "must specify 'name'"]
    label = f"{prefix}'{io.name}' "
    if io.data_type == mc.TYPE_INVALID:
        return [label + "must specify 'data_type'"]
    if not io.dims:
        return [label + "must specify 'dims'"]
    out = []
    if io.HasField("reshape") and not io.reshape.shape and max_batch_size == 0:
        out.append(label + "cannot have empty reshape for non-batching model as scalar tensors are not supported")
    if any(d < 1 and d != WILDCARD for d in io.dims):
        out.append(label + "dimension must be integer >= 1, or -1 to indicate a variable-size dimension "
                   f"(dims {list(io.dims)})")
    if io.HasField("reshape"):
        shape = list(io.reshape.shape)
        if any(d < 1 and d != WILDCARD for d in shape):
            out.append(label + "reshape dimensions must be integer >= 1, or -1 to indicate a variable-size dimension "
                       f"(reshape {shape})")
        else:
            dims_size, reshape_size = _element_count(io.dims), _element_count(shape)
            if dims_size != reshape_size and (reshape_size != 0 or dims_size != 1):
                out.append(label + f"has different size for dims and reshape (dims {list(io.dims)}, reshape {shape})")
            elif dims_size == WILDCARD:
                a, b = _chunks(io.dims), _chunks(shape)
                if len(a) != len(b):
                    out.append(label + "has different number of variable-size dimensions for dims and reshape "
                               f"(dims {list(io.dims)}, reshape {shape})")
                elif a != b:
                    out.append(label + f"has different size for dims and reshape (dims {list(io.dims)}, "
                               f"reshape {shape})")
    if kind == "input" and io.format in (mc.ModelInput.FORMAT_NHWC, mc.ModelInput.FORMAT_NCHW) and len(io.dims) != 3:
        out.append(f"{label}: model input NHWC/NCHW require 3 dims")
    if platform != TENSORRT_PLATFORM and io.is_shape_tensor:
        out.append(f"{label}: shape tensors are only supported for TensorRT platform")
    if io.is_non_linear_format_io:
        if platform != TENSORRT_PLATFORM:
            out.append(f"{label}: Non-linear IO format is only supported for the TensorRT platform")
        elif len(io.dims) != 3:
            out.append(f"{label}: Non-linear IO format {kind} requires 3 dims")
    return out


def batch_io_problems(config: mc.ModelConfig) -> list[str]:
    """ValidateBatchIO: batch_input / batch_output entries."""
    inputs = {i.name for i in config.input}
    outputs = {o.name for o in config.output}
    out = []
    for bi in config.batch_input:
        kind = mc.BatchInput.Kind.Name(bi.kind)
        if len(bi.source_input) != 1:
            out.append(f"batch input kind '{kind}' expects 1 source input, got {len(bi.source_input)}")
        if bi.data_type not in (mc.TYPE_INT32, mc.TYPE_FP32):
            out.append("batch input data type must be TYPE_INT32 or TYPE_FP32")
        out += [f"unknown source input name '{s}'" for s in bi.source_input if s not in inputs]
    for bo in config.batch_output:
        kind = mc.BatchOutput.Kind.Name(bo.kind)
        if len(bo.source_input) != 1:
            out.append(f"batch output kind '{kind}' expects 1 source input, got {len(bo.source_input)}")
        out += [f"unknown source input name '{s}'" for s in bo.source_input if s not in inputs]
        seen: set[str] = set()
        for target in bo.target_name:
            if target not in outputs:
                out.append(f"unknown target output name '{target}'")
            if target in seen:
                out.append(f"target output name '{target}' can only be specified once")
            seen.add(target)
    return out


# --------------------------------------------------------------------------------------------------------------
# Scheduling


def dynamic_batching_problems(config: mc.ModelConfig) -> list[str]:
    db = config.dynamic_batching
    out = []
    for size in db.preferred_batch_size:
        if size <= 0:
            out.append(f"dynamic batching preferred size must be positive (got {size})")
        elif size > config.max_batch_size:
            out.append(f"dynamic batching preferred size must be <= max batch size (got {size}, max_batch_size "
                       f"{config.max_batch_size})")
    levels = db.priority_levels
    if levels:
        if db.default_priority_level == 0 or db.default_priority_level > levels:
            out.append(f"default priority level must be in range [1, {levels}] (got {db.default_priority_level})")
        for level in db.priority_queue_policy:
            if level == 0 or level > levels:
                out.append(f"priority queue policy must have priority level in range [1, {levels}] (got {level})")
    if db.preserve_ordering:
        if levels > 1:
            out.append("Only one priority level is allowed when 'preserve_ordering' is true")
        policies = [db.default_queue_policy, *db.priority_queue_policy.values()]
        if any(p.default_timeout_microseconds and p.timeout_action == mc.ModelQueuePolicy.DELAY for p in policies):
            out.append("Queue policy can not have DELAY as timeout action when 'preserve_ordering' is true")
    return out


def control_tensors(batcher: mc.ModelSequenceBatching) -> dict[int, tuple[str, int]]:
    """Control kind -> (tensor name, data type) of a (valid) sequence batcher: the tensors Triton supplies to the
    model besides the request's own inputs."""
    found: dict[int, tuple[str, int]] = {}
    for control_input in batcher.control_input:
        for c in control_input.control:
            if c.kind == Control.CONTROL_SEQUENCE_CORRID:
                found[c.kind] = (control_input.name, c.data_type)
            else:
                lists = [f for f in _FALSE_TRUE_TYPES if len(getattr(c, f))]
                found[c.kind] = (control_input.name, _FALSE_TRUE_TYPES[lists[0]] if lists else mc.TYPE_INVALID)
    return found


def _control_problems(batcher: mc.ModelSequenceBatching) -> list[str]:
    """GetBooleanSequenceControlProperties (START/END/READY) + GetTypedSequenceControlProperties (CORRID)."""
    out = []
    seen_tensors: set[str] = set()
    for control_input in batcher.control_input:
        if not control_input.name:
            out.append("sequence batching control tensor must have a name")
        elif control_input.name in seen_tensors:
            out.append(f"sequence batching control tensor '{control_input.name}' is specified for multiple control "
                       "kinds")
        seen_tensors.add(control_input.name)
    for kind in (*BOOLEAN_CONTROLS, Control.CONTROL_SEQUENCE_CORRID):
        name = _kind_name(kind)
        controls = [c for ci in batcher.control_input for c in ci.control if c.kind == kind]
        if len(controls) > 1:
            out.append(f"sequence batching specifies multiple {name} tensors")
        for c in controls[:1]:
            given = [f for f in _FALSE_TRUE_TYPES if len(getattr(c, f))]
            if kind == Control.CONTROL_SEQUENCE_CORRID:
                if given:
                    out.append("sequence batching must not specify either 'int32_false_true', 'fp32_false_true' or "
                               f"'bool_false_true' for {name}")
                elif c.data_type not in CORRID_TYPES:
                    out.append(f"unexpected data type for control {name} (got {_type_name(c.data_type)}). Allowed "
                               "data types are TYPE_UINT64, TYPE_INT64, TYPE_UINT32, TYPE_INT32 and TYPE_STRING")
            elif not given:
                out.append("sequence batching must specify either 'int32_false_true', 'fp32_false_true' or "
                           f"'bool_false_true' for {name}")
            elif len(given) > 1:
                out.append("sequence batching specifies more than one from 'int32_false_true', 'fp32_false_true' "
                           f"and 'bool_false_true' for {name}")
            elif len(getattr(c, given[0])) != 2:
                out.append(f"sequence batching control '{given[0]}' must have exactly 2 entries for {name}")
    return out


def _state_problems(batcher: mc.ModelSequenceBatching, max_batch_size: int, model_dir: Path) -> list[str]:
    """Implicit state entries (sequence batcher set-up: GenerateInitialStateData)."""
    out = []
    seen_inputs: set[str] = set()
    for state in batcher.state:
        label = f"state input '{state.input_name}'"
        if not state.input_name or not state.output_name:
            out.append("sequence batching state must specify 'input_name' and 'output_name'")
        if state.data_type == mc.TYPE_INVALID:
            out.append(f"{label} must specify 'data_type'")
        if not state.dims:
            out.append(f"{label} must specify 'dims'")
        if len(state.initial_state) > 1:
            out.append(f"initial_state field for {label} must contain exactly one or zero element. Found "
                       f"'{len(state.initial_state)}' elements.")
            continue
        for initial in state.initial_state:
            if initial.data_type != state.data_type:
                out.append(f"The data type used for 'initial_state' field of state '{state.input_name}' does not "
                           "match the state data type.")
            if not initial.name:
                out.append(f"Field 'name' must be set when using initial_state for {label}.")
            if state.input_name in seen_inputs:
                out.append(f"State input name '{state.input_name}' specified more than once.")
            if len(initial.dims) != len(state.dims):
                out.append(f"Number of dimensions in 'initial_state' doesn't match the size of 'state' dimensions "
                           f"for {label}. {len(initial.dims)} != {len(state.dims)}")
            else:
                for got, want in zip(initial.dims, state.dims):
                    if got == WILDCARD:
                        out.append(f"'initial_state' field for state input name '{state.input_name}' contains "
                                   "variable dimensions.")
                        break
                    if want != WILDCARD and got != want:
                        out.append(f"'initial_state' dim for input name '{state.input_name}' doesn't match 'state' "
                                   f"dim description. {got} != {want}")
                        break
            which = initial.WhichOneof("state_data")
            if which is None:
                out.append(f"initial_state setting expects state'{state.input_name}' to have state_data set")
            elif which == "data_file" and not (model_dir / "initial_state" / initial.data_file).is_file():
                out.append(f"failed to open text file for read initial_state/{initial.data_file} (the initial state "
                           f"of {label})")
        seen_inputs.add(state.input_name)
    return out


def sequence_batching_problems(config: mc.ModelConfig, model_dir: Path) -> list[str]:
    batcher = config.sequence_batching
    out = []
    if config.response_cache.enable:
        out.append("Response Cache does not currently support model with sequence batching scheduler. Please "
                   "disable the response cache.")
    out += _control_problems(batcher)
    if batcher.HasField("oldest"):
        for size in batcher.oldest.preferred_batch_size:
            if size <= 0:
                out.append(f"sequence batching preferred batch size must be positive (got {size})")
            elif size > config.max_batch_size:
                out.append(f"sequence batching preferred batch size must be <= max batch size (got {size}, "
                           f"max_batch_size {config.max_batch_size})")
    if batcher.HasField("direct"):
        utilization = batcher.direct.minimum_slot_utilization
        if utilization < 0.0 or utilization > 1.0:
            out.append(f"sequence batching minimum slot utilization must be in range (0.0, 1.0] (got {utilization})")
    out += _state_problems(batcher, config.max_batch_size, model_dir)
    return out


# --------------------------------------------------------------------------------------------------------------
# Ensembles


def ensemble_problems(config: mc.ModelConfig, repository_models: Iterable[str] | None) -> list[str]:
    """ValidateEnsembleSchedulingConfig + BuildEnsembleGraph: the steps form a data flow from the ensemble's
    inputs to its outputs, every tensor is used, and (when the repository is known) each step's model exists."""
    name = config.name
    out = []
    if config.platform != ENSEMBLE_PLATFORM:
        return [f"ensemble scheduling cannot be set for model '{name}' whose platform is not {ENSEMBLE_PLATFORM}"]
    if config.instance_group:
        out.append(f"instance group should not be specified for ensemble '{name}'")
    if config.HasField("optimization"):
        out.append(f"optimization should not be specified for ensemble '{name}'")
    if config.model_warmup:
        out.append(f"model_warmup can not be specified for ensemble '{name}'")
    steps = config.ensemble_scheduling.step
    if not steps:
        return [*out, f"must specify 'step' for ensemble '{name}'"]
    producers: dict[str, int] = {}  # tensor -> step index that writes it
    consumers: dict[str, list[int]] = {}  # tensor -> step indexes that read it
    step_inputs: list[set[str]] = []
    for idx, step in enumerate(steps):
        if not step.model_name:
            out.append(f"must specify 'model_name' in step {idx} of ensemble '{name}'")
        if not step.input_map:
            out.append(f"must specify 'input_map' in step {idx} of ensemble '{name}'")
        if not step.output_map:
            out.append(f"must specify 'output_map' in step {idx} of ensemble '{name}'")
        for tensor in step.output_map.values():
            if tensor in producers:
                out.append(f"ensemble tensor '{tensor}' can appear in an output map only once for ensemble "
                           f"'{name}' step {idx}")
            producers.setdefault(tensor, idx)
        step_inputs.append(set(step.input_map.values()))
        for tensor in step.input_map.values():
            consumers.setdefault(tensor, []).append(idx)
    if out:
        return out
    tensors = set(producers) | set(consumers)
    ready = {i.name for i in config.input if i.name in tensors}
    out += [f"ensemble input '{i.name}' for ensemble {name}' is not used" for i in config.input
            if i.name not in tensors]
    done: set[int] = set()
    progress = True
    while progress:  # run every step whose inputs are all ready
        progress = False
        for idx, step in enumerate(steps):
            if idx not in done and step_inputs[idx] <= ready:
                done.add(idx)
                ready |= set(step.output_map.values())
                progress = True
    outputs = {o.name for o in config.output}
    for o in config.output:
        if o.name not in tensors:
            out.append(f"ensemble output '{o.name}' for ensemble {name}' is not used")
        elif o.name not in ready:
            missing = sorted(t for t in step_inputs[producers[o.name]] if t not in ready) \
                if o.name in producers else []
            detail = f": at least one of its depending tensors, '{missing[0]}', is not connected" if missing else ""
            out.append(f"output '{o.name}' for ensemble '{name}' is not written{detail}")
    for tensor in sorted(tensors - outputs):
        if tensor not in ready or not consumers.get(tensor):
            out.append(f"ensemble tensor '{tensor}' is unused in ensemble '{name}'")
    if repository_models is not None:
        known = set(repository_models)
        missing = sorted({s.model_name for s in steps if s.model_name not in known})
        if missing:
            out.append(f"ensemble {name} contains models that are not available or ambiguous: {', '.join(missing)} "
                       "(no such model directory in the repository)")
    return out


# --------------------------------------------------------------------------------------------------------------
# Instances and warmup


def instance_group_problems(config: mc.ModelConfig) -> list[str]:
    """ValidateInstanceGroup (a missing instance_group is filled in by NormalizeInstanceGroup, so it is fine)."""
    out = []
    for i, group in enumerate(config.instance_group):
        label = f"instance group {group.name or f'{config.name}_{i}'} of model {config.name}"
        if group.kind == mc.ModelInstanceGroup.KIND_MODEL and group.gpus:
            out.append(f"{label} has kind KIND_MODEL but specifies one or more GPUs")
        elif group.kind == mc.ModelInstanceGroup.KIND_CPU and group.gpus:
            out.append(f"{label} has kind KIND_CPU but specifies one or more GPUs")
        bad = [g for g in group.gpus if g < 0]
        if bad:
            out.append(f"{label} specifies invalid or unsupported gpu id {bad[0]}")
        if group.profile and config.platform != TENSORRT_PLATFORM:
            out.append(f"{label} and platform {config.platform} specifies profile field which is only supported for "
                       "TensorRT models")
        if group.count < 0:
            out.append(f"{label} has count {group.count}; it must be >= 1 (0 or unset means the default)")
    return out


def warmup_problems(config: mc.ModelConfig, model_dir: Path) -> list[str]:
    """GenerateWarmupData: each sample's inputs are fully specified, have data, and are inputs of the model
    (config inputs, or sequence control / state inputs, which Triton passes as override inputs)."""
    mbs = config.max_batch_size
    inputs = {i.name: i for i in config.input}
    extra = {name for name, _ in control_tensors(config.sequence_batching).values()} \
        | {s.input_name for s in config.sequence_batching.state}
    out = []
    for warmup in config.model_warmup:
        label = f"model_warmup '{warmup.name}'"
        if warmup.batch_size == 0:
            continue  # Triton skips a batch-0 sample
        if mbs == 0 and warmup.batch_size != 1:
            out.append(f"{label} batch_size {warmup.batch_size}: a model without batching (max_batch_size 0) "
                       "runs batch 1 only")
        elif mbs > 0 and warmup.batch_size > mbs:
            out.append(f"{label} batch_size {warmup.batch_size} exceeds max_batch_size {mbs}")
        for key, data in warmup.inputs.items():
            if key not in inputs and key not in extra:
                out.append(f"{label} feeds '{key}', which is not an input of the model (config inputs: "
                           f"{', '.join(inputs) or '-'})")
            if WILDCARD in data.dims:
                out.append(f"{label}: warmup setting expects all variable-size dimensions are specified for "
                           f"input '{key}'")
            which = data.WhichOneof("input_data_type")
            if which is None:
                out.append(f"{label}: warmup setting expects input '{key}' to have input_data_type set")
            elif which == "input_data_file" and not (model_dir / "warmup" / data.input_data_file).is_file():
                out.append(f"{label} data file warmup/{data.input_data_file} is missing")
        missing = [n for n, i in inputs.items() if n not in warmup.inputs and not i.optional]
        if missing:
            out.append(f"{label} does not feed input(s) {', '.join(missing)}; the warmup request would fail")
        controls = [name for name, _ in control_tensors(config.sequence_batching).values()]
        unfed = [c for c in controls if c not in warmup.inputs]
        if unfed:
            out.append(f"{label} does not feed the sequence control input(s) {', '.join(unfed)}: warmup requests go "
                       "to the model directly, not through the sequence batcher, so nothing supplies them and the "
                       "warmup run fails")
    return out


def core_problems(config: mc.ModelConfig, model_dir: Path, repository_models: Iterable[str] | None = None) -> list[str]:
    """Everything Triton's core checks in a config (after auto-complete of platform/backend)."""
    out = []
    if config.platform == ENSEMBLE_PLATFORM and config.backend:
        out.append(f"Ensemble model '{config.name}' must have platform type '{ENSEMBLE_PLATFORM}' and empty backend "
                   "type")
    if config.max_batch_size < 0:
        out.append(f"'max_batch_size' must be non-negative value (got {config.max_batch_size})")
    for kind, entries in (("input", config.input), ("output", config.output)):
        seen: set[str] = set()
        for io in entries:
            out += io_shape_problems(kind, io, config.max_batch_size, config.platform)
            if io.name and io.name in seen:
                out.append(f"model {kind} '{io.name}' is listed twice")
            seen.add(io.name)
    out += batch_io_problems(config)
    if config.HasField("dynamic_batching"):
        out += dynamic_batching_problems(config)
    if config.HasField("sequence_batching"):
        out += sequence_batching_problems(config, model_dir)
    if config.HasField("ensemble_scheduling"):
        out += ensemble_problems(config, repository_models)
    elif config.platform == ENSEMBLE_PLATFORM:
        out.append(f"ensemble scheduling must be set for ensemble {config.name} whose platform is "
                   f"{ENSEMBLE_PLATFORM}")
    else:
        out += instance_group_problems(config)
    if config.model_transaction_policy.decoupled and config.response_cache.enable:
        out.append("Response Cache does not currently support model with 'decoupled' transaction policy. Please "
                   "disable the response cache.")
    if not config.HasField("ensemble_scheduling"):
        out += warmup_problems(config, model_dir)
    return out


def _dims_match(a: Sequence[int], b: Sequence[int]) -> bool:
    return len(a) == len(b) and all(x == y or WILDCARD in (x, y) for x, y in zip(a, b))


def ensemble_step_problems(config: mc.ModelConfig, step_configs: dict[str, mc.ModelConfig]) -> list[str]:
    """ValidateEnsembleConfig (core ``ensemble_utils.cc``), against the configs of the step models: batch sizes,
    every input_map/output_map key an input/output of the step model, every required step input mapped, and each
    ensemble tensor of one data type and shape wherever it appears. Steps whose model config is unknown (or
    leaves its inputs/outputs to auto-complete) are skipped."""
    name = config.name
    out = []
    tensors: dict[str, tuple[int, list[int], list[int], str]] = {}  # name -> (type, dims, full dims, from model)

    def node(io: mc.ModelInput | mc.ModelOutput, batching: bool) -> tuple[list[int], list[int]]:
        dims = list(io.reshape.shape) if io.HasField("reshape") else list(io.dims)
        return dims, ([WILDCARD, *dims] if batching else dims)

    def meet(tensor: str, data_type: int, dims: list[int], full: list[int], model: str) -> None:
        if tensor not in tensors:
            tensors[tensor] = (data_type, dims, full, model)
            return
        seen_type, seen_dims, seen_full, seen_model = tensors[tensor]
        prefix = f"in ensemble {name}, ensemble tensor {tensor}: "
        if seen_type != data_type:
            out.append(f"{prefix}inconsistent data type: {mc.DataType.Name(seen_type)} is inferred from model "
                       f"{seen_model} while {mc.DataType.Name(data_type)} is inferred from model {model}")
        elif not _dims_match(seen_dims, dims) and not _dims_match(seen_full, full):
            out.append(f"{prefix}inconsistent shape: [{','.join(map(str, seen_full))}] is inferred from model "
                       f"{seen_model} while [{','.join(map(str, full))}] is inferred from model {model}")

    batching = config.max_batch_size > 0
    for io in [*config.input, *config.output]:
        dims, full = node(io, batching)
        tensors.setdefault(io.name, (io.data_type, dims, full, name))
    for step in config.ensemble_scheduling.step:
        model = step_configs.get(step.model_name)
        if model is None or not model.input or not model.output:
            continue
        step_name = step.model_name
        if model.max_batch_size != 0 and model.max_batch_size < config.max_batch_size:
            out.append(f"ensemble {name} allows maximum batch size {config.max_batch_size}, but it contains model "
                       f"{step_name} which only allows maximum batch size to be {model.max_batch_size}")
        step_batching = model.max_batch_size > 0
        inputs = {i.name: i for i in model.input}
        outputs = {o.name: o for o in model.output}
        for key, tensor in step.input_map.items():
            if key not in inputs:
                out.append(f"in ensemble {name}, ensemble tensor {tensor} is mapping to non-existing input {key} in "
                           f"model {step_name}")
            else:
                meet(tensor, inputs[key].data_type, *node(inputs[key], step_batching), step_name)
        for key, io in inputs.items():
            if key not in step.input_map and not io.optional:
                out.append(f"in ensemble {name}, input {key} in model {step_name} is not mapped to any ensemble "
                           "tensors")
        for key, tensor in step.output_map.items():
            if key not in outputs:
                out.append(f"in ensemble {name}, ensemble tensor {tensor} is mapped from non-existing output {key} in "
                           f"model {step_name}")
            else:
                meet(tensor, outputs[key].data_type, *node(outputs[key], step_batching), step_name)
    return out
