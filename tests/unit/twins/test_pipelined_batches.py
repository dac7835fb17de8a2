"""Pipelined batches (replica.py rule 7) with a publisher whose PUBACKs the test releases.

Batch 2 is committed while batch 1's answers wait for their PUBACKs; each batch's messages
are acknowledged only once its answers are held and after every earlier batch; the pipeline
is bounded; a failed answer ends the session before anything more is committed; a session
that ends leaves its unacknowledged batches for the broker to send again.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Iterator
from pathlib import Path

import aiomqtt
import pytest

from edge_agent.twins.models import load_models
from edge_agent.twins.outbox import Metrics, Outbox, OutboxSettings
from edge_agent.twins.replica import MAX_UNACKNOWLEDGED_BATCHES, EdgeTwinReplica
from edge_agent.twins.topics import DeviceTopic
from edge_agent.twins.twin_store import Durability, TwinStore
from tests.harness.waiting import eventually_async
from tests.unit.twins.test_group_commit import durable
from tests.unit.twins.test_replica_unit import NeverSender, onboarded, reported


class GatedPublisher:
    """Holds every answer's PUBACK until the test releases (or fails) it by rid."""

    def __init__(self) -> None:
        self.sent: list[str] = []
        self._gates: dict[str, asyncio.Future[None]] = {}

    async def publish(self, topic: str, payload: bytes, *, retain: bool) -> None:
        assert retain == topic.endswith("/twin/delta")
        if not topic.endswith("/twin/result"):
            return  # retained deltas: acknowledged at once
        rid = str(json.loads(payload)["rid"])
        self.sent.append(rid)
        gate = self._gates.setdefault(rid, asyncio.get_running_loop().create_future())
        await gate

    def puback(self, rid: str) -> None:
        self._gates.setdefault(rid, asyncio.get_running_loop().create_future()).set_result(None)

    def refuse(self, rid: str) -> None:
        gate = self._gates.setdefault(rid, asyncio.get_running_loop().create_future())
        gate.set_exception(aiomqtt.MqttError("Disconnected"))


def batch_of(device: str, *rids: str) -> list[tuple[DeviceTopic, bytes]]:
    return [reported(device, {"rid": rid, "patch": {"temperature": 20}}) for rid in rids]


async def until(condition: Callable[[], bool], what: str) -> None:
    async def probe() -> bool:
        return condition()

    await eventually_async(probe, what=what, within=10.0)


async def settle() -> None:
    """Let every ready task run a few steps (a batch with room would be committed by then)."""
    for _ in range(10):
        await asyncio.sleep(0)


@pytest.fixture
def stores() -> Iterator[list[TwinStore]]:
    opened: list[TwinStore] = []
    yield opened
    for store in opened:
        store.close()


async def two_devices(
    tmp_path: Path,
    stores: list[TwinStore],
    *,
    max_unacknowledged_batches: int = MAX_UNACKNOWLEDGED_BATCHES,
) -> EdgeTwinReplica:
    store = TwinStore(tmp_path / "t.sqlite3", node="n1", durability=Durability.NORMAL)
    stores.append(store)
    metrics = Metrics()
    outbox = Outbox(store=store, sender=NeverSender(), settings=OutboxSettings(), metrics=metrics)
    twins = EdgeTwinReplica(
        store=store,
        outbox=outbox,
        models=load_models(None),
        metrics=metrics,
        max_payload_bytes=64 * 1024,
        max_cloud_change_bytes=512 * 1024,
        max_unacknowledged_batches=max_unacknowledged_batches,
    )
    await onboarded(twins, store, "t1")
    await onboarded(twins, store, "t2")
    return twins


async def test_next_batch_commits_while_pubacks_wait_and_acks_go_in_order(
    tmp_path: Path, stores: list[TwinStore]
) -> None:
    twins = await two_devices(tmp_path, stores)
    publisher = GatedPublisher()
    acked: list[str] = []
    async with twins.serving(publisher):
        await twins.handle_batch(batch_of("t1", "a1", "a2"), committed=lambda: acked.append("A"))
        # Returned before any PUBACK: batch B is read, applied and committed meanwhile.
        await twins.handle_batch(batch_of("t2", "b1"), committed=lambda: acked.append("B"))
        assert durable(tmp_path) == 3
        await until(
            lambda: publisher.sent == ["a1", "a2", "b1"], "publisher.sent == ['a1', 'a2', 'b1']"
        )
        publisher.puback("b1")
        publisher.puback("a1")
        await settle()
        assert acked == []  # B is held, but A still waits for a2
        publisher.puback("a2")
        await until(lambda: acked == ["A", "B"], "acked == ['A', 'B']")


async def test_the_pipeline_is_bounded(tmp_path: Path, stores: list[TwinStore]) -> None:
    twins = await two_devices(tmp_path, stores, max_unacknowledged_batches=2)
    publisher = GatedPublisher()
    acked: list[str] = []
    async with twins.serving(publisher):
        await twins.handle_batch(batch_of("t1", "a"), committed=lambda: acked.append("A"))
        await twins.handle_batch(batch_of("t1", "b"), committed=lambda: acked.append("B"))
        async with asyncio.TaskGroup() as group:
            third = group.create_task(
                twins.handle_batch(batch_of("t2", "c"), committed=lambda: acked.append("C")),
                name="third batch",
            )
            await settle()
            assert not third.done()
            assert durable(tmp_path) == 2  # the third batch waits for room before committing
            publisher.puback("a")
        assert durable(tmp_path) == 3
        publisher.puback("c")
        publisher.puback("b")
        await until(lambda: acked == ["A", "B", "C"], "acked == ['A', 'B', 'C']")


async def test_a_devices_unacknowledged_requests_stay_within_its_rid_memory(
    tmp_path: Path, stores: list[TwinStore]
) -> None:
    twins = await two_devices(tmp_path, stores)
    publisher = GatedPublisher()
    async with twins.serving(publisher):
        await twins.handle_batch(batch_of("t1", *(f"a{n}" for n in range(10))))
        # 10 + 10 > MAX_RECENT (16): the second batch waits until the first is acknowledged.
        async with asyncio.TaskGroup() as group:
            second = group.create_task(
                twins.handle_batch(batch_of("t1", *(f"b{n}" for n in range(10)))), name="second"
            )
            await settle()
            assert not second.done()
            assert durable(tmp_path) == 10
            for n in range(10):
                publisher.puback(f"a{n}")
        assert durable(tmp_path) == 20
        for n in range(10):
            publisher.puback(f"b{n}")


async def test_a_failed_answer_ends_the_session_before_more_is_committed(
    tmp_path: Path, stores: list[TwinStore]
) -> None:
    twins = await two_devices(tmp_path, stores)
    publisher = GatedPublisher()
    acked: list[str] = []

    async def session() -> None:
        async with twins.serving(publisher):
            await twins.handle_batch(batch_of("t1", "a"), committed=lambda: acked.append("A"))
            await twins.handle_batch(batch_of("t2", "b"), committed=lambda: acked.append("B"))
            publisher.refuse("a")
            publisher.puback("b")
            await until(lambda: publisher.sent == ["a", "b"], "both answers sent")
            await settle()
            await twins.handle_batch(batch_of("t2", "c"), committed=lambda: acked.append("C"))

    with pytest.raises(aiomqtt.MqttError):
        await session()
    assert acked == []  # B's answer is held, but A's is not: nothing is acknowledged
    assert durable(tmp_path) == 2  # c was not committed: the broker sends it again


async def test_a_session_that_ends_leaves_its_batches_unacknowledged(
    tmp_path: Path, stores: list[TwinStore]
) -> None:
    twins = await two_devices(tmp_path, stores)
    publisher = GatedPublisher()
    acked: list[str] = []

    class SessionLostError(Exception):
        pass

    async def session() -> None:
        async with twins.serving(publisher):
            await twins.handle_batch(batch_of("t1", "a"), committed=lambda: acked.append("A"))
            raise SessionLostError

    with pytest.raises(SessionLostError):  # unwrapped: the service's handlers see the real error
        await session()
    assert acked == []
    # The broker sends the message again on the next session: answered from the stored answer.
    again = GatedPublisher()
    async with twins.serving(again):
        await twins.handle_batch(batch_of("t1", "a"), committed=lambda: acked.append("A"))
        again.puback("a")
        await until(lambda: acked == ["A"], "acked == ['A']")
    assert durable(tmp_path) == 1  # applied once


async def test_a_batch_without_device_messages_is_acknowledged_in_its_turn(
    tmp_path: Path, stores: list[TwinStore]
) -> None:
    twins = await two_devices(tmp_path, stores)
    publisher = GatedPublisher()
    acked: list[str] = []
    async with twins.serving(publisher):
        await twins.handle_batch(batch_of("t1", "a"), committed=lambda: acked.append("A"))
        await twins.handle_batch([], committed=lambda: acked.append("claims"))
        await settle()
        assert acked == []  # the claims came after A: acknowledged after it
        publisher.puback("a")
        await until(lambda: acked == ["A", "claims"], "both acknowledged in order")
    await twins.handle_batch([], committed=lambda: acked.append("outside"))
    assert acked == ["A", "claims", "outside"]  # no pipeline: at once
