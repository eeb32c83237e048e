"""The package version (one place; ``udavae.__version__`` re-exports it)."""

__version__ = "0.1.0"
