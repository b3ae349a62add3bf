"""JSON for job payloads and results, and the one cattrs converter for the models.

Payloads (arguments, results) are plain JSON so every backend and every language can read them.
The converter turns models into JSON-ready dicts and back, for the CLI, the HTTP API and tests.
"""

from __future__ import annotations

import datetime as dt
import json
import uuid
from collections.abc import Mapping
from typing import Any, TypeVar

import cattrs

from taskforge_core.errors import PayloadTooLargeError, SerializationError

__all__ = ["check_payload", "converter", "decode", "encode", "structure"]

T = TypeVar("T")

#: Structures and unstructures every model in :mod:`taskforge_core.models`.
converter = cattrs.Converter()
converter.register_unstructure_hook(uuid.UUID, str)
converter.register_structure_hook(uuid.UUID, lambda value, _: uuid.UUID(str(value)))
converter.register_unstructure_hook(dt.datetime, lambda value: value.isoformat())
converter.register_structure_hook(
    dt.datetime,
    lambda value, _: value if isinstance(value, dt.datetime) else dt.datetime.fromisoformat(value),
)
converter.register_unstructure_hook(dt.timedelta, lambda value: value.total_seconds())
converter.register_structure_hook(dt.timedelta, lambda value, _: dt.timedelta(seconds=value))

_encoder = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def encode(value: Any, *, what: str = "value") -> str:
    """Encode ``value`` as compact JSON or raise :class:`SerializationError` naming ``what``."""
    try:
        return _encoder.encode(value)
    except (TypeError, ValueError) as exc:
        raise SerializationError(f"{what} is not JSON-serializable: {exc}") from exc


def decode(text: str | bytes | None) -> Any:
    """Decode JSON text written by :func:`encode` (None stays None)."""
    if text is None:
        return None
    try:
        return json.loads(text)
    except ValueError as exc:
        raise SerializationError(f"stored JSON is corrupt: {exc}") from exc


def check_payload(
    args: tuple[Any, ...], kwargs: Mapping[str, Any], *, task: str, limit: int
) -> None:
    """Raise unless a job's arguments are JSON and encode to at most ``limit`` bytes."""
    text = encode([list(args), dict(kwargs)], what=f"the arguments of {task!r}")
    size = len(text.encode())
    if size > limit:
        raise PayloadTooLargeError(
            f"the arguments of {task!r} encode to {size} bytes, over the limit of {limit} "
            "(raise max_payload_bytes, or pass a reference such as a path or id instead)"
        )


def structure(data: Any, cls: type[T]) -> T:
    """Build a model from its unstructured form."""
    return converter.structure(data, cls)
