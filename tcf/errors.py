"""Errors that name what was wrong and where.

Every error a user can cause by handing tcf a bad file or a bad setting is a
``TcfError``: the command line prints its message (no traceback) and exits 2.
"""

from __future__ import annotations

from pathlib import Path


class TcfError(Exception):
    """A user-facing error with a message that says what to do."""


class ConfigError(TcfError):
    """A setting that does not exist, has the wrong type, or contradicts another."""


class DataError(TcfError):
    """Bad input data: names the file, the line (1-based, where there is one) and the field."""

    def __init__(self, path: str | Path | None, message: str, *, line: int | None = None, field: str | None = None):
        self.path = None if path is None else str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = []
        if self.path is not None:
            where.append(self.path + (f":{line}" if line is not None else ""))
        elif line is not None:
            where.append(f"line {line}")
        if field is not None:
            where.append(f"field '{field}'")
        super().__init__((", ".join(where) + ": " if where else "") + message)
