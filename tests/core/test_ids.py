"""Time-ordered ids: the RFC 9562 layout, strict order within a process, and fresh randomness
in a forked child (random bytes are read from ``os.urandom`` in chunks)."""

from __future__ import annotations

import copy
import itertools
import os
import pickle
import time
import uuid
import warnings

import pytest

from taskforge_core import ids
from taskforge_core.ids import uuid7

RAND_B = (1 << 62) - 1


def test_layout_is_uuid_version_7_with_the_current_millisecond() -> None:
    before = time.time_ns() // 1_000_000
    made = uuid7()
    after = time.time_ns() // 1_000_000
    assert made.version == 7
    assert made.variant == uuid.RFC_4122
    # The counter may borrow a millisecond or two when ids are made very fast.
    assert before <= made.int >> 80 <= after + 2


def test_an_id_behaves_exactly_like_one_built_by_uuid_uuid() -> None:
    made = uuid7()
    same = uuid.UUID(int=made.int)
    assert (made, hash(made), str(made), made.bytes) == (same, hash(same), str(same), same.bytes)
    assert made.is_safe is same.is_safe
    assert pickle.loads(pickle.dumps(made)) == made
    assert copy.deepcopy(made) == made
    assert uuid.UUID(str(made)) == made


def test_ids_strictly_increase_across_many_random_chunks() -> None:
    made = [uuid7() for _ in range(20 * ids._RANDOM_CHUNK // ids._PER_ID)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert len({u.int & RAND_B for u in made}) == len(made)  # random bits never reused


def test_a_full_counter_borrows_the_next_millisecond(monkeypatch: pytest.MonkeyPatch) -> None:
    # A millisecond after the last id so far: the ids below borrow only a few milliseconds.
    frozen = max(time.time_ns(), (ids._last_ms + 1) * 1_000_000)
    monkeypatch.setattr(time, "time_ns", lambda: frozen)
    made = [uuid7() for _ in range(3 * 4096)]
    assert all(a < b for a, b in itertools.pairwise(made))
    assert made[-1].int >> 80 > frozen // 1_000_000  # the clock stood still; ids did not


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_reuse_the_parents_random_bytes() -> None:
    uuid7()  # the parent now holds a chunk of random bytes
    read, write = os.pipe()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # "multi-threaded process"
        pid = os.fork()
    if pid == 0:  # the child: report its next id and leave at once
        try:
            os.write(write, uuid7().bytes)
        finally:
            os._exit(0)
    os.close(write)
    mine = uuid7()
    with os.fdopen(read, "rb") as pipe:
        theirs = uuid.UUID(bytes=pipe.read())
    os.waitpid(pid, 0)
    assert theirs.version == 7
    assert theirs.int & RAND_B != mine.int & RAND_B
