"""Connection settings shared by the Redis components, and the client they open."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import attrs

from taskforge_core.errors import ConfigurationError, MissingExtraError

if TYPE_CHECKING:
    import redis.asyncio

__all__ = ["DEFAULT_PREFIX", "RedisSettings"]

#: Every key the plugins write starts with this prefix and a colon.
DEFAULT_PREFIX = "taskforge"


@attrs.frozen(kw_only=True)
class RedisSettings:
    """Where the Redis components connect, and the prefix of every key they write."""

    #: ``redis://[user:password@]host:port/db`` or ``rediss://`` for TLS.
    url: str
    #: Keys are ``f"{prefix}:{...}"``: several deployments (or test runs) can share one Redis.
    prefix: str = DEFAULT_PREFIX

    def __attrs_post_init__(self) -> None:
        scheme = urlsplit(self.url).scheme
        if scheme not in ("redis", "rediss", "unix"):
            raise ConfigurationError(
                f"bad Redis URL {self.url!r}: expected redis://host:port/db, rediss://... "
                "or unix:///path/to/socket"
            )
        if not self.prefix or any(c.isspace() for c in self.prefix):
            raise ConfigurationError(f"bad Redis key prefix {self.prefix!r}: non-empty, no spaces")

    def key(self, *parts: str) -> str:
        """``prefix:part1:part2...``"""
        return ":".join((self.prefix, *parts))

    def client(self, **options: Any) -> redis.asyncio.Redis:
        """A new client (a connection pool) for the running event loop; ``options`` go to
        ``redis.asyncio.Redis.from_url`` (timeouts, retries) after the URL.

        redis-py's asyncio client runs on asyncio only; under trio this raises
        :class:`ConfigurationError` rather than falling back silently to per-process limits.
        """
        try:
            import redis.asyncio
        except ImportError as exc:  # pragma: no cover - depends on the install
            raise MissingExtraError(
                "the Redis plugins need the redis package: pip install 'taskforge[redis]'"
            ) from exc
        try:
            asyncio.get_running_loop()
        except RuntimeError as exc:
            raise ConfigurationError(
                "the Redis plugins run on asyncio only (redis.asyncio); run the worker under "
                "asyncio or leave TASKFORGE_REDIS_URL unset to use the in-process fallbacks"
            ) from exc
        return redis.asyncio.Redis.from_url(self.url, decode_responses=False, **options)
