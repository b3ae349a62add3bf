"""Parsing ``postgresql://…`` URLs into a DSN for asyncpg and TaskForge's own settings."""

from __future__ import annotations

import math
from urllib.parse import parse_qsl, urlencode, urlsplit

import attrs

from taskforge_core.errors import ConfigurationError

__all__ = ["PostgresSettings", "parse_url"]

#: Query parameters TaskForge reads itself (they are removed from the DSN given to asyncpg).
OWN_PARAMETERS = (
    "min_size",
    "max_size",
    "connect_timeout",
    "command_timeout",
    "synchronous_commit",
    "statement_cache_size",
    "poll_interval",
    "application_name",
)
#: libpq connection parameters that asyncpg understands; they go through to it unchanged.
DRIVER_PARAMETERS = (
    "host",
    "port",
    "user",
    "password",
    "dbname",
    "database",
    "passfile",
    "service",
    "servicefile",
    "sslmode",
    "sslcert",
    "sslkey",
    "sslrootcert",
    "sslcrl",
    "sslpassword",
    "ssl_min_protocol_version",
    "ssl_max_protocol_version",
    "direct_tls",
    "target_session_attrs",
    "krbsrvname",
    "gsslib",
)
_SYNCHRONOUS_COMMIT = ("on", "off", "local", "remote_write", "remote_apply")


@attrs.frozen(kw_only=True)
class PostgresSettings:
    """What a ``postgresql://`` URL asks for."""

    #: The URL without TaskForge's own parameters, for asyncpg.
    dsn: str
    #: Connections the pool keeps open (``min_size``); the listener connection is extra.
    min_size: int = 1
    #: Most connections the pool opens (``max_size``).
    max_size: int = 10
    #: Seconds to establish a connection before the call fails as unavailable.
    connect_timeout: float = 10.0
    #: Seconds one statement may run before it is cancelled (None: no limit).
    command_timeout: float | None = 60.0
    #: ``synchronous_commit`` for TaskForge's sessions; None keeps the server's setting.
    synchronous_commit: str | None = None
    #: Prepared statements cached per connection (0 behind a transaction-pooling PgBouncer).
    statement_cache_size: int = 100
    #: Seconds between polls while the LISTEN connection is down.
    poll_interval: float = 1.0
    #: Shown in ``pg_stat_activity``.
    application_name: str = "taskforge"


def _integer(name: str, text: str, *, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        value = minimum - 1
    if value < minimum:
        raise ConfigurationError(
            f"PostgreSQL URL parameter {name}={text!r} must be an integer >= {minimum}"
        )
    return value


def _seconds(name: str, text: str, *, none_ok: bool = False) -> float | None:
    if none_ok and text.lower() in ("", "none", "0"):
        return None
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigurationError(
            f"PostgreSQL URL parameter {name}={text!r} must be a positive number of seconds"
        )
    return value


def parse_url(url: str) -> PostgresSettings:
    """Read ``postgresql://[user[:password]@][host][:port][/dbname][?param=value&…]``.

    TaskForge's own parameters: ``min_size``, ``max_size`` (pool), ``connect_timeout``,
    ``command_timeout`` (seconds; ``0`` or ``none`` for no limit), ``synchronous_commit``
    (``on|off|local|remote_write|remote_apply``), ``statement_cache_size``, ``poll_interval``
    and ``application_name``. libpq's connection parameters that asyncpg supports (``sslmode``,
    ``passfile``, ``target_session_attrs``, …) pass through. Anything else is a
    :class:`~taskforge_core.errors.ConfigurationError`.
    """
    parts = urlsplit(url)
    if parts.scheme.lower() not in ("postgresql", "postgres"):
        raise ConfigurationError(
            f"{url!r} is not a PostgreSQL URL; use postgresql://user@host:5432/database"
        )
    if parts.fragment:
        raise ConfigurationError("a PostgreSQL URL takes no fragment")
    try:
        pairs = parse_qsl(parts.query, keep_blank_values=True, strict_parsing=bool(parts.query))
    except ValueError as exc:
        raise ConfigurationError("the query of the PostgreSQL URL does not parse") from exc

    own: dict[str, str] = {}
    passed: list[tuple[str, str]] = []
    seen: set[str] = set()
    for name, value in pairs:
        if name in seen:
            raise ConfigurationError(f"PostgreSQL URL parameter {name!r} is given twice")
        seen.add(name)
        if name in OWN_PARAMETERS:
            own[name] = value
        elif name in DRIVER_PARAMETERS:
            passed.append((name, value))
        else:
            raise ConfigurationError(
                f"unknown PostgreSQL URL parameter {name!r} (TaskForge's: "
                f"{', '.join(OWN_PARAMETERS)}; or a libpq connection parameter such as sslmode)"
            )

    base = url.split("?", 1)[0]
    settings = PostgresSettings(dsn=f"{base}?{urlencode(passed)}" if passed else base)
    changes: dict[str, object] = {}
    if "min_size" in own:
        changes["min_size"] = _integer("min_size", own["min_size"], minimum=0)
    if "max_size" in own:
        changes["max_size"] = _integer("max_size", own["max_size"], minimum=1)
    if "connect_timeout" in own:
        changes["connect_timeout"] = _seconds("connect_timeout", own["connect_timeout"])
    if "command_timeout" in own:
        changes["command_timeout"] = _seconds(
            "command_timeout", own["command_timeout"], none_ok=True
        )
    if "synchronous_commit" in own:
        mode = own["synchronous_commit"].lower()
        if mode not in _SYNCHRONOUS_COMMIT:
            raise ConfigurationError(
                f"PostgreSQL URL parameter synchronous_commit={own['synchronous_commit']!r} "
                f"must be one of {', '.join(_SYNCHRONOUS_COMMIT)}"
            )
        changes["synchronous_commit"] = mode
    if "statement_cache_size" in own:
        changes["statement_cache_size"] = _integer(
            "statement_cache_size", own["statement_cache_size"], minimum=0
        )
    if "poll_interval" in own:
        changes["poll_interval"] = _seconds("poll_interval", own["poll_interval"])
    if "application_name" in own:
        changes["application_name"] = own["application_name"]
    settings = attrs.evolve(settings, **changes)  # type: ignore[arg-type]
    if settings.min_size > settings.max_size:
        raise ConfigurationError(
            f"PostgreSQL URL parameters min_size={settings.min_size} and "
            f"max_size={settings.max_size}: min_size cannot exceed max_size"
        )
    return settings
