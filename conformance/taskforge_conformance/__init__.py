"""The TaskForge conformance suites: prove that a storage backend, a scheduler or a rate
limiter keeps every promise.

Schedulers and rate limiters have their own suites, :class:`SchedulerConformance` and
:class:`RateLimiterConformance` (see :mod:`taskforge_conformance.scheduler` and
:mod:`taskforge_conformance.ratelimit`). For storage backends:

Two ways to run it against your backend:

* subclass :class:`StorageConformance` in a test module and implement ``make_storage``::

      from taskforge_conformance import StorageConformance

      class TestMyBackend(StorageConformance):
          async def make_storage(self, clock, tmp_path):
              return MyStorage(f"mydb:///{tmp_path}/jobs", clock=clock)

* or run the bundled tests through the ``taskforge`` entry points, by URL::

      python -m taskforge_conformance "mybackend:///{tmp}/jobs"

A scheduler (the ``taskforge_scheduler`` hook) is checked the same way, by subclassing
:class:`SchedulerConformance` and implementing ``make_scheduler(fleet)``.

The suite needs pytest and hypothesis. ``TASKFORGE_CONFORMANCE_PROFILE`` picks how hard the
stateful test works (``quick``, the default, or ``thorough``). See ``docs/writing-a-backend.md``.
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from taskforge_conformance._names import PROFILE_ENV, URL_ENV

# The suite is pytest tests driven by hypothesis: say what to install when they are missing.
# (Only looked up, not imported: ``python -m taskforge_conformance`` starts pytest first.)
for _needed in ("pytest", "hypothesis"):
    if importlib.util.find_spec(_needed) is None:  # pragma: no cover - depends on the environment
        raise ImportError(
            f"the TaskForge conformance suite needs pytest and hypothesis ({_needed} is "
            "missing): pip install pytest hypothesis",
            name=_needed,
        )

if TYPE_CHECKING:
    from taskforge_conformance._harness import Env
    from taskforge_conformance.model import ReferenceModel
    from taskforge_conformance.profiles import active_profile, suite_settings
    from taskforge_conformance.ratelimit import RateLimiterConformance
    from taskforge_conformance.scheduler import Fleet, SchedulerConformance
    from taskforge_conformance.suite import StorageConformance, scenario
    from taskforge_conformance.url import expand_url, storage_from_url

__all__ = [
    "PROFILE_ENV",
    "URL_ENV",
    "Env",
    "Fleet",
    "RateLimiterConformance",
    "ReferenceModel",
    "SchedulerConformance",
    "StorageConformance",
    "active_profile",
    "expand_url",
    "scenario",
    "storage_from_url",
    "suite_settings",
]

#: Where each public name lives. They are imported on first use, so that
#: ``python -m taskforge_conformance`` can start pytest before anything imports anyio.
_LOCATIONS = {
    "Env": "taskforge_conformance._harness",
    "RateLimiterConformance": "taskforge_conformance.ratelimit",
    "Fleet": "taskforge_conformance.scheduler",
    "ReferenceModel": "taskforge_conformance.model",
    "SchedulerConformance": "taskforge_conformance.scheduler",
    "StorageConformance": "taskforge_conformance.suite",
    "active_profile": "taskforge_conformance.profiles",
    "expand_url": "taskforge_conformance.url",
    "scenario": "taskforge_conformance.suite",
    "storage_from_url": "taskforge_conformance.url",
    "suite_settings": "taskforge_conformance.profiles",
}


def __getattr__(name: str) -> Any:
    module = _LOCATIONS.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(module), name)
