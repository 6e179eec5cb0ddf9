"""The pipeline file (``accelserve run PIPELINE.yaml``): a typed pydantic tree, after Olive's ``RunConfig``.

Everything is validated before any work starts, and every problem is listed at once, with ``file:line`` from the
YAML node marks and "did you mean" for misspelled keys. ``--set a.b=VALUE`` overrides (the value is read as YAML).
Relative paths resolve against the config file's folder.
"""

from __future__ import annotations

import difflib
import json
import re
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from accelserve.errors import AccelserveError, InvalidInputError

SCHEMA_VERSION = 1
#: passes `candidates: auto` searches by default (each one's declared search_space), in this order
AUTO_PASSES = ["int8", "fp16", "prune-channels", "lowrank"]


class ConfigError(InvalidInputError):
    """The pipeline file is invalid; ``problems`` lists every problem found (``where: what``)."""

    def __init__(self, source: str, problems: list[str]) -> None:
        self.problems = problems
        text = f"{source}: {len(problems)} problem(s) in the pipeline config:\n" + "\n".join(f"  - {p}" for p in problems)
        super().__init__(text, hint="`accelserve run --schema` prints every key with its type and default")


class _Section(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ModelSection(_Section):
    source: str = Field(description="torch/tensorflow source as `accelserve export` takes it (MODULE:FN, file), "
                        "or an .onnx path")
    framework: Literal["torch", "tensorflow", "onnx"] | None = Field(
        None, description="default: onnx for an .onnx source, else torch")
    inputs: list[str] = Field(default_factory=list, description='input specs as --input, e.g. "x:1x1x8x8:float32"')
    opset: int | None = Field(None, ge=7, description="ONNX opset of the export (default: the exporter's)")
    files: list[str] = Field(default_factory=list, description="extra files the source reads (weights...): "
                             "their bytes are part of the export's cache key")

    @property
    def resolved_framework(self) -> str:
        if self.framework:
            return self.framework
        return "onnx" if self.source.endswith(".onnx") else "torch"


class DataSection(_Section):
    calibration: str = Field(description="calibration data as --calib: .npz, a directory of .npy, or MODULE:FN")
    evaluation: str = Field(description="held-out inputs (same forms as calibration)")
    labels: str | None = Field(None, description="labels (.npy/.npz) aligned with the evaluation samples")
    metric: str | None = Field(None, description="MODULE:FN (outputs, labels) -> float, higher is better; "
                               "default top-1 accuracy")
    calibration_count: int | None = Field(None, ge=1, description="use at most this many calibration feeds")


class SearchSection(_Section):
    candidates: Literal["auto"] | list[str] = Field(
        "auto", description='"auto" (from the passes\' search spaces) or recipes such as "simplify,int8", '
        '"simplify,prune-channels(ratio=0.5),int8"')
    max_accuracy_drop: float = Field(1.0, ge=0, description="points of the metric vs the exported FP32 model")
    objective: Literal["throughput", "latency"] = "throughput"
    batch_size: int = Field(1, ge=1, description="batch size the objective is measured at")
    budget_minutes: float = Field(30.0, gt=0, description="start no new candidate after this (report what was tried)")
    passes: list[str] = Field(default_factory=lambda: list(AUTO_PASSES),
                              description="auto: the passes searched (simplify always runs first)")
    space: dict[str, dict[str, list[Any]]] = Field(
        default_factory=dict, description="auto: per-pass search space overriding the declared one, "
        "e.g. {prune-channels: {ratio: [0.25, 0.5]}}")
    sweep: Literal["axes", "product"] = Field(
        "axes", description="auto: vary one search-space key at a time (axes) or take the Cartesian product")
    stack: bool = Field(True, description="auto: also try each qualifying structural candidate (pruning, low-rank) "
                        "followed by the best qualifying quantization")
    min_accuracy: float | None = Field(None, description="absolute gate on the winner's metric (0..1 for accuracy)")
    min_speedup: float | None = Field(None, gt=0, description="gate: the winner's objective vs FP32 at batch_size")
    fallback: bool = Field(True, description="when no candidate qualifies, ship the FP32 model if it meets every gate")
    timing_seconds: float = Field(5.0, gt=0, description="latency measurement time per model (interleaved)")
    threads: int | None = Field(None, ge=1, description="ONNX Runtime threads for timing (default: the harness's)")
    verify_lossless: bool = Field(True, description="candidates of lossless passes only (simplify) must match FP32 "
                                  "within tolerance")


class RepositorySection(_Section):
    path: str
    name: str
    max_batch_size: int | None = Field(None, ge=0)
    dynamic_batching: bool | None = None
    instances: int = Field(1, ge=1)


class LoadtestSection(_Section):
    concurrency: list[int] = Field(default_factory=lambda: [1])
    duration: int = Field(10, ge=1, description="seconds measured per concurrency step")
    warmup: float = Field(2.0, ge=0)
    batch_size: int = Field(1, ge=1, description="batch size of each request")
    slo: list[str] = Field(default_factory=list, description='e.g. ["p99_ms<=50", "throughput>=200"]')
    max_error_rate: float = Field(0.0, ge=0, le=1)
    baseline: str | None = Field(None, description="a previous pipeline report or `loadtest --json` result")
    max_regression: str = "10%"
    protocol: Literal["http", "grpc"] = "http"
    cache: bool = Field(True, description="reuse the load test of an identical winner, config and server")

    @field_validator("concurrency")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if not v or any(c < 1 for c in v):
            raise ValueError("needs one or more concurrencies >= 1")
        return v


class PipelineConfig(_Section):
    model: ModelSection
    data: DataSection
    search: SearchSection = Field(default_factory=SearchSection)
    repository: RepositorySection
    loadtest: LoadtestSection | None = None

    #: set by load_config: the config file's folder (relative paths resolve against it) and the file itself
    _base_dir: Path = Path(".")
    _source: str = "<config>"

    @property
    def base_dir(self) -> Path:
        return self._base_dir

    @property
    def source(self) -> str:
        return self._source

    def path(self, value: str) -> Path:
        """A path of the config, resolved against the config file's folder."""
        p = Path(value).expanduser()
        return p if p.is_absolute() else (self._base_dir / p)

    def echo(self) -> dict[str, Any]:
        return self.model_dump(mode="json")


def json_schema() -> str:
    return json.dumps(PipelineConfig.model_json_schema(), indent=2)


# --------------------------------------------------------------------------------------------------------------
# YAML with line marks


def _compose(text: str, source: str) -> tuple[Any, dict[tuple[str, ...], int], list[str]]:
    """Parse YAML; return the data, {key path: line} and duplicate-key problems."""
    import yaml

    try:
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{source}:{mark.line + 1}" if mark is not None else source
        raise ConfigError(source, [f"{where}: not valid YAML: {getattr(exc, 'problem', None) or exc}"]) from None
    lines: dict[tuple[str, ...], int] = {}
    problems: list[str] = []

    def walk(n: Any, path: tuple[str, ...]) -> None:
        lines.setdefault(path, n.start_mark.line + 1)
        if isinstance(n, yaml.MappingNode):
            seen: set[str] = set()
            for k, v in n.value:
                key = str(k.value)
                if key in seen:
                    problems.append(f"{source}:{k.start_mark.line + 1}: {'.'.join(path + (key,))}: duplicate key")
                seen.add(key)
                lines[path + (key,)] = k.start_mark.line + 1
                walk(v, path + (key,))
        elif isinstance(n, yaml.SequenceNode):
            for i, v in enumerate(n.value):
                walk(v, path + (str(i),))

    if node is not None:
        walk(node, ())
    data = yaml.safe_load(text)
    return data, lines, problems


def parse_set(items: list[str] | None) -> list[tuple[list[str], Any]]:
    """``["search.max_accuracy_drop=1.0"]`` -> ``[(["search", "max_accuracy_drop"], 1.0)]`` (values read as YAML)."""
    import yaml

    out = []
    for item in items or []:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not re.fullmatch(r"[A-Za-z0-9_.\-]+", key.strip()):
            raise InvalidInputError(f"--set '{item}' is not KEY=VALUE", hint="e.g. --set search.max_accuracy_drop=1.0")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        out.append((key.strip().split("."), value))
    return out


def _apply_set(data: dict[str, Any], overrides: list[tuple[list[str], Any]]) -> None:
    for keys, value in overrides:
        node = data
        for k in keys[:-1]:
            if not isinstance(node.get(k), dict):
                node[k] = {}
            node = node[k]
        node[keys[-1]] = value


def _fields_at(loc: tuple[Any, ...]) -> list[str]:
    """Field names of the pydantic model at ``loc`` (for did-you-mean)."""
    model: Any = PipelineConfig
    for part in loc:
        field = model.model_fields.get(str(part)) if isinstance(model, type) and issubclass(model, BaseModel) else None
        if field is None:
            return []
        ann = field.annotation
        cands = [a for a in getattr(ann, "__args__", ()) if isinstance(a, type) and issubclass(a, BaseModel)]
        model = cands[0] if cands else ann
    return list(model.model_fields) if isinstance(model, type) and issubclass(model, BaseModel) else []


def _describe(err: dict[str, Any], source: str, lines: dict[tuple[str, ...], int], set_keys: set[str]) -> str:
    loc = tuple(str(p) for p in err["loc"])
    dotted = ".".join(loc)
    if dotted in set_keys:
        where = "--set"
    else:
        probe = loc
        while probe and probe not in lines:
            probe = probe[:-1]
        where = f"{source}:{lines[probe]}" if probe in lines else source
    if err["type"] == "extra_forbidden":
        known = _fields_at(loc[:-1])
        close = difflib.get_close_matches(loc[-1], known, n=1, cutoff=0.6)
        msg = f"unknown key '{loc[-1]}'" + (f" (did you mean '{close[0]}'?)" if close else "")
        if known:
            msg += f"; keys here: {', '.join(known)}"
        return f"{where}: {dotted}: {msg}"
    if err["type"] == "missing":
        return f"{where}: {dotted}: required key missing"
    return f"{where}: {dotted}: {err['msg']} (got {err.get('input')!r})"


def load_config(path_or_data: str | Path | dict[str, Any], overrides: list[str] | None = None,
                *, base_dir: str | Path | None = None) -> PipelineConfig:
    """Read, override, validate. Raises :class:`ConfigError` listing every problem (schema and references)."""
    lines: dict[tuple[str, ...], int] = {}
    problems: list[str] = []
    if isinstance(path_or_data, dict):
        data, source = json.loads(json.dumps(path_or_data)), "<dict>"
        base = Path(base_dir) if base_dir else Path.cwd()
    else:
        path = Path(path_or_data)
        source = str(path)
        if not path.is_file():
            raise InvalidInputError(f"pipeline config {path} does not exist" if not path.exists()
                                    else f"pipeline config {path} is not a file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise InvalidInputError(f"cannot read pipeline config {path}: {exc}") from None
        data, lines, problems = _compose(text, source)
        base = Path(base_dir) if base_dir else path.resolve().parent
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(source, [f"{source}:1: the top level must be a mapping of sections "
                                   "(model, data, search, repository, loadtest)"])
    parsed = parse_set(overrides)
    _apply_set(data, parsed)
    set_keys = {".".join(k) for k, _ in parsed}
    try:
        config = PipelineConfig.model_validate(data)
    except ValidationError as exc:
        problems += [_describe(e, source, lines, set_keys) for e in exc.errors()]
        problems += _raw_file_problems(data, base, source, lines)  # so one run lists missing files too
        raise ConfigError(source, problems) from None
    config._base_dir = base
    config._source = source
    problems += check_references(config, lines)
    if problems:
        raise ConfigError(source, problems)
    return config


#: keys naming files that must exist (checked on the raw data too, when the schema check already failed)
_FILE_KEYS = (("data", "calibration"), ("data", "evaluation"), ("data", "labels"), ("loadtest", "baseline"))


def _raw_file_problems(data: dict[str, Any], base: Path, source: str, lines: dict[tuple[str, ...], int]) -> list[str]:
    out = []
    for key in _FILE_KEYS:
        section = data.get(key[0])
        value = section.get(key[1]) if isinstance(section, dict) else None
        part = path_part(value) if isinstance(value, str) else None
        if part is not None:
            p = Path(part).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.exists():
                where = f"{source}:{lines[key]}" if key in lines else source
                out.append(f"{where}: {'.'.join(key)}: {p} does not exist")
    return out


def _is_path_like(text: str) -> bool:
    """``data.npz`` / ``dir/`` are paths; ``pkg.mod:fn`` is an import (a ``file.py:fn`` has a path part)."""
    head = text.split(":", 1)[0] if ":" in text and not re.match(r"^[A-Za-z]:[\\/]", text) else text
    return ":" not in text or head.endswith(".py")


def path_part(text: str) -> str | None:
    """The file part of a path-like spec (``file.py:fn`` -> ``file.py``), None for ``module:fn``."""
    if not _is_path_like(text):
        return None
    return text.split(":", 1)[0] if ":" in text else text


def check_references(config: PipelineConfig, lines: dict[tuple[str, ...], int]) -> list[str]:
    """Problems that need more than the schema: files that must exist, passes, recipes, SLO expressions."""
    from accelserve.loadtest.gates import Slo, parse_regression
    from accelserve.pipeline.search import parse_candidates

    problems: list[str] = []

    def at(*key: str) -> str:
        line = lines.get(key)
        while line is None and key:
            key = key[:-1]
            line = lines.get(key)
        return f"{config.source}:{line}" if line else config.source

    def need_file(value: str | None, *key: str) -> None:
        if value is None:
            return
        part = path_part(value)
        if part is not None and not config.path(part).exists():
            problems.append(f"{at(*key)}: {'.'.join(key)}: {config.path(part)} does not exist")

    m = config.model
    if m.resolved_framework == "onnx" or path_part(m.source):
        need_file(m.source, "model", "source")
    if m.resolved_framework != "onnx" and not m.inputs and m.resolved_framework == "torch":
        problems.append(f"{at('model')}: model.inputs: a torch source needs input specs, e.g. [\"x:1x1x8x8:float32\"]")
    for i, f in enumerate(m.files):
        need_file(f, "model", "files", str(i))
    for key in ("calibration", "evaluation", "labels"):
        need_file(getattr(config.data, key), "data", key)
    if config.data.labels is None and config.data.metric is None:
        problems.append(f"{at('data')}: data.labels: accuracy needs labels (or data.metric: MODULE:FN)")
    try:
        parse_candidates(config.search)
    except AccelserveError as exc:
        problems.append(f"{at('search', 'candidates')}: search.candidates: {exc.message}")
    try:
        from accelserve.triton.naming import check_model_name

        check_model_name(config.repository.name)
    except InvalidInputError as exc:
        problems.append(f"{at('repository', 'name')}: repository.name: {exc.message}")
    rp = config.path(config.repository.path)
    if rp.exists() and not rp.is_dir():
        problems.append(f"{at('repository', 'path')}: repository.path: {rp} is not a directory")
    lt = config.loadtest
    if lt is not None:
        for i, text in enumerate(lt.slo):
            try:
                Slo.parse(text)
            except InvalidInputError as exc:
                problems.append(f"{at('loadtest', 'slo', str(i))}: loadtest.slo: {exc.message}")
        try:
            parse_regression(lt.max_regression)
        except InvalidInputError as exc:
            problems.append(f"{at('loadtest', 'max_regression')}: loadtest.max_regression: {exc.message}")
        need_file(lt.baseline, "loadtest", "baseline")
        mbs = config.repository.max_batch_size
        if mbs is not None and lt.batch_size > max(mbs, 1):
            problems.append(f"{at('loadtest', 'batch_size')}: loadtest.batch_size {lt.batch_size} exceeds "
                            f"repository.max_batch_size {mbs}")
    return problems
