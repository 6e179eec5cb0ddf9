"""A Keras model exported by tf2onnx (NHWC transposes, computed Flatten target, depthwise conv, residual Add) is
pruned like a PyTorch one."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

pytest.importorskip("tensorflow", reason="TensorFlow is not installed (pip install 'accelserve[tensorflow]')")

from accelserve import export_tensorflow
from accelserve.artifact import ModelArtifact
from accelserve.onnx_io import read_onnx
from accelserve.passes.base import PassContext
from accelserve.passes.pruning.channels import ChannelPruning
from accelserve.passes.pruning.graph import run

pytestmark = [pytest.mark.tensorflow, pytest.mark.slow]


def keras_cnn():  # noqa: ANN201
    import tensorflow as tf

    tf.keras.utils.set_random_seed(0)
    layers = tf.keras.layers
    inp = tf.keras.Input((12, 12, 3), name="image")
    x = layers.ReLU()(layers.BatchNormalization()(layers.Conv2D(16, 3, padding="same")(inp)))
    y = layers.ReLU()(layers.Conv2D(16, 3, padding="same")(x))
    x = layers.ReLU()(layers.Add()([x, layers.Conv2D(16, 3, padding="same")(y)]))
    x = layers.ReLU()(layers.Conv2D(24, 1)(layers.DepthwiseConv2D(3, padding="same")(x)))
    x = layers.Flatten()(layers.MaxPooling2D()(x))
    out = layers.Dense(10)(layers.Dense(32, activation="relu")(x))
    return tf.keras.Model(inp, out)


def test_keras_cnn_prunes_through_nhwc_and_flatten(tmp_path: Path) -> None:
    source = tmp_path / "keras.onnx"
    export_tensorflow(keras_cnn(), inputs=["image:1x12x12x3:float32"], output=source)
    ctx = PassContext(tmp_path)
    artifact = ChannelPruning({"ratio": 0.5, "reconstruct": False}).run(ModelArtifact.from_onnx(source),
                                                                        tmp_path / "pruned.onnx", ctx)
    report = ctx.report
    assert report["groups_pruned"] == 4  # the residual pair, the inner conv, the 1x1 conv before Flatten, Dense 32
    assert [len(g["sources"]) for g in report["groups"] if g["removed"]].count(2) == 1
    assert report["parameters"]["after"] < 0.4 * report["parameters"]["before"]
    feeds = [{"image": np.random.default_rng(0).random((3, 12, 12, 3), dtype=np.float32)}]
    (out,) = run(read_onnx(artifact.path), feeds).values()
    assert out.shape == (3, 10)
