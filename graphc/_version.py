"""The one place graphc's version is written (pyproject.toml and ``graphc.__version__`` read it)."""
__version__ = "0.1.0"
