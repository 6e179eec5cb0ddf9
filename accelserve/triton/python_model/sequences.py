"""Sequence batching for the ONNX Runtime stand-in: control tensors and implicit state, as Triton's onnxruntime
backend sees them. Plain numpy (no Triton, no ONNX Runtime): the stand-in loads this file beside ``model.py`` and
the unit tests import it directly.

What Triton's core does for a model with ``sequence_batching`` (read in core's sequence_batch_scheduler.cc, and
checked against the tritonserver of nvidia-pytriton):

* every request reaches the model with one extra input per ``control_input`` (START, END, READY, CORRID) of shape
  ``[1, 1]`` (``[1]`` without batching) and the dtype the control names; the python backend gets them too;
* for each ``state`` entry the request carries ``input_name`` holding the sequence's state: the initial state
  (``zero_data`` or ``data_file``) on the first request. The model's ``output_name`` becomes the next request's
  state only when the backend hands it back with ``TRITONBACKEND_StateUpdate`` -- the onnxruntime backend does, the
  python backend has no such call, so Triton keeps passing the initial state. The stand-in therefore keeps the
  state itself, per correlation ID: the state Triton supplies on a START request (the initial state) starts it,
  every later request of that sequence gets the previous request's output state, END drops it;
* slots a direct-strategy batch leaves empty are filled with "null" requests whose READY control is false and
  whose correlation ID is 0 (seen in the python backend; Triton refuses 0 as the ID of a real sequence); their
  responses are discarded, and they must not touch any sequence's state;
* an idle sequence is ended by Triton after ``max_sequence_idle_microseconds``; the stand-in forgets states idle for
  longer than that (a later request of the timed-out sequence is refused by Triton itself unless it starts anew).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

#: request flags (TRITONSERVER_REQUEST_FLAG_SEQUENCE_START / _END)
FLAG_START = 1
FLAG_END = 2
#: Triton's default max_sequence_idle_microseconds
DEFAULT_IDLE_US = 1_000_000

CONTROL_KINDS = ("CONTROL_SEQUENCE_START", "CONTROL_SEQUENCE_END", "CONTROL_SEQUENCE_READY", "CONTROL_SEQUENCE_CORRID")
_NUMPY = {
    "TYPE_BOOL": np.bool_, "TYPE_INT32": np.int32, "TYPE_INT64": np.int64, "TYPE_UINT32": np.uint32,
    "TYPE_UINT64": np.uint64, "TYPE_FP32": np.float32, "TYPE_STRING": np.object_,
}
_STATE_NUMPY = {
    **_NUMPY, "TYPE_FP16": np.float16, "TYPE_FP64": np.float64, "TYPE_INT8": np.int8, "TYPE_INT16": np.int16,
    "TYPE_UINT8": np.uint8, "TYPE_UINT16": np.uint16,
}


class SequenceConfigError(ValueError):
    """The config's sequence batching cannot run on this ONNX model (raised when the model loads)."""


@dataclass(frozen=True)
class Control:
    name: str
    kind: str  #: CONTROL_SEQUENCE_START / END / READY / CORRID
    dtype: np.dtype
    false_true: tuple[Any, ...] = ()  #: the (false, true) values of a boolean control

    def value(self, flag: bool | int | str, batching: bool) -> np.ndarray:
        """The tensor Triton supplies: shape [1, 1] ([1] without batching); CORRID carries the ID itself."""
        shape = (1, 1) if batching else (1,)
        if self.kind == "CONTROL_SEQUENCE_CORRID":
            item = str(flag).encode() if self.dtype == np.object_ else flag
            return np.full(shape, item, dtype=self.dtype)
        return np.full(shape, self.false_true[1 if flag else 0], dtype=self.dtype)


@dataclass(frozen=True)
class State:
    input_name: str
    output_name: str
    dtype: np.dtype
    dims: tuple[int, ...] = ()
    initial_dims: tuple[int, ...] | None = None  #: dims of a zero_data initial state (None: no zero_data)
    initial_file: str | None = None  #: data_file of the initial state (under <model>/initial_state/)

    def initial(self, batching: bool) -> np.ndarray:
        """The state Triton supplies on a START request: zeros of the initial state's dims, or of the state's
        dims with variable dims 1 (Triton's content is unspecified without an initial state; zeros here)."""
        if self.initial_file is not None:
            raise ValueError(f"state {self.input_name} starts from data_file {self.initial_file}, which a client "
                             "cannot read from the server")
        dims = self.initial_dims if self.initial_dims is not None else tuple(d if d > 0 else 1 for d in self.dims)
        return np.zeros(((1,) if batching else ()) + tuple(dims), dtype=self.dtype)


@dataclass(frozen=True)
class SequenceSpec:
    controls: tuple[Control, ...]
    states: tuple[State, ...]
    strategy: str  #: "direct" or "oldest"
    idle_s: float

    @property
    def control_names(self) -> set[str]:
        return {c.name for c in self.controls}

    def control(self, kind: str) -> Control | None:
        return next((c for c in self.controls if c.kind == kind), None)


def _control_dtype(control: dict[str, Any]) -> np.dtype:
    if control.get("int32_false_true"):
        return np.dtype(np.int32)
    if control.get("fp32_false_true"):
        return np.dtype(np.float32)
    if control.get("bool_false_true"):
        return np.dtype(np.bool_)
    data_type = control.get("data_type") or "TYPE_INVALID"
    if data_type not in _NUMPY:
        raise SequenceConfigError(
            f"control {control.get('kind')} has data_type {data_type}, which Triton does not allow")
    return np.dtype(_NUMPY[data_type])


def sequence_spec(config: dict[str, Any]) -> SequenceSpec | None:
    """The sequence batching of a model config (the JSON Triton hands python models); None without it."""
    seq = config.get("sequence_batching")
    if not seq:
        return None
    controls = []
    for entry in seq.get("control_input") or []:
        for control in entry.get("control") or []:
            kind = str(control.get("kind") or CONTROL_KINDS[0])  # protobuf JSON omits the enum's 0 (START)
            if kind not in CONTROL_KINDS:
                raise SequenceConfigError(f"control input {entry.get('name')} has kind {kind}, which the stand-in "
                                          f"does not know (it knows {', '.join(CONTROL_KINDS)})")
            values = tuple(control.get("int32_false_true") or control.get("fp32_false_true")
                           or control.get("bool_false_true") or ())
            controls.append(Control(str(entry["name"]), kind, _control_dtype(control), values))
    states = []
    for state in seq.get("state") or []:
        data_type = str(state.get("data_type"))
        if data_type not in _STATE_NUMPY:
            raise SequenceConfigError(f"state {state.get('input_name')} has data_type {data_type}, which the "
                                      "stand-in cannot hold")
        dtype = np.dtype(_STATE_NUMPY[data_type])
        initial = (state.get("initial_state") or [None])[0] or {}
        states.append(State(
            str(state["input_name"]), str(state["output_name"]), dtype, tuple(int(d) for d in state.get("dims") or []),
            tuple(int(d) for d in initial.get("dims") or []) if initial.get("zero_data") else None,
            str(initial["data_file"]) if initial.get("data_file") else None,
        ))
    strategy = "oldest" if "oldest" in seq else "direct"
    idle_us = int(seq.get("max_sequence_idle_microseconds") or DEFAULT_IDLE_US)
    return SequenceSpec(tuple(controls), tuple(states), strategy, idle_us / 1e6)


def check_against_model(spec: SequenceSpec, onnx_inputs: dict[str, tuple[np.dtype, list[Any]]],
                        onnx_outputs: set[str], batching: bool) -> None:
    """What Triton's onnxruntime backend checks when it loads a sequence model: every control and state input is
    an input of the ONNX model, boolean controls are de-batched dims ``[1]`` of the control's dtype, every state
    output is an output of the model. ``onnx_inputs``: name -> (numpy dtype, dims as ONNX declares them)."""
    problems = []
    for control in spec.controls:
        if control.name not in onnx_inputs:
            problems.append(f"control input {control.name} ({control.kind}) is not an input of the ONNX model")
            continue
        dtype, dims = onnx_inputs[control.name]
        if dtype != control.dtype:
            problems.append(f"control input {control.name} is {dtype} in the ONNX model, the config's "
                            f"{control.kind} control gives {control.dtype}")
        shown = list(dims[1:] if batching else dims)
        fixed = [d for d in shown if isinstance(d, int) and d > 0]
        if control.kind != "CONTROL_SEQUENCE_CORRID" and (len(shown) != 1 or fixed not in ([], [1])):
            problems.append(f"control input {control.name} must have dims [1] (without the batch dim) in the ONNX "
                            f"model, it has {shown}")
    for state in spec.states:
        if state.input_name not in onnx_inputs:
            problems.append(f"state input {state.input_name} is not an input of the ONNX model")
        if state.output_name not in onnx_outputs:
            problems.append(f"state output {state.output_name} is not an output of the ONNX model")
    if problems:
        raise SequenceConfigError("sequence_batching does not fit the ONNX model: " + "; ".join(problems))


@dataclass
class RequestInfo:
    """What the stand-in knows about one request of a sequence model."""

    correlation_id: int | str
    flags: int
    ready: bool = True

    @property
    def start(self) -> bool:
        return bool(self.flags & FLAG_START)

    @property
    def end(self) -> bool:
        return bool(self.flags & FLAG_END)


def request_ready(feed: dict[str, np.ndarray], spec: SequenceSpec, correlation_id: int | str) -> bool:
    """False for the null requests Triton puts in empty direct-strategy slots (READY control false, ID 0)."""
    if correlation_id in (0, ""):
        return False
    ready = spec.control("CONTROL_SEQUENCE_READY")
    if ready is not None and ready.name in feed:
        return bool(np.asarray(feed[ready.name]).reshape(-1)[0] == ready.false_true[1])
    return True


@dataclass
class _Entry:
    values: dict[str, np.ndarray]
    last_used: float


@dataclass
class SequenceStates:
    """Implicit state per correlation ID, kept by the stand-in (see the module docstring)."""

    spec: SequenceSpec
    clock: Callable[[], float] = time.monotonic
    entries: dict[int | str, _Entry] = field(default_factory=dict)

    def expire(self) -> list[int | str]:
        """Forget sequences idle for longer than Triton keeps them; returns their IDs."""
        now = self.clock()
        gone = [cid for cid, e in self.entries.items() if now - e.last_used > self.spec.idle_s]
        for cid in gone:
            del self.entries[cid]
        return gone

    def apply(self, feed: dict[str, np.ndarray], info: RequestInfo) -> dict[str, np.ndarray]:
        """The feed with each state input replaced by the sequence's state (kept as Triton supplied it on START
        and for null requests). Raises ValueError when a continuing sequence has no state here."""
        if not self.spec.states or not info.ready:
            return feed
        if info.start:  # kept now, so that a failed START leaves the initial state, as Triton would
            initial = {s.input_name: np.array(feed[s.input_name]) for s in self.spec.states if s.input_name in feed}
            self.entries[info.correlation_id] = _Entry(initial, self.clock())
            return feed
        entry = self.entries.get(info.correlation_id)
        if entry is None:
            raise ValueError(
                f"sequence {info.correlation_id!r} has no state in this model instance (its START request was not "
                "seen here, or it was idle longer than max_sequence_idle_microseconds and Triton ended it)"
            )
        entry.last_used = self.clock()
        return {**feed, **entry.values}

    def update(self, outputs: dict[str, np.ndarray], info: RequestInfo) -> None:
        """Keep the output states of a ready request for the sequence's next request; END drops them."""
        if not self.spec.states or not info.ready:
            return
        if info.end:
            self.entries.pop(info.correlation_id, None)
            return
        values = {s.input_name: np.asarray(outputs[s.output_name], dtype=s.dtype).copy() for s in self.spec.states}
        self.entries[info.correlation_id] = _Entry(values, self.clock())


def model_feed(feed: dict[str, np.ndarray], onnx_inputs: Sequence[str]) -> dict[str, np.ndarray]:
    """Only what the ONNX model takes (drops controls the model does not declare)."""
    wanted = set(onnx_inputs)
    return {k: v for k, v in feed.items() if k in wanted}
