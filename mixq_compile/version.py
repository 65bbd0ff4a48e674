"""The package version: one home, read by ``pyproject.toml`` (setuptools ``attr:``), artifacts and the CLI."""

__version__ = "0.1.0"
