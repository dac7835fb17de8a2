"""A simulated cluster agent's end of the ``fleet`` stream, for ``agents_load.py --fleet``.

One ``FleetSim`` per simulated cluster, run beside its tunnel session: it opens the ``fleet``
stream the way ``edge_agent/cluster/fleet_link.py`` does and speaks the real protocol
(``fleet_model/wire.py``): a ``hello`` with the works it holds and fixed claims, a ``lease``
every ``leaseDurationSeconds`` the hub sets, and for every ``work`` a ``status`` that says
Applied and Available at the Work's generation (``applied_status``); a ``delete`` is answered
with ``removed``. It runs no member cluster: what it measures is the hub (controller, store,
stream) and the tunnel, not an applier. Works held live in memory only (a load-process restart
starts from nothing, and the hub's resend after ``hello`` covers it).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from fleet_model import wire
from fleet_model.work import rfc3339, set_condition
from tunnel_aio import StreamError, StreamRejectedError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode

OPEN_TIMEOUT_S = 15.0
REOPEN_DELAY_S = 1.0
"""Seconds before a simulated agent opens its fleet stream again after it ended."""
CLAIMS: Mapping[str, str] = {
    "kubernetes.version": "v1.36.3",
    "platform": "kwok",
    "nodes": "3",
}
ALLOCATABLE: Mapping[str, str] = {"cpu": "4", "memory": "16Gi"}


@dataclass(slots=True)
class FleetCounters:
    """What every simulated agent of the load process did, summed (for its ``status`` line)."""

    streams: int = 0
    works: int = 0
    statuses: int = 0
    leases: int = 0
    deletes: int = 0
    refused: int = 0
    errors: int = 0

    def document(self) -> dict[str, int]:
        return {
            "streams": self.streams,
            "works": self.works,
            "statuses": self.statuses,
            "leases": self.leases,
            "deletes": self.deletes,
            "refused": self.refused,
            "errors": self.errors,
        }


def applied_status(document: Mapping[str, Any], *, now: float) -> dict[str, Any]:
    """The status a healthy cluster reports for ``document`` (a Work): Applied and Available.

    Conditions are made by the hub's own ``set_condition`` (so their shape is the agent's), at
    the Work's ``metadata.generation``: the hub counts a Work applied only when the Applied
    condition observed its current generation.
    """
    metadata = document.get("metadata")
    generation = metadata.get("generation") if isinstance(metadata, Mapping) else None
    if isinstance(generation, bool) or not isinstance(generation, int) or generation < 1:
        raise ValueError("a Work's metadata.generation must be a positive integer")
    rows = (
        ("Applied", "True", "AppliedManifestWorkComplete", "every manifest applied (simulated)"),
        ("Available", "True", "ResourcesAvailable", "every resource exists (simulated)"),
        ("Degraded", "False", "AsExpected", ""),
        ("Progressing", "False", "AsExpected", ""),
    )
    return {
        "conditions": [
            set_condition(
                [],
                kind=kind,
                status=status,
                reason=reason,
                message=message,
                generation=generation,
                now=now,
            )
            for kind, status, reason, message in rows
        ],
        "observedGeneration": generation,
        "appliedAt": rfc3339(now),
    }


@dataclass(slots=True)
class FleetSim:
    """One simulated cluster's works and its fleet stream; ``run`` is its session task."""

    name: str
    counters: FleetCounters
    held: dict[str, int] = field(default_factory=dict)
    lease_seconds: int = 10
    _lock: asyncio.Lock = field(default_factory=asyncio.Lock)
    _lease_changed: asyncio.Event = field(default_factory=asyncio.Event)

    async def run(self, connection: TunnelConnection) -> None:
        """Keep one fleet stream open while ``connection`` lives (cancelled with the session)."""
        while not connection.terminated:
            try:
                stream = await connection.open_stream(wire.FLEET_TARGET, timeout=OPEN_TIMEOUT_S)
            except StreamRejectedError:
                self.counters.refused += 1
                return
            except (StreamError, TimeoutError, ConnectionError):
                self.counters.errors += 1
                return
            self.counters.streams += 1
            try:
                await self._serve(stream)
            except* wire.WireError:
                self.counters.errors += 1
                with contextlib.suppress(StreamError):
                    stream.reset(ErrorCode.PROTOCOL_ERROR, "bad message")
            except* (StreamError, EOFError):
                pass  # the session or the stream ended: open it again while the session lives
            await asyncio.sleep(REOPEN_DELAY_S)

    async def _send(self, stream: TunnelStream, message: wire.AgentMessage) -> None:
        data = wire.encode(message)
        async with self._lock:
            await stream.write(data)

    async def _serve(self, stream: TunnelStream) -> None:
        await self._send(
            stream,
            wire.Hello(
                works=dict(self.held),
                claims=CLAIMS,
                allocatable=ALLOCATABLE,
                capacity=ALLOCATABLE,
                apiserver_healthy=True,
            ),
        )
        async with asyncio.TaskGroup() as group:
            lease = group.create_task(self._renew(stream), name=f"fleet.lease[{self.name}]")
            try:
                await self._read(stream)
            finally:
                lease.cancel()

    async def _read(self, stream: TunnelStream) -> None:
        decoder = wire.Decoder(sender="cloud")
        while chunk := await stream.read():
            for message in decoder.feed(chunk):
                await self._on_message(stream, message)
        raise EOFError("the cloud ended the fleet stream")

    async def _on_message(
        self, stream: TunnelStream, message: wire.AgentMessage | wire.CloudMessage
    ) -> None:
        if isinstance(message, wire.Settings):
            self.lease_seconds = message.lease_duration_seconds
            self._lease_changed.set()
        elif isinstance(message, wire.WorkMessage):
            self.counters.works += 1
            self.held[message.name] = message.resource_version
            status = applied_status(message.document, now=time.time())
            await self._send(
                stream,
                wire.Status(
                    work=message.name, resource_version=message.resource_version, status=status
                ),
            )
            self.counters.statuses += 1
        elif isinstance(message, wire.Delete):
            self.counters.deletes += 1
            self.held.pop(message.work, None)
            await self._send(stream, wire.Removed(work=message.work))

    async def _renew(self, stream: TunnelStream) -> None:
        while True:
            self._lease_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_seconds):
                    await self._lease_changed.wait()
                    continue  # a new period: start it now
            await self._send(stream, wire.LeaseRenewal(apiserver_healthy=True))
            self.counters.leases += 1
