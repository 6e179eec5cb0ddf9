"""Example accelserve plugin package."""
