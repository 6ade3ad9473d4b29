"""ganflow's built-in plugins, installed as the package ``ganflow_plugins``.

They use only ganflow's public API and are loaded by name (``ganflow.plugins.DEFAULT_PLUGINS``),
exactly like a third-party plugin found through the ``ganflow`` entry-point group.
"""
