"""Parsing ``sqlite:///…`` URLs into connection settings."""

from __future__ import annotations

import math
import os
from urllib.parse import parse_qsl, unquote, urlsplit

import attrs

from taskforge_core.errors import ConfigurationError

__all__ = ["MEMORY", "SQLiteSettings", "parse_url"]

#: The path that names a private in-memory database.
MEMORY = ":memory:"

_SYNCHRONOUS = ("off", "normal", "full", "extra")
_PARAMETERS = ("synchronous", "busy_timeout", "poll_interval")


@attrs.frozen(kw_only=True)
class SQLiteSettings:
    """What a ``sqlite:///`` URL asks for."""

    #: Absolute path of the database file, or :data:`MEMORY`.
    path: str
    #: ``PRAGMA synchronous``: ``normal`` (default) survives a process crash, ``full`` also a
    #: power loss.
    synchronous: str = "normal"
    #: Seconds a statement waits for another connection's write lock before giving up.
    busy_timeout: float = 30.0
    #: Seconds between checks for commits made by other processes while waiting for jobs.
    poll_interval: float = 0.02

    @property
    def in_memory(self) -> bool:
        return self.path == MEMORY


def _seconds(name: str, text: str, *, positive: bool) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        kind = "a positive" if positive else "a non-negative"
        raise ConfigurationError(
            f"SQLite URL parameter {name}={text!r} must be {kind} number of seconds"
        )
    return value


def parse_url(url: str) -> SQLiteSettings:
    """Read ``sqlite:///relative.db``, ``sqlite:////absolute.db`` or ``sqlite:///:memory:``,
    with optional ``?synchronous=off|normal|full|extra``, ``busy_timeout=SECONDS`` and
    ``poll_interval=SECONDS``. Anything else is a :class:`ConfigurationError`."""
    parts = urlsplit(url)
    if parts.scheme.lower() != "sqlite" or not url[len(parts.scheme) :].startswith(":///"):
        raise ConfigurationError(
            f"{url!r} is not a SQLite URL; use sqlite:///relative/path.db, "
            "sqlite:////absolute/path.db or sqlite:///:memory:"
        )
    if parts.fragment:
        raise ConfigurationError(f"a SQLite URL takes no fragment: {url!r}")
    path = unquote(parts.path[1:])
    if not path:
        raise ConfigurationError(f"the SQLite URL {url!r} names no database file")
    if path != MEMORY:
        path = os.path.abspath(path)

    options: dict[str, str] = {}
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError(f"the query of the SQLite URL {url!r} does not parse") from exc
    for name, value in pairs:
        if name not in _PARAMETERS:
            raise ConfigurationError(
                f"unknown SQLite URL parameter {name!r} (known: {', '.join(_PARAMETERS)})"
            )
        if name in options:
            raise ConfigurationError(f"SQLite URL parameter {name!r} is given twice")
        options[name] = value

    settings = SQLiteSettings(path=path)
    if "synchronous" in options:
        mode = options["synchronous"].lower()
        if mode not in _SYNCHRONOUS:
            raise ConfigurationError(
                f"SQLite URL parameter synchronous={options['synchronous']!r} must be one of "
                f"{', '.join(_SYNCHRONOUS)}"
            )
        settings = attrs.evolve(settings, synchronous=mode)
    if "busy_timeout" in options:
        seconds = _seconds("busy_timeout", options["busy_timeout"], positive=False)
        settings = attrs.evolve(settings, busy_timeout=seconds)
    if "poll_interval" in options:
        seconds = _seconds("poll_interval", options["poll_interval"], positive=True)
        settings = attrs.evolve(settings, poll_interval=seconds)
    return settings
