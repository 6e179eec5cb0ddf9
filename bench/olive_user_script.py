"""Olive user script for bench/olive_compare.py: runs inside Olive's own virtual environment (never imported by
accelserve). Registers a data set that reads the same .npz inputs / .npy labels accelserve's pipeline reads, and an
argmax post-process for Olive's accuracy metric."""

import numpy as np
from olive.data.registry import Registry


class _Arrays:
    def __init__(self, inputs_file: str, labels_file: str | None, input_name: str) -> None:
        with np.load(inputs_file) as data:
            self.x = np.ascontiguousarray(data[data.files[0]], dtype=np.float32)
        self.y = np.load(labels_file).astype(np.int64) if labels_file else np.zeros(len(self.x), np.int64)
        self.input_name = input_name

    def __len__(self) -> int:
        return len(self.x)

    def __getitem__(self, i: int):
        return {self.input_name: self.x[i]}, self.y[i]


@Registry.register_dataset()
def accelserve_npz_dataset(inputs_file: str, labels_file: str | None = None, input_name: str = "x"):
    return _Arrays(inputs_file, labels_file, input_name)


@Registry.register_post_process()
def accelserve_argmax(output):
    return output.argmax(dim=-1)
