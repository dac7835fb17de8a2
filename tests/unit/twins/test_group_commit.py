"""Group commit: one transaction per batch, answered only once durable, acknowledged last.

Answers go out in arrival order and the broker holds them before the batch's messages are
acknowledged (an agent killed in between gets them again); a failed commit is answered
unavailable, then acknowledged.
"""

from __future__ import annotations

import json
import sqlite3
from pathlib import Path
from typing import Any

from edge_agent.twins.twin_store import StoreWrite
from tests.unit.twins.test_replica_unit import onboarded, reported, service


class RecordingPublisher:
    """Notes what the replica queues, and whether the batch was durable at that moment."""

    def __init__(self, folder: Path, events: list[str]) -> None:
        self._folder = folder
        self._events = events
        self.answers: list[dict[str, Any]] = []

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        self.publish_nowait(topic, payload, retain=retain)

    def publish_nowait(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert not retain or topic.endswith("/twin/delta")
        if topic.endswith("/twin/result"):
            self.answers.append(json.loads(payload))
            self._events.append(f"answer:{self.answers[-1]['rid']}:{durable(self._folder)}")


def durable(folder: Path) -> int:
    """Outbox records another connection sees: committed ones only."""
    with sqlite3.connect(folder / "t.sqlite3") as other:
        [count] = other.execute("SELECT COUNT(*) FROM outbox").fetchone()
    return int(count)


async def test_one_commit_then_answers_in_order_then_acknowledge(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboarded(twins, store, "t1")
    await onboarded(twins, store, "t2")
    events: list[str] = []
    publisher = RecordingPublisher(tmp_path, events)
    twins.attach(publisher)
    commits: list[int] = []
    original = store.commit

    def counting_commit(write: StoreWrite) -> None:
        commits.append(len(write.outbox))
        original(write)

    store.commit = counting_commit  # type: ignore[method-assign]
    batch = [
        reported(device, {"rid": f"{device}-{n}", "patch": {"temperature": n}})
        for n in range(1, 6)
        for device in ("t1", "t2")
    ]
    await twins.handle_batch(
        batch, committed=lambda: events.append(f"acknowledge:{durable(tmp_path)}")
    )
    assert commits == [10]  # ten reports, one transaction
    # Answered once all ten are durable, in arrival order; acknowledged after the answers.
    assert events[:-1] == [f"answer:{t}-{n}:10" for n in range(1, 6) for t in ("t1", "t2")]
    assert events[-1] == "acknowledge:10"
    assert {answer["code"] for answer in publisher.answers} == {200}
    store.close()


async def test_a_failed_commit_is_answered_unavailable_then_acknowledged(tmp_path: Path) -> None:
    twins, store = service(tmp_path)
    await onboarded(twins, store, "t1")
    events: list[str] = []
    publisher = RecordingPublisher(tmp_path, events)
    twins.attach(publisher)

    def failing_commit(write: StoreWrite) -> None:
        raise sqlite3.OperationalError(f"disk I/O error ({len(write.outbox)} records)")

    store.commit = failing_commit  # type: ignore[method-assign]
    await twins.handle_batch(
        [reported("t1", {"rid": "x1", "patch": {"temperature": 1}})],
        committed=lambda: events.append("acknowledge"),
    )
    assert events == ["answer:x1:0", "acknowledge"]
    assert publisher.answers[0]["reason"] == "unavailable"
    record = twins.device("t1")
    assert record is not None
    assert record.replica.twin.reported.values == {}  # nothing changed in memory
    store.close()
