"""The twin write coalescer of the Kubernetes twin store (pure: no API server needed).

One write per device per interval whatever its report rate, early when enough records wait,
within a token bucket; a batch acknowledged only once every write holding its records is
stored, in the edge's order; a failed write keeps its batches waiting. Hypothesis drives
random schedules against a reference model of what each write holds.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_server.twins.coalesce import Coalescer


def make(**options: float) -> Coalescer[str]:
    values = {"interval": 2.0, "max_pending": 4, "rate": 100.0, "burst": 10, **options}
    return Coalescer(
        interval=values["interval"],
        max_pending=int(values["max_pending"]),
        rate=values["rate"],
        burst=int(values["burst"]),
    )


def test_a_device_reporting_fast_is_written_once_per_interval() -> None:
    c = make()
    for tick in range(3):  # three batches within the interval, each touching "a"
        c.add("a", tick, now=0.5 * tick)
    assert c.due(1.9) == []
    assert c.next_deadline() == 2.0
    assert c.due(2.0) == ["a"]  # one write for the three batches
    assert c.written("a") == [0, 1, 2]
    assert c.pending == 0


def test_a_full_device_is_due_at_once_and_the_bucket_bounds_the_writes() -> None:
    c = make(max_pending=2, rate=1.0, burst=2)
    c.add("a", 1, now=0.0, records=2)
    assert c.due(0.0) == ["a"]  # full: not waiting for the interval
    for key in "bcd":
        c.add(key, 2, now=0.0)
    assert c.due(1.9) == []
    assert c.due(2.0) == ["b", "c"]  # the bucket is full again (2): two of three
    assert c.due(2.5) == []
    assert c.due(3.0) == ["d"]  # one token a second
    assert c.written("a") == [1]
    assert c.written("b") == []  # batch 2 waits for c and d
    assert c.written("c") == []
    assert c.written("d") == [2]


def test_records_arriving_during_a_write_wait_for_the_next_one() -> None:
    c = make()
    c.add("a", 1, now=0.0)
    assert c.due(2.0) == ["a"]
    c.add("a", 2, now=2.5)  # the write in flight does not hold these
    assert c.due(10.0) == []  # one write per device at a time
    assert c.written("a") == [1]
    assert c.due(10.0) == ["a"]
    assert c.written("a") == [2]


def test_a_failed_write_keeps_its_batches_until_a_later_one_is_stored() -> None:
    c = make()
    c.add("a", 1, now=0.0)
    assert c.due(2.0) == ["a"]
    c.add("a", 2, now=2.1)
    c.failed("a", now=3.0)
    assert c.due(4.9) == []
    assert c.due(5.0) == ["a"]  # one interval after the failure, with batch 2's records too
    assert c.written("a") == [1, 2]


def test_batches_are_acknowledged_in_order_and_an_empty_one_waits_its_turn() -> None:
    c = make()
    c.add("a", 1, now=0.0)
    c.add("b", 2, now=1.0)
    assert c.add_empty(3) == []  # batch 1 still waits
    assert c.due(2.0) == ["a"]
    assert c.due(3.0) == ["b"]
    assert c.written("b") == []  # batch 2 is stored but 1 is not
    assert c.written("a") == [1, 2, 3]
    assert c.add_empty(4) == [4]


def test_bad_bounds_are_refused() -> None:
    with pytest.raises(ValueError, match="max_pending"):
        make(max_pending=0)


Step = tuple[str, int, float]


class Reference:
    """What each write holds, kept beside the coalescer: the batches it may acknowledge."""

    def __init__(self, coalescer: Coalescer[str]) -> None:
        self.c = coalescer
        self.gathering: dict[str, set[int]] = {}  # batches not yet in a write, per device
        self.in_flight: dict[str, set[int]] = {}  # batches the write in flight holds
        self.unstored: dict[int, set[str]] = {}  # batch -> devices whose write is not stored
        self.acked: list[int] = []

    def add(self, key: str, batch: int, now: float) -> None:
        self.c.add(key, batch, now=now)
        self.gathering.setdefault(key, set()).add(batch)
        self.unstored[batch] = {key}

    def due(self, now: float) -> None:
        for key in self.c.due(now):
            assert key not in self.in_flight, "two writes of one device at once"
            self.in_flight[key] = self.gathering.pop(key, set())

    def written(self, key: str) -> None:
        for batch in self.in_flight.pop(key):
            self.unstored[batch].discard(key)
        for batch in self.c.written(key):
            assert not self.unstored[batch], f"{batch} acked, {self.unstored[batch]} unstored"
            self.acked.append(batch)

    def failed(self, key: str, now: float) -> None:
        self.gathering.setdefault(key, set()).update(self.in_flight.pop(key))
        self.c.failed(key, now=now)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["add", "due", "written", "failed"]),
            st.integers(min_value=0, max_value=3),
            st.floats(min_value=0.0, max_value=1.5),
        ),
        max_size=60,
    )
)
def test_a_batch_is_acked_only_after_every_write_holding_its_records(steps: list[Step]) -> None:
    ref = Reference(make(interval=1.0, max_pending=3, rate=2.0, burst=2))
    now, batch = 0.0, 0
    for op, index, dt in steps:
        now += dt
        key = "abcd"[index]
        if op == "add":
            batch += 1
            ref.add(key, batch, now)
        elif op == "due":
            ref.due(now)
        elif key in ref.in_flight:
            ref.written(key) if op == "written" else ref.failed(key, now)
    for _ in range(100):  # drain: every record written in the end, every batch acked in order
        now += 1.0
        ref.due(now)
        for key in list(ref.in_flight):
            ref.written(key)
    assert ref.acked == sorted(ref.unstored)
    assert ref.c.pending == 0
