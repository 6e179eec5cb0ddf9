"""The ``accelserve`` command line."""
