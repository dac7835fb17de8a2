"""CloudTwinReplica.end_waits: a stopping server answers its twin long-polls at once.

The process-level check (SIGTERM, exit time) is tests/integration/twins_e2e/test_shutdown.py.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from pathlib import Path

import pytest

from device_models import Section
from tunnel_server.twins import CloudTwinReplica, CloudTwinsSettings
from tunnel_server.twins.models import load_models
from tunnel_server.twins.store import TwinStore

KEY = ("edge-1", "th-0")
LONG = 30.0  # the wait asked for; the guards below are far shorter
GUARD = 2.0  # a guard against hangs, not a measurement


@pytest.fixture
def cloud(tmp_path: Path) -> Iterator[CloudTwinReplica]:
    settings = CloudTwinsSettings()
    store = TwinStore(
        tmp_path / "twins.sqlite3",
        durability=settings.durability,
        cache_devices=100,
        max_dead_letters=100,
    )
    cloud = CloudTwinReplica(store=store, models=load_models(None), settings=settings)
    origin = f"{KEY[0]}.boot1"
    record = {"outboxId": 1, "kind": "device", "device": KEY[1], "origin": origin}
    record |= {"model": "thermostat", "modelVersion": "1.0.0"}
    cloud.apply_batch(node=KEY[0], origin=origin, records=[record])
    yield cloud
    store.close()


async def test_waiting_long_polls_end_with_the_twin_as_it_is(cloud: CloudTwinReplica) -> None:
    async with asyncio.timeout(GUARD), asyncio.TaskGroup() as group:
        polls = [
            group.create_task(
                cloud.wait_version(KEY, {Section.DESIRED: 5}, within=LONG), name=f"poll-{i}"
            )
            for i in range(3)
        ]
        await asyncio.sleep(0)  # each poll runs up to its wait (they were scheduled first)
        assert cloud.waiters == 3
        assert not any(poll.done() for poll in polls)
        cloud.end_waits()
    assert cloud.stopping
    assert cloud.waiters == 0
    for poll in polls:
        row = poll.result()
        assert row is not None
        assert row.replica.twin.desired.version == 0


async def test_a_long_poll_after_the_stop_does_not_wait(cloud: CloudTwinReplica) -> None:
    cloud.end_waits()
    async with asyncio.timeout(GUARD):
        row = await cloud.wait_version(KEY, {Section.REPORTED: 5}, within=LONG)
    assert row is not None
    assert cloud.waiters == 0
