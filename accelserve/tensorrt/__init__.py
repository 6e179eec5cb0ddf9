"""TensorRT targets: engine builds (``tensorrt_plan``), TensorRT's INT8 calibration cache, optimization profiles.

Everything that does not need TensorRT or a GPU works on any machine: build plans (flags, profiles, the equivalent
``trtexec`` command line), calibration cache files written from accelserve's own calibration statistics, and
``tensorrt_plan`` repository entries described from the ONNX model an engine was built from. Building or running
an engine imports the ``tensorrt`` package lazily (:func:`accelserve.tensorrt.api.load_tensorrt`), which raises a
:class:`~accelserve.errors.MissingDependencyError` naming the install path when it is absent.

Modules: :mod:`.api` (lazy import, version), :mod:`.calib_cache` (cache format), :mod:`.profiles` (min/opt/max
shapes), :mod:`.build` (build config, plan, trtexec line, engine build), :mod:`.calibrator` (implicit INT8
calibrator for TensorRT < 10.1), :mod:`.plan_entry` (``tensorrt_plan`` config).
"""
