"""The hub's one reader of the change log hands each cluster's stream its own Works' changes."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tunnel_server.fleet.hub.store import Change, FleetEvents
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore
from tunnel_server.fleet.hub.stream_fanout import ChangeFanout


class CountingStore(SqliteFleetStore):
    """The real store, counting how often the change log is read."""

    reads = 0

    def changes_since(self, revision: int, *, kind: str | None = None) -> list[Change]:
        self.reads += 1
        return super().changes_since(revision, kind=kind)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = CountingStore(tmp_path / "fleet.db", changes_kept=50)
    yield opened
    opened.close()


def _fanout(store: SqliteFleetStore, *, max_pending: int = 100) -> ChangeFanout:
    events = FleetEvents(store.revision)
    return ChangeFanout(store, events, follow_timeout=30.0, max_pending=max_pending)


def _work(store: SqliteFleetStore, name: str, cluster: str, **spec: Any) -> None:
    store.put("Work", name, labels={}, annotations={}, spec={"clusterName": cluster, **spec}, now=1)


def _names(changes: list[Change] | None) -> list[tuple[str, str]]:
    assert changes is not None
    return [(change.type, change.object.name) for change in changes]


def test_each_stream_gets_its_own_clusters_works_from_one_read(store: CountingStore) -> None:
    fanout = _fanout(store)
    subscriptions = {f"c{i}": fanout.subscribe(f"c{i}") for i in range(100)}
    _work(store, "w1", "c1")
    _work(store, "w2", "c2")
    _work(store, "w1", "c1", image="v2")
    store.delete("Work", "w2")
    store.put("Placement", "p", labels={}, annotations={}, spec={}, now=1)
    fanout.step()
    assert store.reads == 1  # not one per stream
    assert _names(subscriptions["c1"].take()) == [("ADDED", "w1"), ("MODIFIED", "w1")]
    assert _names(subscriptions["c2"].take()) == [("ADDED", "w2"), ("DELETED", "w2")]
    assert _names(subscriptions["c3"].take()) == []
    assert not subscriptions["c1"].ready  # taken
    fanout.step()  # nothing new: the log is not read again
    assert store.reads == 1


def test_a_moved_work_reaches_the_cluster_it_left(store: CountingStore) -> None:
    _work(store, "w", "a")
    fanout = _fanout(store)
    a, b = fanout.subscribe("a"), fanout.subscribe("b")
    _work(store, "w", "b")
    fanout.step()
    assert _names(a.take()) == [("MODIFIED", "w")]
    assert _names(b.take()) == [("MODIFIED", "w")]


def test_a_stream_gets_only_what_was_written_after_it_subscribed(store: CountingStore) -> None:
    fanout = _fanout(store)
    early = fanout.subscribe("c")
    _work(store, "old", "c")
    late = fanout.subscribe("c")  # its catch-up read already holds "old"
    _work(store, "new", "c")
    fanout.step()
    assert _names(early.take()) == [("ADDED", "old"), ("ADDED", "new")]
    assert _names(late.take()) == [("ADDED", "new")]


def test_a_managed_cluster_write_wakes_that_clusters_stream(store: CountingStore) -> None:
    fanout = _fanout(store)
    mine, other = fanout.subscribe("c"), fanout.subscribe("d")
    store.put("ManagedCluster", "c", labels={}, annotations={}, spec={}, now=1)
    fanout.step()
    assert mine.ready
    assert not other.ready
    assert mine.take() == []  # a poke carries no change: the stream re-reads its record


def test_a_stream_that_falls_behind_resends_instead_of_queueing(store: CountingStore) -> None:
    fanout = _fanout(store, max_pending=3)
    slow = fanout.subscribe("c")
    for i in range(5):
        _work(store, f"w{i}", "c")
    fanout.step()
    assert slow.take() is None  # resend everything from the store
    _work(store, "after", "c")
    fanout.step()
    assert _names(slow.take()) == [("ADDED", "after")]


def test_an_expired_change_log_makes_every_stream_resend(store: CountingStore) -> None:
    fanout = _fanout(store)
    a, b = fanout.subscribe("a"), fanout.subscribe("b")
    for i in range(60):  # the store keeps 50 changes
        _work(store, f"w{i}", "x")
    fanout.step()
    assert a.take() is None
    assert b.take() is None
    assert fanout.position == store.revision()


def test_an_unsubscribed_stream_gets_nothing(store: CountingStore) -> None:
    fanout = _fanout(store)
    gone = fanout.subscribe("c")
    fanout.unsubscribe(gone)
    fanout.unsubscribe(gone)  # twice is harmless
    _work(store, "w", "c")
    fanout.step()
    assert gone.take() == []


def test_run_follows_writes_as_they_are_notified(store: CountingStore) -> None:
    events = FleetEvents(store.revision)
    fanout = ChangeFanout(store, events, follow_timeout=30.0, max_pending=100)

    async def scenario() -> list[tuple[str, str]]:
        subscription = fanout.subscribe("c")
        async with asyncio.TaskGroup() as group:
            task = group.create_task(fanout.run(), name="test.fanout")
            _work(store, "w", "c")
            events.notify()
            async with asyncio.timeout(10):
                await subscription.wait(30.0)
            task.cancel()
        return _names(subscription.take())

    assert asyncio.run(scenario()) == [("ADDED", "w")]
