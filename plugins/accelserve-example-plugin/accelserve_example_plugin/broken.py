"""A plugin module that fails to import, on purpose (see README)."""

raise ImportError("accelserve_example_plugin.broken needs the package 'not_installed_dependency'")
