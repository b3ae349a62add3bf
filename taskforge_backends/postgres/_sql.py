"""The SQL of the PostgreSQL backend, read from the ``.sql`` files beside this module.

``sql/queries.sql`` holds every statement the backend runs, each under a ``-- name: NAME``
line (procrastinate-style), so the SQL can be read, reviewed and syntax-highlighted as SQL.
"""

from __future__ import annotations

import functools
import re
from importlib import resources

__all__ = ["queries", "schema"]

_NAME = re.compile(r"^-- name: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)
#: A line that stands for the whole text of another named piece (one level deep).
_INCLUDE = re.compile(r"^-- include: ([a-z_][a-z0-9_]*)\s*$", re.MULTILINE)


def _read(*parts: str) -> str:
    folder = resources.files(__package__ or "taskforge_backends.postgres")
    return folder.joinpath(*parts).read_text(encoding="utf-8")


def parse(text: str) -> dict[str, str]:
    """Split a queries file into ``{name: statement}``; every statement must be named once.

    A ``-- include: NAME`` line is replaced by the text of piece ``NAME``, so that two
    statements ending alike (the claim's two ways of choosing jobs) share one copy of the end.
    """
    found: dict[str, str] = {}
    pieces = _NAME.split(text)
    if pieces[0].strip() and any(
        line.strip() and not line.lstrip().startswith("--") for line in pieces[0].splitlines()
    ):
        raise ValueError("SQL before the first '-- name:' line")
    for name, body in zip(pieces[1::2], pieces[2::2], strict=True):
        if name in found:
            raise ValueError(f"query {name!r} is defined twice")
        statement = body.strip()
        if not statement:
            raise ValueError(f"query {name!r} is empty")
        found[name] = statement

    def include(match: re.Match[str]) -> str:
        piece = match.group(1)
        if piece not in found:
            raise ValueError(f"'-- include: {piece}' names no query")
        return found[piece]

    return {name: _INCLUDE.sub(include, statement) for name, statement in found.items()}


@functools.cache
def queries() -> dict[str, str]:
    """Every named statement of ``sql/queries.sql``."""
    return parse(_read("sql", "queries.sql"))


@functools.cache
def schema() -> str:
    """``sql/schema.sql``: the schema that the migrations produce, for reading and review."""
    return _read("sql", "schema.sql")
