"""Loads the netlab plugin by module name for runs from a source checkout (installed, its entry point
has the same name, so pytest does not register it twice); pytester runs the plugin's own tests."""

pytest_plugins = ["netlab.pytest_plugin", "pytester"]
