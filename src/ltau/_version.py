"""The package version, kept apart so that internal modules can read it without importing
the package root."""

__version__ = "0.1.0"
