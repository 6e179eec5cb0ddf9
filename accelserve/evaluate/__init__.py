"""The evaluation harness: size, accuracy, speed and memory of ONNX models, as JSON, Markdown and a PNG plot.

Everything here runs models with in-process ONNX Runtime on the CPU; memory is measured in a fresh process.
"""

from accelserve.evaluate._ort import default_threads, run_model
from accelserve.evaluate.accuracy import (
    AccuracyStats,
    OutputError,
    accuracy_vs_base,
    compare_outputs,
    labelled_metric,
    load_labels,
    top1_accuracy,
)
from accelserve.evaluate.flops import FlopCount, flops
from accelserve.evaluate.harness import EvaluationReport, ModelEvaluation, evaluate_models
from accelserve.evaluate.memory import MemoryStats, peak_memory
from accelserve.evaluate.size import SizeStats, count_parameters, size_stats
from accelserve.evaluate.speed import LatencyStats, make_batch, measure_latencies, measure_latency

__all__ = [
    "AccuracyStats", "EvaluationReport", "FlopCount", "LatencyStats", "MemoryStats", "ModelEvaluation", "OutputError",
    "SizeStats", "accuracy_vs_base", "compare_outputs", "count_parameters", "default_threads", "evaluate_models",
    "flops", "labelled_metric", "load_labels", "make_batch", "measure_latencies", "measure_latency", "peak_memory", "run_model",
    "size_stats", "top1_accuracy",
]
