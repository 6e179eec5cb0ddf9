"""accelserve's Triton python-backend models (run inside the backend stub)."""
