"""``accelserve run PIPELINE.yaml``: one declarative command for deployment CI (export, accuracy-aware search over
compression recipes, winner, Triton load-test gate, repository write, reports). See docs/ci.md."""

from accelserve.pipeline.config import ConfigError, PipelineConfig, json_schema, load_config
from accelserve.pipeline.runner import PipelineResult, run_pipeline

__all__ = ["ConfigError", "PipelineConfig", "PipelineResult", "json_schema", "load_config", "run_pipeline"]
