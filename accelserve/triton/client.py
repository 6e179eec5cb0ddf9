"""A small Triton client over tritonclient (HTTP or gRPC): model index, metadata, inference, statistics.

Used by ``accelserve infer``, the end-to-end tests and the load tester. URLs may carry a scheme:
``http://host:8000`` and ``grpc://host:8001`` pick the protocol; a bare ``host:port`` uses ``protocol``.
Failures are ServerErrors that say what to do: an unreachable server fails within ``timeout`` seconds, an unknown
model lists the models that are loaded.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from accelserve.errors import InvalidInputError, ServerError
from accelserve.specs import random_array

PROTOCOLS = ("http", "grpc")


@dataclass(frozen=True)
class ModelStatus:
    """One entry of the repository index."""

    name: str
    version: str
    state: str
    reason: str = ""

    def to_dict(self) -> dict[str, str]:
        return asdict(self)


@dataclass(frozen=True)
class TensorMeta:
    name: str
    datatype: str  #: wire datatype ("FP32", "BYTES", ...)
    shape: tuple[int, ...]  #: -1 for a dynamic dim; includes the batch dim when the model batches

    @property
    def dtype(self) -> np.dtype:
        from tritonclient.utils import triton_to_np_dtype

        dtype = triton_to_np_dtype(self.datatype)
        if dtype is None:
            raise InvalidInputError(f"tensor {self.name} has datatype {self.datatype}, which numpy cannot hold")
        return np.dtype(dtype)


@dataclass(frozen=True)
class ModelInfo:
    name: str
    platform: str
    max_batch_size: int
    inputs: tuple[TensorMeta, ...]
    outputs: tuple[TensorMeta, ...]
    #: the model's config as the server reports it (JSON; snake_case keys)
    config: dict[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def sequence(self) -> Any:
        """The model's sequence batching (controls, states), or None for a model without it."""
        from accelserve.triton.python_model.sequences import sequence_spec

        return sequence_spec(self.config)

    @property
    def max_shapes(self) -> dict[str, list[int]]:
        """Known upper bounds of input dims (config parameter ``accelserve_max_shape``; config dims, no batch)."""
        from accelserve.triton.python_model.model import max_shapes

        try:
            return max_shapes(self.config)
        except ValueError:
            return {}


def parse_url(url: str, protocol: str | None = None) -> tuple[str, str]:
    """``(protocol, host:port)`` from ``http://h:p``, ``grpc://h:p`` or ``h:p`` (then ``protocol``, default http)."""
    match = re.match(r"^(\w+)://(.*)$", url.strip())
    scheme, address = (match.group(1).lower(), match.group(2)) if match else (None, url.strip())
    address = address.rstrip("/")
    if scheme == "https":
        raise InvalidInputError(f"{url}: TLS is not supported by accelserve's client", hint="use http:// or grpc://")
    if scheme is not None and scheme not in PROTOCOLS:
        raise InvalidInputError(f"{url}: unknown scheme '{scheme}'", hint="use http://HOST:PORT or grpc://HOST:PORT")
    if scheme and protocol and scheme != protocol:
        raise InvalidInputError(f"{url} is a {scheme} URL but --protocol {protocol} was given")
    chosen = scheme or protocol or "http"
    if chosen not in PROTOCOLS:
        raise InvalidInputError(f"unknown protocol '{chosen}'", hint="use http or grpc")
    if not re.match(r"^[^/\s]+:\d+$", address):
        raise InvalidInputError(
            f"'{url}' is not HOST:PORT", hint="for example http://127.0.0.1:8000 or grpc://127.0.0.1:8001"
        )
    return chosen, address


class TritonClient:
    """One connection to a Triton server. Not shared between threads with HTTP (tritonclient.http is gevent-based);
    make one client per thread."""

    def __init__(self, url: str, protocol: str | None = None, *, timeout: float = 5.0,
                 infer_timeout: float = 60.0) -> None:
        self.protocol, self.address = parse_url(url, protocol)
        self.url = f"{self.protocol}://{self.address}"
        self.timeout = timeout
        self.infer_timeout = infer_timeout
        if self.protocol == "http":
            import tritonclient.http as tc

            self._client = tc.InferenceServerClient(
                self.address, connection_timeout=timeout, network_timeout=max(timeout, infer_timeout)
            )
        else:
            import tritonclient.grpc as tc

            self._client = tc.InferenceServerClient(self.address)
        self._tc = tc
        self._live_checked = False

    def __enter__(self) -> TritonClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        self._client.close()

    def _call(self, what: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        from tritonclient.utils import InferenceServerException

        if self.protocol == "grpc":
            kwargs.setdefault("client_timeout", self.timeout)
        try:
            return fn(*args, **kwargs)
        except InferenceServerException as exc:
            raise ServerError(f"{what} failed at {self.url}: {exc.message() or exc}") from exc
        except (OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc

    def _unreachable(self, exc: BaseException) -> ServerError:
        return ServerError(
            f"cannot reach a Triton server at {self.url} ({type(exc).__name__}: {exc})",
            hint="start one with `accelserve serve REPO`, and check host, port and --protocol "
            "(HTTP defaults to port 8000, gRPC to 8001)",
        )

    def check_live(self) -> None:
        """Raise a ServerError within ``timeout`` seconds when the server is not reachable or not live."""
        from tritonclient.utils import InferenceServerException

        kwargs = {"client_timeout": self.timeout} if self.protocol == "grpc" else {}
        try:
            live = self._client.is_server_live(**kwargs)
        except (InferenceServerException, OSError, TimeoutError) as exc:
            raise self._unreachable(exc) from exc
        if not live:
            raise ServerError(
                f"{self.url} answered, but not as a live Triton server (its health check /v2/health/live failed)",
                hint="check the address and port: is something else listening there, or is Triton shutting down?",
            )
        self._live_checked = True

    def _ensure_live(self) -> None:
        if not self._live_checked:
            self.check_live()

    # ------------------------------------------------------------------------------------------------- queries
    def models(self) -> list[ModelStatus]:
        """The repository index (every model the server knows, with its state)."""
        self._ensure_live()
        if self.protocol == "http":
            entries = self._call("listing models", self._client.get_model_repository_index)
        else:
            entries = self._call("listing models", self._client.get_model_repository_index, as_json=True)
            entries = entries.get("models", [])
        return [
            ModelStatus(str(e.get("name", "")), str(e.get("version", "")), str(e.get("state", "")),
                        str(e.get("reason", "")))
            for e in entries
        ]

    def ready_models(self) -> list[str]:
        return sorted({m.name for m in self.models() if m.state == "READY"})

    def _require_model(self, model: str) -> None:
        ready = self.ready_models()
        if model not in ready:
            known = {m.name: m for m in self.models()}
            why = f" (state {known[model].state}: {known[model].reason})" if model in known else ""
            raise ServerError(
                f"model '{model}' is not loaded on {self.url}{why}{_did_you_mean(model, known)}; loaded models: "
                f"{', '.join(ready) or 'none'}",
                hint="check the model name (it is the directory name in the repository); a model the server knows "
                "but has not loaded can be loaded with `serve --model-control explicit --load-model NAME`",
            )

    def model_info(self, model: str) -> ModelInfo:
        """Inputs, outputs and max_batch_size of a loaded model (an unknown model lists the loaded ones)."""
        self._require_model(model)
        if self.protocol == "http":
            meta = self._call("reading model metadata", self._client.get_model_metadata, model)
            config = self._call("reading model config", self._client.get_model_config, model)
        else:
            meta = self._call("reading model metadata", self._client.get_model_metadata, model, as_json=True)
            config = self._call("reading model config", self._client.get_model_config, model, as_json=True)
            config = config.get("config", config)

        def tensors(key: str) -> tuple[TensorMeta, ...]:
            return tuple(
                TensorMeta(t["name"], t["datatype"], tuple(int(d) for d in t.get("shape", [])))
                for t in meta.get(key, [])
            )

        return ModelInfo(
            name=model,
            platform=str(meta.get("platform", "")),
            max_batch_size=int(config.get("max_batch_size", 0) or 0),
            inputs=tensors("inputs"),
            outputs=tensors("outputs"),
            config=dict(config),
        )

    def infer(self, model: str, inputs: dict[str, np.ndarray], outputs: list[str] | None = None,
              *, version: str = "", sequence_id: int | str = 0, sequence_start: bool = False,
              sequence_end: bool = False) -> dict[str, np.ndarray]:
        """Run one request; returns every output (or ``outputs``) as numpy arrays. Text arrays (numpy ``str_`` or
        ``bytes_``) go as BYTES tensors of UTF-8. ``sequence_id`` (with the START/END flags) sends the request as
        part of a sequence, for models with sequence batching."""
        from tritonclient.utils import np_to_triton_dtype

        self._ensure_live()
        request = []
        for name, array in inputs.items():
            array = np.ascontiguousarray(as_bytes_tensor(array))
            tensor = self._tc.InferInput(name, list(array.shape), np_to_triton_dtype(array.dtype))
            tensor.set_data_from_numpy(array)
            request.append(tensor)
        requested = [self._tc.InferRequestedOutput(n) for n in outputs] if outputs else None
        kwargs: dict[str, Any] = {"model_version": version, "outputs": requested}
        if sequence_id:
            kwargs.update(sequence_id=sequence_id, sequence_start=sequence_start, sequence_end=sequence_end)
        if self.protocol == "grpc":
            kwargs["client_timeout"] = self.infer_timeout
        result = self._call(f"inference on model '{model}'", self._client.infer, model, request, **kwargs)
        response = result.get_response(as_json=True) if self.protocol == "grpc" else result.get_response()
        names = outputs or [o["name"] for o in response.get("outputs", [])]
        return {name: result.as_numpy(name) for name in names}

    def statistics(self, model: str = "") -> dict[str, Any]:
        """Triton's inference statistics (``model_stats``: per model ``inference_count``, ``execution_count``,
        ``inference_stats`` ...). With gRPC, int64 counters arrive as strings; they are converted to ints."""
        self._ensure_live()
        if self.protocol == "http":
            return self._call("reading statistics", self._client.get_inference_statistics, model)
        stats = self._call("reading statistics", self._client.get_inference_statistics, model, as_json=True)
        return _ints(stats)


def as_bytes_tensor(array: np.ndarray) -> np.ndarray:
    """Text arrays as Triton BYTES tensors (object arrays of bytes): numpy ``str_`` elements are UTF-8 encoded,
    ``bytes_`` kept; any other array is returned as it is. (tritonclient cannot send a numpy unicode array.)"""
    array = np.asarray(array)
    if array.dtype.kind == "U":
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = [s.encode("utf-8") for s in array.reshape(-1).tolist()]
        return out
    if array.dtype.kind == "S":
        out = np.empty(array.shape, dtype=object)
        out.reshape(-1)[:] = array.reshape(-1).tolist()
        return out
    return array


def _did_you_mean(model: str, known: Iterable[str]) -> str:
    """" (did you mean 'x'?)" for the closest model name the server knows (case-insensitive), else ""."""
    import difflib

    names = {n.lower(): n for n in known if n != model}
    close = difflib.get_close_matches(model.lower(), list(names), n=1, cutoff=0.6)
    return f" (did you mean '{names[close[0]]}'?)" if close else ""


def _ints(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _ints(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_ints(v) for v in value]
    if isinstance(value, str) and re.fullmatch(r"-?\d+", value):
        return int(value)
    return value


# ------------------------------------------------------------------------------------------------ request data


def parse_shape_overrides(items: list[str] | None) -> dict[str, tuple[int, ...]]:
    """``["x=4x16", "mask=4,16"]`` -> ``{"x": (4, 16), ...}``: full shapes as sent, batch dim included."""
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items or []:
        name, sep, dims = item.partition("=")
        try:
            shape = tuple(int(d) for d in re.split(r"[x,]", dims) if d.strip())
        except ValueError:
            shape = ()
        if not sep or not name or not shape or any(d <= 0 for d in shape):
            raise InvalidInputError(
                f"--shape '{item}' is not NAME=DIMS with positive dims", hint="e.g. --shape x=1x3x224x224"
            )
        shapes[name] = shape
    return shapes


def _fits(shape: tuple[int, ...], model_shape: tuple[int, ...]) -> bool:
    """``shape`` is a concrete instance of ``model_shape`` (-1 = any size)."""
    return len(shape) == len(model_shape) and all(m in (-1, s) for m, s in zip(model_shape, shape, strict=True))


def request_shape(
    tensor: TensorMeta, info: ModelInfo, batch: int, overrides: dict[str, tuple[int, ...]]
) -> tuple[int, ...]:
    """The concrete shape to send for ``tensor``: ``overrides`` win, the batch dim is ``batch``, other dynamic
    dims must be given."""
    if tensor.name in overrides:
        shape = overrides[tensor.name]
        if not _fits(shape, tensor.shape):
            raise InvalidInputError(
                f"--shape {tensor.name}={'x'.join(map(str, shape))} does not fit the model's shape "
                f"{list(tensor.shape)} (-1 = dynamic; the batch dim is included)"
            )
        return shape
    dims = list(tensor.shape)
    if info.max_batch_size > 0 and dims:
        if batch > info.max_batch_size:
            raise InvalidInputError(f"--batch {batch} exceeds the model's max_batch_size {info.max_batch_size}")
        dims[0] = batch
    dynamic = [i for i, d in enumerate(dims) if d < 0]
    if dynamic:
        raise InvalidInputError(
            f"input {tensor.name} has dynamic dim(s) {dynamic} in shape {list(tensor.shape)}",
            hint=f"give its full shape with --shape {tensor.name}=" + "x".join(str(d if d > 0 else 'N') for d in dims),
        )
    return tuple(dims)


#: characters of random strings (printable ASCII letters and digits, as perf_analyzer's random strings)
STRING_ALPHABET = np.array(list("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789"))


def random_strings(rng: np.random.Generator, shape: tuple[int, ...], length: int = 16,
                   fixed: str | None = None) -> np.ndarray:
    """A BYTES tensor (object array of bytes): random strings of ``length`` characters, or ``fixed`` everywhere."""
    if length < 0:
        raise InvalidInputError(f"--string-length must be >= 0, got {length}")
    out = np.empty(shape, dtype=object)
    flat = out.reshape(-1)
    if fixed is not None:
        flat[:] = [fixed.encode("utf-8")] * flat.size
    else:
        chars = rng.choice(STRING_ALPHABET, size=(flat.size, length))
        flat[:] = ["".join(row).encode("ascii") for row in chars]
    return out


def random_inputs(info: ModelInfo, *, batch: int = 1, shapes: dict[str, tuple[int, ...]] | None = None,
                  seed: int = 0, ranges: dict[str | None, tuple[float, float]] | None = None,
                  string_length: int = 16, string_data: str | None = None) -> dict[str, np.ndarray]:
    """Random data for every input of ``info`` (floats in [-1, 1), integers in [0, 100), booleans, unless
    ``ranges`` gives ``(low, high)`` by input name, or under ``None`` for every input; BYTES inputs get random
    strings of ``string_length`` characters, or ``string_data`` in every element)."""
    ranges = ranges or {}
    names = [t.name for t in info.inputs]
    unknown = sorted(k for k in ranges if k is not None and k not in names)
    if unknown:
        raise InvalidInputError(f"--range names {unknown}, but model {info.name} has inputs {names}")
    rng = np.random.default_rng(seed)
    feeds = {}
    for tensor in info.inputs:
        shape = request_shape(tensor, info, batch, shapes or {})
        if tensor.datatype == "BYTES":
            feeds[tensor.name] = random_strings(rng, shape, string_length, string_data)
        else:
            low, high = ranges.get(tensor.name, ranges.get(None, (None, None)))
            feeds[tensor.name] = random_array(rng, shape, tensor.dtype, low, high)
    return feeds


def check_max_shapes(info: ModelInfo, feeds: dict[str, np.ndarray]) -> None:
    """A user error when an input exceeds a bound the model's config records (``accelserve_max_shape``)."""
    from accelserve.triton.python_model.model import check_max_shape

    try:
        check_max_shape(feeds, info.max_shapes, info.max_batch_size > 0)
    except ValueError as exc:
        raise InvalidInputError(f"model {info.name}: {exc}",
                                hint="send a smaller input; the server would refuse this request") from exc


def split_requests(feeds: dict[str, np.ndarray], info: ModelInfo, batch: int | None = None
                   ) -> list[dict[str, np.ndarray]]:
    """Cut sample arrays (first dim = samples) into requests of ``batch`` samples (the last may be smaller);
    ``batch=None``: one request when the samples fit the model's ``max_batch_size``, else requests of that size.
    A model that does not batch (``max_batch_size`` 0) gets the arrays as one request."""
    if info.max_batch_size == 0:
        if batch not in (None, 1):
            raise InvalidInputError(f"model {info.name} does not batch (max_batch_size 0): --batch {batch} cannot "
                                    "be sent; its --data arrays are sent as one request")
        return [feeds]
    samples = {int(a.shape[0]) for a in feeds.values() if a.ndim}
    if len(samples) != 1:
        raise InvalidInputError(f"the --data arrays hold different numbers of samples along the batch dim: "
                                f"{ {k: a.shape[0] if a.ndim else None for k, a in feeds.items()} }")
    n = samples.pop()
    if n == 0:
        raise InvalidInputError("the --data arrays hold no samples (first dim 0)")
    size = batch if batch is not None else min(n, info.max_batch_size)
    if size > info.max_batch_size:
        raise InvalidInputError(f"--batch {size} exceeds the max_batch_size {info.max_batch_size} of model "
                                f"{info.name}", hint=f"use --batch {info.max_batch_size} or less")
    return [{k: np.ascontiguousarray(a[i:i + size]) for k, a in feeds.items()} for i in range(0, n, size)]


def load_inputs(path: str | Path, info: ModelInfo) -> dict[str, np.ndarray]:
    """Inputs from an ``.npz`` file whose keys are the model's input names, cast to the model's dtypes."""
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"--data {p}: no such file")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: data[k] for k in data.files}
    except Exception as exc:  # zipfile/ValueError on anything that is not an npz
        raise InvalidInputError(f"--data {p} is not a readable .npz file: {exc}") from exc
    wanted = [t.name for t in info.inputs]
    missing = [n for n in wanted if n not in arrays]
    extra = sorted(set(arrays) - set(wanted))
    if missing or extra:
        raise InvalidInputError(
            f"--data {p} has arrays {sorted(arrays)}, but model {info.name} takes inputs {wanted}"
            + (f" (missing: {missing})" if missing else "") + (f" (unknown: {extra})" if extra else ""),
            hint="save one array per input: np.savez(path, **{input_name: array})",
        )
    feeds = {}
    for tensor in info.inputs:
        arr = arrays[tensor.name]
        if not _fits(arr.shape, tensor.shape):
            raise InvalidInputError(
                f"array {tensor.name} in {p} has shape {list(arr.shape)}, the model expects {list(tensor.shape)} "
                "(-1 = dynamic; the batch dim is included)"
            )
        if tensor.datatype == "BYTES":
            if arr.dtype.kind not in "USO":
                raise InvalidInputError(f"array {tensor.name} in {p} is {arr.dtype}; input {tensor.name} is BYTES "
                                        "(save text: a numpy str or bytes array)")
            arr = as_bytes_tensor(arr)
        elif arr.dtype != tensor.dtype:
            if not np.can_cast(arr.dtype, tensor.dtype, casting="same_kind"):
                raise InvalidInputError(f"array {tensor.name} in {p} is {arr.dtype}, the model expects {tensor.dtype}")
            arr = arr.astype(tensor.dtype)
        feeds[tensor.name] = arr
    return feeds


def summarize(name: str, array: np.ndarray, values: int = 6) -> str:
    """``name  shape  dtype  first values  min/max/mean/std`` on one line."""
    flat = array.reshape(-1)
    head = ", ".join(f"{v:.6g}" if isinstance(v, (float, np.floating)) else str(v) for v in flat[:values].tolist())
    more = ", ..." if flat.size > values else ""
    stats = ""
    if flat.size and (np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_):
        f = flat.astype(np.float64)
        stats = f"  min={f.min():.6g} max={f.max():.6g} mean={f.mean():.6g} std={f.std():.6g}"
    shape = "x".join(map(str, array.shape)) or "scalar"
    return f"{name}  shape={shape} dtype={array.dtype}  [{head}{more}]{stats}"
