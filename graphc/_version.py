"""The one place graphc's version is written (graphc.__version__, pyproject.toml and generated files read it)."""
__version__ = "0.1.0"
