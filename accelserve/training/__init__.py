"""Training-aware compression on the PyTorch side: quantization-aware training, knowledge distillation, prune →
fine-tune. Each ends in an ONNX model (through accelserve's torch exporter, and for QAT the ``int8`` pass's Q/DQ
layout) that the repository, serving, load-test and pipeline steps take unchanged. torch is imported lazily.

* :mod:`.data` — the training-data contract (``TrainingData``: train/eval batches, optional calibration)
* :mod:`.fake_quant`, :mod:`.qat` — fake quantization in the int8 pass's layout, QAT
* :mod:`.prune_torch`, :mod:`.distill` — torch-level channel pruning, distillation, prune → fine-tune
* :mod:`.loop` — a small training loop with progress lines; :mod:`.export` — export, QAT verification, reports
* :mod:`.api` — ``train_compress(model, data, method, output)``, the CLI's and pipeline's entry point
"""
