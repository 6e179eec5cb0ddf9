"""Exporters: framework model -> verified ONNX. Each registers in the ``accelserve.exporters`` entry-point group."""

from accelserve.exporters.base import Exporter, ExportOptions, ExportResult

__all__ = ["Exporter", "ExportOptions", "ExportResult"]
