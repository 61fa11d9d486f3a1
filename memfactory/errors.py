"""Errors that mean "the user asked for something wrong", shown as one readable paragraph.

The CLI turns these into exit code 2 without a traceback; the web UI shows them in a warning box.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class MemFactoryError(Exception):
    """A user-facing error: bad preset, missing file, unknown name, unreachable endpoint."""


class ConfigError(MemFactoryError):
    """A preset failed validation; ``problems`` holds (field path, message) pairs."""

    def __init__(self, source: str, problems: list[tuple[str, str]]):
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  - {path or '(top level)'}: {message}" for path, message in problems)
        super().__init__(f"invalid preset {source}:\n{lines}")


class DataError(MemFactoryError):
    """A data file is missing, unreadable or has a malformed record."""

    def __init__(self, file: str, message: str, *, record: int | None = None, field: str | None = None):
        self.file, self.record, self.field = file, record, field
        where = file
        if record is not None:
            where += f", record {record}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")
