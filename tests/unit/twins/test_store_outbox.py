"""The SQLite store and the outbox, without a broker (the sender is a fault-injecting fake)."""

from __future__ import annotations

import asyncio
import dataclasses
from pathlib import Path
from typing import Any

import pytest

from device_models import Section, write_change
from edge_agent.twins.outbox import Metrics, Outbox, OutboxSettings
from edge_agent.twins.payloads import Code, RequestError
from edge_agent.twins.twin_store import (
    DeviceRecord,
    DeviceState,
    Durability,
    StoreWrite,
    TwinStore,
)


def open_store(path: Path) -> TwinStore:
    return TwinStore(path / "t.sqlite3", node="n1", durability=Durability.FULL)


def test_device_rows_and_outbox_commit_together_and_survive_reopen(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    origin = store.origin
    replica, change = write_change(store.new_replica(), Section.REPORTED, {"t": 1}, now=5.0)
    record = DeviceRecord(
        device_id="d1",
        model="m",
        state=DeviceState.ACTIVE,
        created=1.0,
        replica=replica,
        recent=(("r1", {"code": 200}),),
    )
    store.commit(StoreWrite(devices={"d1": record}, outbox=[{"change": change.to_json()}]))
    store.close()
    again = open_store(tmp_path)
    assert again.origin == origin
    assert again.device("d1") == record
    assert again.outbox_size() == 1
    [(row_id, body)] = again.outbox_peek(limit=10, max_bytes=10_000)
    again.outbox_remove_through(row_id)
    assert again.outbox_size() == 0
    assert '"seq":1' in body


def test_a_failed_commit_writes_nothing(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    broken: Any = {"not json": {1, 2}}
    with pytest.raises(TypeError):
        store.commit(StoreWrite(outbox=[{"ok": 1}, broken]))
    assert store.outbox_size() == 0


def test_peek_respects_byte_budget_but_always_returns_one(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    store.commit(StoreWrite(outbox=[{"x": "a" * 100} for _ in range(5)]))
    assert len(store.outbox_peek(limit=10, max_bytes=250)) == 2
    assert len(store.outbox_peek(limit=10, max_bytes=1)) == 1
    assert len(store.outbox_peek(limit=3, max_bytes=10_000)) == 3


class FlakySender:
    def __init__(self, failures: int) -> None:
        self.failures = failures
        self.batches: list[list[dict[str, Any]]] = []
        self.done = asyncio.Event()

    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        if self.failures:
            self.failures -= 1
            raise ConnectionError("injected")
        self.batches.append(batch)
        self.done.set()


async def test_outbox_retries_then_removes_only_delivered(tmp_path: Path) -> None:
    store = open_store(tmp_path)
    sender = FlakySender(failures=2)
    metrics = Metrics()
    settings = OutboxSettings(retry_initial=0.001, retry_max=0.002)
    outbox = Outbox(store=store, sender=sender, settings=settings, metrics=metrics)
    store.commit(StoreWrite(outbox=[{"kind": "a", "n": i} for i in range(3)]))
    async with asyncio.TaskGroup() as group:
        task = group.create_task(outbox.run(), name="test.outbox")
        outbox.notify()
        await sender.done.wait()
        task.cancel()
    [batch] = sender.batches
    assert [r["n"] for r in batch] == [0, 1, 2]
    assert [r["outboxId"] for r in batch] == [1, 2, 3]
    assert store.outbox_size() == 0
    assert metrics.delivery_failures == 2
    assert metrics.delivered_records == 3


def test_full_outbox_refuses_loudly(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    store = open_store(tmp_path)
    metrics = Metrics()
    settings = OutboxSettings(max_records=2, availability_headroom=1)
    outbox = Outbox(store=store, sender=FlakySender(0), settings=settings, metrics=metrics)
    store.commit(StoreWrite(outbox=[{"n": 1}, {"n": 2}]))
    with pytest.raises(RequestError) as caught:
        outbox.check_room(1)
    assert caught.value.code is Code.OUTBOX_FULL
    outbox.check_room(1, availability=True)  # availability has headroom
    assert metrics.refused_outbox_full == 1
    assert "outbox FULL" in caplog.text


def test_record_is_frozen() -> None:
    assert dataclasses.is_dataclass(DeviceRecord)
