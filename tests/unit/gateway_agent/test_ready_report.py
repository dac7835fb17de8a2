"""The agent's ready-endpoint counts on the fleet stream: with each lease, debounced on change."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
from collections.abc import Callable
from typing import Any, cast

from edge_agent.cluster.fleet_link import FleetLink, FleetLinkSettings
from fleet_model import wire
from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.stream import _ready

MIN_INTERVAL = 0.3


class Applier:
    def on_status(self, callback: Callable[[str, int, dict[str, Any]], None]) -> None:
        pass

    def works(self) -> dict[str, int]:
        return {}


class Source:
    """A gateway's counts, changed by the test."""

    def __init__(self, report: dict[str, int] | None) -> None:
        self.revision = 0
        self.report = report
        self._changed = asyncio.Event()

    def ready_revision(self) -> int:
        return self.revision

    async def wait_ready_changed(self, past: int, timeout: float) -> int:  # noqa: ASYNC109
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                while self.revision <= past:
                    await self._changed.wait()
        return self.revision

    def ready_report(self) -> dict[str, int] | None:
        return None if self.report is None else dict(self.report)

    def set(self, report: dict[str, int]) -> None:
        self.revision += 1
        self.report = report
        self._changed.set()
        self._changed = asyncio.Event()


class Writer:
    def __init__(self) -> None:
        self.sent: list[tuple[float, wire.LeaseRenewal]] = []
        self._sent = asyncio.Event()

    async def until(self, condition: Callable[[], bool], within: float = 10.0) -> None:
        async with asyncio.timeout(within):
            while not condition():
                await self._sent.wait()
                self._sent.clear()

    async def send(self, message: wire.AgentMessage) -> None:
        assert isinstance(message, wire.LeaseRenewal)
        # What goes out passes the wire as the hub decodes it.
        assert wire.Decoder(sender="agent").feed(wire.encode(message)) == [message]
        self.sent.append((asyncio.get_running_loop().time(), message))
        self._sent.set()


def _link(source: Source) -> FleetLink:
    settings = FleetLinkSettings(ready_min_interval=MIN_INTERVAL)
    return FleetLink(
        cast("Any", Applier()),
        inventory=lambda: None,
        healthy=lambda: True,
        settings=settings,
        ready=source,
    )


async def test_changes_go_at_once_then_at_most_once_per_interval_with_the_latest() -> None:
    source = Source({"demo/web:80": 2})
    link, writer = _link(source), Writer()
    async with asyncio.TaskGroup() as group:
        task = group.create_task(link._report_ready(source, cast("Any", writer)), name="ready")
        await writer.until(lambda: len(writer.sent) == 1)  # a new stream: the counts at once
        assert writer.sent[0][1].ready_endpoints == {"demo/web:80": 2}
        for count in (1, 0, 3, 0):  # a rolling update: many changes within one interval
            source.set({"demo/web:80": count})
            await asyncio.sleep(0)
        await writer.until(lambda: writer.sent[-1][1].ready_endpoints == {"demo/web:80": 0})
        source.set({"demo/web:80": 0})  # the same counts again: nothing to send
        await asyncio.sleep(MIN_INTERVAL * 2)
        task.cancel()
    times = [at for at, _ in writer.sent]
    assert len(writer.sent) == 2, [m.ready_endpoints for _, m in writer.sent]
    assert all(b - a >= MIN_INTERVAL * 0.99 for a, b in itertools.pairwise(times))
    assert link.ready_reports == len(writer.sent)
    assert link.status()["ready_endpoints"] == {"demo/web:80": 0}


async def test_every_lease_carries_the_counts_and_none_before_the_first_list() -> None:
    source = Source(None)
    link = _link(source)
    assert link._lease().ready_endpoints is None  # not listed yet: not reported
    source.set({"demo/web:80": 1})
    assert link._lease().ready_endpoints == {"demo/web:80": 1}
    without = FleetLink(cast("Any", Applier()), inventory=lambda: None, healthy=lambda: None)
    assert "readyEndpoints" not in without._lease().to_json()  # no gateway: no field at all


def test_the_hub_keeps_counts_until_new_ones_and_a_hello_drops_them() -> None:
    held = Lease(renewed_at=1.0, apiserver_healthy=True, ready_endpoints={"demo/web:80": 0})
    plain = wire.LeaseRenewal(apiserver_healthy=True)
    assert _ready(plain, held) is held.ready_endpoints  # kept (the same object)
    assert _ready(plain, None) is None
    counted = wire.LeaseRenewal(apiserver_healthy=True, ready_endpoints={"demo/web:80": 4})
    assert _ready(counted, held) == {"demo/web:80": 4}
    assert _ready(wire.Hello(works={}), held) is None
