"""The outbox on /metrics: backlog size, the oldest record's age, deliveries and failures.

A real TwinStore on disk, a sender that refuses until it is told to accept, and a clock the
test moves: the age follows the oldest *waiting* record, and drops when it is delivered.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from daemon_support.twin_database import Durability
from edge_agent.twins.outbox import Metrics, Outbox, OutboxCollector, OutboxSettings
from edge_agent.twins.twin_store import StoreWrite, TwinStore
from tests.harness.waiting import eventually_async

pytestmark = pytest.mark.timeout(30)


class Cloud:
    """A sender that fails while ``down`` is set, and keeps what it accepted."""

    def __init__(self) -> None:
        self.down = True
        self.accepted: list[dict[str, Any]] = []

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        await asyncio.sleep(0)
        if self.down:
            raise ConnectionError("cloud unreachable")
        self.accepted += batch


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def sample(registry: prometheus_client.CollectorRegistry, name: str) -> float:
    value = registry.get_sample_value(name)
    assert value is not None, name
    return value


def add(store: TwinStore, outbox: Outbox, count: int) -> None:
    store.commit(StoreWrite(outbox=[{"kind": "test", "n": n} for n in range(count)]))
    outbox.notify()


async def test_backlog_and_age_follow_the_oldest_waiting_record(tmp_path: Path) -> None:
    store = TwinStore(tmp_path / "t.sqlite3", node="n1", durability=Durability.NORMAL)
    cloud, clock, metrics = Cloud(), Clock(), Metrics()
    settings = OutboxSettings(retry_initial=0.01, retry_max=0.02, batch_records=2)
    outbox = Outbox(store=store, sender=cloud, settings=settings, metrics=metrics, clock=clock)
    registry = prometheus_client.CollectorRegistry()
    registry.register(OutboxCollector(outbox))
    try:
        assert sample(registry, "edge_agent_twins_outbox_records") == 0
        assert sample(registry, "edge_agent_twins_outbox_oldest_age_seconds") == 0
        add(store, outbox, 2)  # at t=1000
        clock.now += 60
        add(store, outbox, 1)  # at t=1060
        clock.now += 40
        assert sample(registry, "edge_agent_twins_outbox_records") == 3
        assert sample(registry, "edge_agent_twins_outbox_oldest_age_seconds") == 100
        async with asyncio.TaskGroup() as group:
            task = group.create_task(outbox.run(), name="test.outbox")

            async def failures() -> float:
                return sample(registry, "edge_agent_twins_outbox_delivery_failures_total")

            await eventually_async(failures, lambda n: n >= 2, what="failed deliveries")
            assert sample(registry, "edge_agent_twins_outbox_records") == 3
            cloud.down = False
            outbox.kick()

            async def delivered() -> float:
                return sample(registry, "edge_agent_twins_outbox_delivered_records_total")

            await eventually_async(delivered, lambda n: n == 3, what="all delivered")
            task.cancel()
        assert sample(registry, "edge_agent_twins_outbox_records") == 0
        assert sample(registry, "edge_agent_twins_outbox_oldest_age_seconds") == 0
        assert sample(registry, "edge_agent_twins_outbox_refused_total") == 0
        assert len(cloud.accepted) == 3
    finally:
        store.close()


async def test_age_after_a_partial_delivery_is_the_next_records(tmp_path: Path) -> None:
    store = TwinStore(tmp_path / "t.sqlite3", node="n1", durability=Durability.NORMAL)
    clock = Clock()
    outbox = Outbox(
        store=store, sender=Cloud(), settings=OutboxSettings(), metrics=Metrics(), clock=clock
    )
    try:
        add(store, outbox, 2)  # ids 1-2 at t=1000
        clock.now += 0.5
        add(store, outbox, 1)  # id 3 within the resolution: counts from t=1000 too
        clock.now += 30
        add(store, outbox, 1)  # id 4 at t=1030.5
        clock.now += 10
        assert outbox.oldest_age() == 40.5
        store.outbox_remove_through(3)
        assert outbox.oldest_age() == 10
        store.outbox_remove_through(4)
        assert outbox.oldest_age() == 0
    finally:
        store.close()


def test_records_found_at_start_count_from_the_start(tmp_path: Path) -> None:
    path = tmp_path / "t.sqlite3"
    store = TwinStore(path, node="n1", durability=Durability.NORMAL)
    store.commit(StoreWrite(outbox=[{"kind": "test"}]))
    clock = Clock()
    outbox = Outbox(
        store=store, sender=Cloud(), settings=OutboxSettings(), metrics=Metrics(), clock=clock
    )
    try:
        clock.now += 5
        assert outbox.oldest_age() == 5
    finally:
        store.close()
