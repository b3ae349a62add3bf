"""Hypothesis settings for the conformance suite, chosen by ``TASKFORGE_CONFORMANCE_PROFILE``.

``quick`` (the default) runs 30 state-machine examples of up to 100 steps, enough to catch most
broken promises in seconds; ``thorough`` runs 300 of up to 200 steps, for CI, as ten test items
of 30 examples each (:data:`SHARDS`) so that each stays inside a per-test timeout. Any other value
names a profile you registered yourself with :func:`hypothesis.settings.register_profile` (for
example in your ``conftest.py``).

The suite applies these settings to its own tests only; it never loads a global hypothesis
profile, so your other property tests keep theirs. Storage calls are I/O, so there is no
deadline.
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, settings

from taskforge_conformance._names import PROFILE_ENV

__all__ = [
    "DEFAULT_PROFILE",
    "PROFILES",
    "PROFILE_ENV",
    "SHARDS",
    "active_profile",
    "machine_shards",
    "suite_settings",
]

#: The profile used when the variable is unset or empty.
DEFAULT_PROFILE = "quick"

#: The bundled profiles, also registered with hypothesis as ``taskforge-conformance-<name>``.
#: Every phase but "explain", which re-runs a shrunk stateful example hundreds of times to
#: annotate it and can take minutes for one failure.
_PHASES = (Phase.explicit, Phase.reuse, Phase.generate, Phase.target, Phase.shrink)

PROFILES: dict[str, settings] = {
    "quick": settings(
        max_examples=30,
        stateful_step_count=100,
        deadline=None,
        derandomize=False,
        phases=_PHASES,
        suppress_health_check=(HealthCheck.too_slow,),
    ),
    "thorough": settings(
        max_examples=300,
        stateful_step_count=200,
        deadline=None,
        derandomize=False,
        phases=_PHASES,
        suppress_health_check=(HealthCheck.too_slow,),
    ),
}
#: How many test items the stateful test is split into, each running its share of the examples,
#: so that each stays well inside a per-test timeout (the project's is 120 s).
SHARDS = {"quick": 1, "thorough": 10}

for _name, _settings in PROFILES.items():
    settings.register_profile(f"taskforge-conformance-{_name}", _settings)


def active_profile() -> str:
    """The profile name the environment asks for (``quick`` by default)."""
    return os.environ.get(PROFILE_ENV, "").strip() or DEFAULT_PROFILE


def machine_shards() -> int:
    """Into how many test items the active profile splits the stateful test."""
    return SHARDS.get(active_profile(), 1)


def suite_settings(shards: int = 1) -> settings:
    """The hypothesis settings of the active profile, always without a deadline, with the
    examples of one of ``shards`` equal parts.

    Raises :class:`LookupError` naming the choices when the profile is unknown.
    """
    name = active_profile()
    chosen = PROFILES.get(name)
    if chosen is None:
        try:
            chosen = settings.get_profile(name)
        except Exception as exc:  # hypothesis raises InvalidArgument
            raise LookupError(
                f"{PROFILE_ENV}={name!r} is neither a bundled profile "
                f"({', '.join(PROFILES)}) nor a registered hypothesis profile"
            ) from exc
    return settings(chosen, deadline=None, max_examples=-(-chosen.max_examples // shards))
