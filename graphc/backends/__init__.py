"""Backends: each lowers a Graph to something that runs. ``reference`` is the NumPy oracle."""
