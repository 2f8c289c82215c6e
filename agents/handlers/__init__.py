"""The built-in job types' handlers, one module each; :mod:`jobstream.agents.builtin` declares
them as an app."""
