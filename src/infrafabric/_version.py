"""The package version, in one place (read by the server without importing the package root)."""

__version__ = "0.1.0.dev0"
