"""The package version, in one place (pyproject reads it; results record it and refuse to mix versions)."""

__version__ = "0.2.0"
