"""Choosing a storage backend by URL scheme, through the plugins that declare backends.

The core knows no backend by name: :func:`create_storage` asks every plugin's
``taskforge_backends`` hook, picks the spec whose scheme matches the URL, checks its optional
dependencies, and only then imports its factory.
"""

from __future__ import annotations

import importlib
import importlib.util
from collections.abc import Callable
from typing import TYPE_CHECKING, cast
from urllib.parse import urlsplit

import attrs

from taskforge_core.clock import Clock, SystemClock
from taskforge_core.errors import ConfigurationError, MissingExtraError, UnknownSchemeError

if TYPE_CHECKING:
    import pluggy

    from taskforge_core.protocols import Storage

__all__ = ["BackendConfig", "BackendSpec", "create_storage", "known_backends", "url_scheme"]


@attrs.frozen(kw_only=True)
class BackendConfig:
    """Settings every backend factory receives besides the URL."""

    #: Time source for due dates and leases (backends with a server clock may ignore it).
    clock: Clock = attrs.field(factory=SystemClock)
    #: Apply pending migrations in ``open()``.
    auto_migrate: bool = True
    #: Create a queue on first enqueue; when False an unknown queue is a ``QueueError``.
    create_queues: bool = True


#: ``factory(url, config) -> Storage``
StorageFactory = Callable[[str, BackendConfig], "Storage"]


@attrs.frozen(kw_only=True)
class BackendSpec:
    """A plugin's declaration of one storage backend."""

    #: URL schemes served, lower case, e.g. ``("postgresql", "postgres")``.
    schemes: tuple[str, ...]
    #: ``"package.module:callable"`` building the backend; imported only when used.
    factory: str
    #: Importable modules the backend needs, e.g. ``("asyncpg",)``.
    requires: tuple[str, ...] = ()
    #: The ``taskforge[...]`` extra that installs ``requires``.
    extra: str | None = None


def url_scheme(url: str) -> str:
    """The scheme of ``url``, lower case (``sqlite:///x.db`` -> ``sqlite``)."""
    scheme = urlsplit(url).scheme.lower()
    if not scheme:
        raise UnknownSchemeError(
            f"{url!r} has no scheme; use e.g. sqlite:///taskforge.db or postgresql://host/db"
        )
    return scheme


def known_backends(pm: pluggy.PluginManager) -> dict[str, BackendSpec]:
    """Every declared backend by scheme; the first plugin to claim a scheme keeps it."""
    found: dict[str, BackendSpec] = {}
    for specs in pm.hook.taskforge_backends():
        for spec in specs:
            for scheme in spec.schemes:
                found.setdefault(scheme, spec)
    return found


def create_storage(pm: pluggy.PluginManager, url: str, config: BackendConfig) -> Storage:
    """Build (but do not open) the backend serving ``url``."""
    scheme = url_scheme(url)
    backends = known_backends(pm)
    spec = backends.get(scheme)
    if spec is None:
        offered = ", ".join(f"{s}://" for s in sorted(backends)) or "none"
        raise UnknownSchemeError(
            f"no installed backend handles {scheme}:// URLs (installed: {offered})"
        )
    missing = [name for name in spec.requires if importlib.util.find_spec(name) is None]
    if missing:
        install = f"pip install 'taskforge[{spec.extra}]'" if spec.extra else "install it"
        raise MissingExtraError(
            f"{scheme}:// URLs need {', '.join(missing)}, which is not installed: {install}"
        )
    module_name, _, attr = spec.factory.partition(":")
    try:
        factory = cast("StorageFactory", getattr(importlib.import_module(module_name), attr))
    except (ImportError, AttributeError) as exc:
        raise ConfigurationError(
            f"the backend for {scheme}:// names factory {spec.factory!r}, which cannot be loaded: "
            f"{exc}"
        ) from exc
    return factory(url, config)
