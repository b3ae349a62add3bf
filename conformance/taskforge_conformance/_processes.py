"""The child side of the multi-process claim test.

Each child process builds its own storage on the same store -- by calling the suite class's
``make_storage`` with the same directory -- waits at a barrier so that all claim at once, then
claims and completes small batches until nothing is left, and writes the ids it got to a file.
"""

from __future__ import annotations

import json
import pathlib
from typing import TYPE_CHECKING, Any

import anyio
import anyio.to_thread

from taskforge_conformance._harness import LEASE
from taskforge_core.clock import FakeClock
from taskforge_core.ids import uuid7
from taskforge_core.models import ClaimRequest, Completion, QueueShare

if TYPE_CHECKING:
    from taskforge_conformance.suite import StorageConformance

__all__ = ["claim_until_empty"]


def claim_until_empty(
    suite: type[StorageConformance], directory: str, out: str, start: Any
) -> None:
    """Run in a child process (spawned, so ``suite`` must be importable by name)."""

    async def main() -> list[str]:
        storage = await suite().make_storage(FakeClock(), pathlib.Path(directory))
        await storage.open()
        got: list[str] = []
        try:
            await anyio.to_thread.run_sync(start.wait)
            worker = uuid7()
            request = ClaimRequest(
                worker_id=worker,
                shares=(QueueShare(name="default", limit=5),),
                limit=5,
                lease=LEASE,
            )
            while claimed := await storage.claim(request):
                got.extend(str(c.job.id) for c in claimed)
                await storage.complete(
                    [Completion(job_id=c.job.id, execution_id=c.execution_id) for c in claimed]
                )
        finally:
            await storage.close()
        return got

    got = anyio.run(main, backend="asyncio")
    pathlib.Path(out).write_text(json.dumps(got), encoding="utf-8")
