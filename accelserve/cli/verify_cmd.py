"""``accelserve verify MODEL.onnx``: compare ONNX Runtime's outputs with a reference.

References: the source model in its framework (``--torch SOURCE``, or ``--framework NAME --source SOURCE`` for any
exporter plugin), expected outputs (``--expected OUT.npz``, one per ``--data FEEDS.npz``), or another ONNX model
(``--reference-onnx OTHER.onnx``). Inputs come from ``--data`` files and/or random data (``--random N``) shaped by
``--input`` specs, or by the model's own input shapes when ``--input`` is not given.
"""

from __future__ import annotations

import argparse
import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np

from accelserve import plugins
from accelserve.errors import InvalidInputError, VerificationError
from accelserve.exporters.base import ExportOptions
from accelserve.onnx_io import load_onnx
from accelserve.specs import InputSpec, check_feed, input_specs_from_onnx, random_feeds, sample_feed
from accelserve.verify import DEFAULT_TOLERANCES, VerificationReport, tolerance_for, verify

Feeds = dict[str, np.ndarray]


# --------------------------------------------------------------------------------------------------------------
# options shared with `export`


def add_input_args(p: argparse.ArgumentParser, *, required_help: str = "") -> None:
    p.add_argument("--input", "-i", dest="inputs", action="append", default=[], metavar="NAME:SHAPE[:DTYPE]",
                   help="an input, e.g. x:1x3x224x224:float32 or ids:1xseq=16:int64; the first dim is the dynamic "
                   "batch, -1 or a name (seq, seq=16 for a sample size of 16) makes a dim dynamic; repeat per input"
                   + required_help)
    p.add_argument("--value-range", action="append", default=[], metavar="NAME=LOW:HIGH",
                   help="range of random values for an input (integers: LOW <= v < HIGH), e.g. ids=0:30522")
    p.add_argument("--seed", type=int, default=0, help="seed for random inputs (default 0)")


def add_tolerance_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--precision", default="fp32", choices=sorted(DEFAULT_TOLERANCES),
                   help="precision of the model under test; selects default tolerances (default fp32)")
    p.add_argument("--runtime", default="onnxruntime",
                   help="runtime that runs the model under test (an accelserve.runtimes plugin: onnxruntime, "
                   "onnxruntime-cuda, onnxruntime-tensorrt, tensorrt; default %(default)s)")
    p.add_argument("--atol", type=float, help="absolute tolerance (default: the precision's)")
    p.add_argument("--rtol", type=float, help="relative tolerance (default: the precision's)")
    p.add_argument("--min-cosine", type=float, help="minimum cosine similarity per output (default: the precision's)")


def parse_specs(texts: Sequence[str], ranges: Sequence[str], *, dynamic_batch: bool = True) -> list[InputSpec]:
    specs = [InputSpec.parse(t, dynamic_batch=dynamic_batch) for t in texts]
    return apply_value_ranges(specs, ranges)


def apply_value_ranges(specs: list[InputSpec], ranges: Sequence[str]) -> list[InputSpec]:
    by_name = {s.name: s for s in specs}
    for text in ranges:
        name, sep, span = text.partition("=")
        low_text, sep2, high_text = span.partition(":")
        try:
            low, high = float(low_text), float(high_text)
        except ValueError:
            low = high = None
        if not sep or not sep2 or low is None or high is None or not low < high:
            raise InvalidInputError(f"--value-range '{text}' is not NAME=LOW:HIGH with LOW < HIGH")
        if name not in by_name:
            raise InvalidInputError(f"--value-range names unknown input '{name}'; inputs: {', '.join(by_name)}")
        by_name[name] = replace(by_name[name], low=low, high=high)
    return [by_name[s.name] for s in specs]


def load_npz(path: str | Path, what: str) -> Feeds:
    p = Path(path)
    if not p.is_file():
        raise InvalidInputError(f"{what} file {p} does not exist")
    try:
        with np.load(p, allow_pickle=False) as data:
            arrays = {k: np.asarray(data[k]) for k in data.files}
    except ValueError as exc:
        raise InvalidInputError(f"{what} file {p} holds Python objects, which are not loaded: {exc}") from exc
    except Exception as exc:
        raise InvalidInputError(f"{what} file {p} is not a readable .npz: {type(exc).__name__}: {exc}") from exc
    if not arrays:
        raise InvalidInputError(f"{what} file {p} holds no arrays")
    return arrays


# --------------------------------------------------------------------------------------------------------------
# verify


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("verify", help="compare an ONNX model's outputs with its source model, expected outputs "
                       "or another ONNX model", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("model", type=Path, help="the ONNX model to check")
    ref = p.add_argument_group("reference (exactly one)")
    ref.add_argument("--torch", metavar="SOURCE", help="PyTorch source model: MODULE:ATTR, a .pt2/TorchScript "
                     "archive, or a checkpoint with --factory")
    ref.add_argument("--framework", metavar="EXPORTER", help="any exporter plugin's name, with --source")
    ref.add_argument("--source", metavar="SOURCE", help="the source model for --framework")
    ref.add_argument("--expected", action="append", default=[], type=Path, metavar="OUT.npz",
                     help="expected outputs by output name, one file per --data file")
    ref.add_argument("--reference-onnx", type=Path, metavar="OTHER.onnx", help="compare with another ONNX model")
    p.add_argument("--factory", metavar="MODULE:FN", help="builds the model for a state-dict checkpoint source")
    p.add_argument("--trust-source", action="store_true",
                   help="load a .pt2/TorchScript source archive with torch's own loader even when it carries pickled "
                   "objects or code (runs that code: only for files you made)")
    p.add_argument("--data", action="append", default=[], type=Path, metavar="FEEDS.npz",
                   help="an input set: arrays by input name (repeatable)")
    p.add_argument("--random", type=int, default=None, metavar="N",
                   help="random input sets with varied dynamic sizes besides the sample/--data sets "
                   "(default 3; 0 with --expected)")
    add_input_args(p)
    add_tolerance_args(p)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write the report as JSON")
    p.set_defaults(func=run)


def _reference(args: argparse.Namespace) -> tuple[Any, str]:
    chosen = [name for name, given in (("--torch", args.torch), ("--framework", args.framework),
                                      ("--expected", args.expected), ("--reference-onnx", args.reference_onnx))
              if given]
    if len(chosen) != 1:
        raise InvalidInputError(
            "give exactly one reference: --torch SOURCE, --framework NAME --source SOURCE, --expected OUT.npz or "
            f"--reference-onnx OTHER.onnx ({'none' if not chosen else ' and '.join(chosen)} given)"
        )
    if args.framework and not args.source:
        raise InvalidInputError("--framework needs --source SOURCE")
    if args.source and not args.framework:
        raise InvalidInputError("--source needs --framework NAME (or use --torch SOURCE)")
    if args.factory and not (args.torch or args.framework):
        raise InvalidInputError("--factory only applies to a source model (--torch or --framework)")
    if args.torch or args.framework:
        name, source = ("torch", args.torch) if args.torch else (args.framework, args.source)
        exporter_cls = plugins.load("exporters", name)
        exporter = exporter_cls() if isinstance(exporter_cls, type) else exporter_cls
        return exporter.load_reference(source, ExportOptions(factory=args.factory, seed=args.seed,
                                                              trust_source=args.trust_source)), f"{name}: {source}"
    if args.reference_onnx:
        from accelserve.runtimes.onnxruntime_runtime import OnnxRuntimeSession

        load_onnx(args.reference_onnx, check=True)
        session = OnnxRuntimeSession(args.reference_onnx)
        return (lambda feed: session.run(dict(feed))), f"ONNX Runtime: {args.reference_onnx}"
    return [load_npz(p, "--expected") for p in args.expected], "expected outputs: " + ", ".join(map(str, args.expected))


def _specs(args: argparse.Namespace, model_specs: list[InputSpec]) -> list[InputSpec]:
    if not args.inputs:
        return apply_value_ranges(model_specs, args.value_range)
    specs = parse_specs(args.inputs, args.value_range)
    known = {s.name: s for s in model_specs}
    if {s.name for s in specs} != set(known):
        raise InvalidInputError(f"--input names {[s.name for s in specs]} do not match the model's inputs {list(known)}")
    for spec in specs:
        expected = known[spec.name]
        if len(spec.shape) != len(expected.shape):
            raise InvalidInputError(
                f"--input '{spec.name}' has rank {len(spec.shape)}, the model expects rank {len(expected.shape)} "
                f"({'x'.join(map(str, expected.shape))})"
            )
        for i, (mine, theirs) in enumerate(zip(spec.concrete_shape(), expected.shape)):
            if isinstance(theirs, int) and mine != theirs:
                raise InvalidInputError(f"--input '{spec.name}' has size {mine} on axis {i}, the model expects {theirs}")
        if spec.np_dtype != expected.np_dtype:
            raise InvalidInputError(f"--input '{spec.name}' is {spec.dtype}, the model expects {expected.dtype}")
    order = {n: i for i, n in enumerate(known)}
    return sorted(specs, key=lambda s: order[s.name])


def verify_model(args: argparse.Namespace) -> tuple[VerificationReport, str]:
    model = load_onnx(args.model, check=True)
    specs = _specs(args, input_specs_from_onnx(model))
    reference, what = _reference(args)
    rng = np.random.default_rng(args.seed)
    feeds = [load_npz(p, "--data") for p in args.data]
    for path, feed in zip(args.data, feeds):
        check_feed(feed, specs, str(path))
    count = args.random if args.random is not None else (0 if args.expected else 3)
    if count < 0:
        raise InvalidInputError("--random must be >= 0")
    if args.expected:
        if count:
            raise InvalidInputError("--expected outputs belong to --data inputs: random inputs have none (drop --random)")
        if len(args.expected) != len(args.data):
            raise InvalidInputError(f"{len(args.expected)} --expected file(s) for {len(args.data)} --data file(s); "
                                    "give one expected-outputs file per input file, in the same order")
    if not feeds:
        feeds.append(sample_feed(specs, rng))
    feeds.extend(random_feeds(specs, count, rng))
    tolerance = tolerance_for(args.precision, args.atol, args.rtol, args.min_cosine)
    report = verify(args.model, feeds, reference, precision=args.precision, tolerance=tolerance, runtime=args.runtime)
    return report, what


def run(args: argparse.Namespace) -> int:
    report, what = verify_model(args)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({**report.to_dict(), "reference": what}, indent=2, default=str) + "\n")
    if not report.passed:
        raise VerificationError(f"{args.model} differs from the reference ({what}):\n{report.table()}",
                                hint="loosen --atol/--rtol/--min-cosine if this difference is expected")
    print(f"reference: {what}")
    print(report.table())
    return 0


