"""Optimization passes. Each registers in the ``accelserve.passes`` entry-point group."""

from accelserve.passes.base import Pass, PassConfig, PassContext

__all__ = ["Pass", "PassConfig", "PassContext"]
