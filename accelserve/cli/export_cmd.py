"""``accelserve export EXPORTER SOURCE --input ... -o model.onnx``: framework model -> verified ONNX.

The exporter is an ``accelserve.exporters`` plugin looked up by name (``torch`` is built in), so a new framework
plugs in without changes here.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from accelserve import plugins
from accelserve.artifact import ModelArtifact
from accelserve.cli.verify_cmd import add_input_args, add_tolerance_args, parse_specs
from accelserve.errors import InvalidInputError
from accelserve.exporters.base import ExportOptions, ExportResult
from accelserve.onnx_io import model_opset, read_onnx


def register(sub: argparse._SubParsersAction) -> None:
    names = ", ".join(plugins.names("exporters")) or "none installed"
    p = sub.add_parser("export", help="export a PyTorch/TensorFlow model to ONNX and verify it",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("exporter", metavar="EXPORTER", help=f"exporter plugin ({names})")
    p.add_argument("source", metavar="SOURCE",
                   help="the model; for torch: MODULE:ATTR (instance, class or zero-argument factory; MODULE may be "
                   "a .py path), a TorchScript archive, a torch.export .pt2 archive, or a state-dict checkpoint "
                   "with --factory")
    p.add_argument("-o", "--output", type=Path, required=True, metavar="MODEL.onnx", help="where to write the model")
    add_input_args(p)
    p.add_argument("--factory", metavar="MODULE:FN", help="builds the model when SOURCE is a state-dict checkpoint")
    p.add_argument("--trust-source", action="store_true",
                   help="load a .pt2/TorchScript archive with torch's own loader even when it carries pickled objects "
                   "or code (runs that code: only for files you made)")
    p.add_argument("--opset", type=int, help="ONNX opset (default: the exporter's, clamped to ONNX Runtime's maximum)")
    p.add_argument("--static-batch", action="store_true", help="keep the first dim static instead of a dynamic batch")
    p.add_argument("--output-name", dest="output_names", action="append", metavar="NAME",
                   help="name of an output, in order (repeat per output)")
    p.add_argument("--external-data", action="store_true",
                   help="keep weights in MODEL.onnx.data even below 2 GB (larger models always do)")
    p.add_argument("--no-verify", dest="verify", action="store_false", help="skip the numerical verification")
    p.add_argument("--verify-samples", type=int, default=3, metavar="N",
                   help="random input sets (with varied dynamic sizes) verified besides the sample (default 3)")
    add_tolerance_args(p)
    p.add_argument("--json", type=Path, metavar="PATH", help="also write what was exported as JSON")
    p.set_defaults(func=run)


def describe_onnx(path: Path) -> dict[str, Any]:
    """Path, size, digest, I/O with dynamic axes, IR version and opset of an ONNX file (without its weights)."""
    artifact = ModelArtifact(path)
    header = read_onnx(path, load_external_data=False)
    initializers = {t.name for t in header.graph.initializer}

    def io(values: Any) -> list[dict[str, Any]]:
        from onnx import helper

        out = []
        for v in values:
            if v.name in initializers:
                continue
            t = v.type.tensor_type
            dims = [d.dim_param if d.HasField("dim_param") else (d.dim_value if d.HasField("dim_value") else "?")
                    for d in t.shape.dim]
            out.append({"name": v.name, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name, "shape": dims})
        return out

    files = artifact.files()
    return {
        "path": str(path),
        "files": [str(f) for f in files],
        "size_bytes": artifact.size_bytes(),
        "sha256": artifact.sha256(),
        "ir_version": header.ir_version,
        "opset": model_opset(header),
        "inputs": io(header.graph.input),
        "outputs": io(header.graph.output),
    }


def format_description(info: dict[str, Any], changes: list[str]) -> str:
    """Human-readable summary; ``changes`` are the exporter's messages (e.g. IR/opset clamping)."""
    size = info["size_bytes"]
    human = f"{size / 2**20:.2f} MiB" if size >= 2**20 else f"{size / 2**10:.1f} KiB"
    lines = [f"wrote {info['path']} ({human}, sha256 {info['sha256'][:12]})"]
    if len(info["files"]) > 1:
        lines.append(f"  external data: {', '.join(info['files'][1:])}")
    clamped = any("ONNX Runtime" in c for c in changes)
    limits = "" if clamped else " (within what the installed ONNX Runtime loads)"
    lines.append(f"  IR version {info['ir_version']}, opset {info['opset']}{limits}")
    for message in changes:
        lines.append(f"  {message}")
    for kind in ("inputs", "outputs"):
        for t in info[kind]:
            shape = ", ".join(map(str, t["shape"]))
            dynamic = [str(d) for d in t["shape"] if isinstance(d, str)]
            extra = f"  (dynamic: {', '.join(dynamic)})" if dynamic else ""
            lines.append(f"  {kind[:-1]:<6} {t['name']}: {t['dtype']} [{shape}]{extra}")
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    if args.verify_samples < 0:
        raise InvalidInputError("--verify-samples must be >= 0")
    exporter_cls = plugins.load("exporters", args.exporter)
    exporter = exporter_cls() if isinstance(exporter_cls, type) else exporter_cls
    specs = parse_specs(args.inputs, args.value_range, dynamic_batch=not args.static_batch)
    options = ExportOptions(
        opset=args.opset,
        dynamic_batch=not args.static_batch,
        verify=args.verify,
        verify_random_inputs=args.verify_samples,
        precision=args.precision,
        atol=args.atol,
        rtol=args.rtol,
        min_cosine=args.min_cosine,
        external_data=True if args.external_data else None,
        factory=args.factory,
        trust_source=args.trust_source,
        output_names=args.output_names,
        seed=args.seed,
    )
    result: ExportResult = exporter.export(args.source, specs, args.output, options)
    info = describe_onnx(result.artifact.path)
    print(format_description(info, result.messages))
    if result.verification is not None:
        print(result.verification.table())
    else:
        print("verification skipped (--no-verify)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {**info, "changes": result.messages, "source": args.source, "exporter": args.exporter,
                   "verification": result.verification.to_dict() if result.verification is not None else None}
        args.json.write_text(json.dumps(payload, indent=2, default=str) + "\n")
    return 0
