"""Errors raised at the data edge.

Every error a user can trigger with a bad file or a bad config names where the problem is
(file, line, field) and what was expected, so nobody has to read a traceback from inside pandas.
"""
from __future__ import annotations

from pathlib import Path


class InputError(ValueError):
    """Bad input file: names the file, optionally the line and field, and what was expected.

    Args:
        path: the file at fault.
        message: what is wrong and what was expected.
        line: 1-based line number in the file, when known.
        field: column or variable name, when known.
    """

    def __init__(self, path: str | Path, message: str, *, line: int | None = None,
                 field: str | None = None):
        self.path = str(path)
        self.line = line
        self.field = field
        self.reason = message
        where = self.path
        if line is not None:
            where += f", line {line}"
        if field is not None:
            where += f", field {field!r}"
        super().__init__(f"{where}: {message}")


class ConfigError(ValueError):
    """Invalid configuration: one entry per problem, each naming the key path."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        body = "\n".join(f"  - {p}" for p in self.problems)
        super().__init__(f"{source}: invalid configuration\n{body}")
