"""Runtimes that execute ONNX models locally. Each registers in the ``accelserve.runtimes`` entry-point group."""
