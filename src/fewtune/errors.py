"""Errors a user can fix. The CLI prints them as one line, never as a traceback."""

from __future__ import annotations

from pathlib import Path


class FewtuneError(Exception):
    """An error caused by input or setup that the user can fix."""


class DataError(FewtuneError):
    """A problem in a data file, located by file and (1-based) line."""

    def __init__(self, path: str | Path, line: int | None, message: str) -> None:
        self.path = str(path)
        self.line = line
        self.message = message
        where = f"{self.path}:{line}" if line else self.path
        super().__init__(f"{where}: {message}")


class ModelError(FewtuneError):
    """The model could not be found, converted or loaded."""


class ConfigError(FewtuneError):
    """An invalid setting."""
