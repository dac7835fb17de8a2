"""The agent end of the ``fleet`` stream: works from the hub, leases and work status to it.

A session task (``TunnelClient.session_tasks["fleet"]``) of a cluster-mode agent: for as long
as a tunnel session lives it keeps one ``fleet`` stream open (fleet_model/wire.py has the
messages, docs/fleet/stream.md the protocol):

* hello: the works the applier holds (name -> resourceVersion) and the cluster's claims
  (``kubernetes.version``, ``platform``, ``region``, ``zone``, ``nodes``), allocatable and
  capacity, and whether the member API server answers — all from the cluster status sample
  (``ClusterStatusSource.inventory()``), never collected twice;
* a lease every ``leaseDurationSeconds`` (10 until the hub's ``settings`` says otherwise), with
  the claims again only when they changed. The lease runs in its own task: applying a work,
  sending statuses, or a certificate renewal (the tunnel client's ``renew`` stream, over the
  same session) never holds it up — OCM's agents stopped renewing after a certificate change;
* with a gateway (``[cluster.gateway]``, ``ready``): every lease carries the ready endpoints of
  each Service port it serves (``lease.readyEndpoints``, bounded by the wire), and a change of
  them is sent at once as a lease of its own — at most one per ``ready_min_interval``, the
  latest counts when it goes (the cloud moves a backend's weight away at a count of 0, before
  a request fails). An older hub ignores the field (and an extra lease is a renewal);
* ``work`` → ``WorkApplier.set_work``; ``delete`` → ``WorkApplier.delete_work`` then
  ``removed``; the applier's status callbacks → ``status`` messages, latest per work only
  (coalesced, so the backlog is bounded by the number of works), all of them again on every
  new stream, with those the applier kept on disk (the hub writes only what changed).

While the stream is down the applier keeps its works applied (it does not depend on this
link). A stream that breaks is opened again (1 s, doubling to 30 s) while the session lives; a
cloud without the service (an older server) is asked again only on the next session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import math
from collections.abc import Callable
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

from edge_agent.cluster.status import ClusterInventory
from fleet_model import wire
from tunnel_aio import StreamError, StreamRejectedError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode, SessionState

__all__ = ["FleetLink", "FleetLinkSettings", "claims_of", "cpu_quantity", "memory_quantity"]

log = logging.getLogger("edge_agent.cluster.fleet_link")

_DRAIN_CHECK = 0.2
"""Seconds between looks at the session's state: a drain waits at most this for our stream."""


class Applier(Protocol):
    """What the link uses of ``edge_agent.cluster.works.WorkApplier``."""

    def works(self) -> dict[str, int]: ...
    def generations(self) -> dict[str, int]: ...
    def status(self, name: str) -> dict[str, Any] | None: ...
    async def set_work(self, document: dict[str, Any]) -> None: ...
    async def delete_work(self, name: str, *, propagation: str | None = None) -> None: ...
    def on_status(self, callback: Callable[[str, int, dict[str, Any]], None]) -> None: ...


class ReadySource(Protocol):
    """What the link uses of ``edge_agent.cluster.gateway.service.GatewayPart``."""

    def ready_revision(self) -> int: ...
    async def wait_ready_changed(self, past: int, timeout: float) -> int: ...  # noqa: ASYNC109
    def ready_report(self) -> dict[str, int] | None: ...


@dataclass(frozen=True, kw_only=True)
class FleetLinkSettings:
    open_timeout: float = 10.0
    """Seconds to wait for the cloud to accept the stream."""
    reopen_initial: float = 1.0
    """Seconds before opening a broken stream again; doubles up to ``reopen_max``."""
    reopen_max: float = 30.0
    """Seconds: the longest wait between attempts, so a fixed cloud is used within half a minute."""
    lease_seconds: int = 10
    """Seconds between leases until the hub's ``settings`` name its own (OCM's N; ours is 10)."""
    ready_min_interval: float = 1.0
    """Seconds between two leases sent for a change of ready endpoints: a rolling update changes
    them many times a second, and one message a second per cluster is what the hub should take;
    the one that goes carries the latest counts."""


# ------------------------------------------------------------------ claims


def cpu_quantity(cores: Decimal) -> str:
    """Cores as a Kubernetes quantity: ``"12"``, or millicores (``"9500m"``) when fractional."""
    milli = int((cores * 1000).to_integral_value())
    return str(milli // 1000) if milli % 1000 == 0 else f"{milli}m"


def memory_quantity(size: Decimal) -> str:
    """Bytes as a Kubernetes quantity with the largest binary suffix that is exact."""
    value = int(size.to_integral_value())
    for suffix in ("Ei", "Pi", "Ti", "Gi", "Mi", "Ki"):
        unit = 1024 ** ("KMGTPE".index(suffix[0]) + 1)
        if value and value % unit == 0:
            return f"{value // unit}{suffix}"
    return str(value)


def claims_of(inventory: ClusterInventory) -> dict[str, str]:
    """The cluster's claims (ManagedCluster ``status.clusterClaims``) from one sample."""
    claims = {
        "kubernetes.version": inventory.version,
        "platform": inventory.platform,
        "nodes": str(inventory.nodes),
    }
    if inventory.region is not None:
        claims["region"] = inventory.region
    if inventory.zone is not None:
        claims["zone"] = inventory.zone
    return claims


def resources_of(inventory: ClusterInventory) -> tuple[dict[str, str], dict[str, str]]:
    """``(allocatable, capacity)`` as quantities."""
    return (
        {
            "cpu": cpu_quantity(inventory.allocatable_cpu),
            "memory": memory_quantity(inventory.allocatable_memory),
        },
        {
            "cpu": cpu_quantity(inventory.capacity_cpu),
            "memory": memory_quantity(inventory.capacity_memory),
        },
    )


# ------------------------------------------------------------------ the link


class FleetLink:
    """Receives works over the tunnel into the applier; renews the lease; reports status."""

    def __init__(
        self,
        applier: Applier,
        *,
        inventory: Callable[[], ClusterInventory | None],
        healthy: Callable[[], bool | None],
        settings: FleetLinkSettings | None = None,
        ready: ReadySource | None = None,
    ) -> None:
        """``ready``: the gateway's ready-endpoint counts (settable later, before a session)."""
        self.applier = applier
        self.ready = ready
        self._ready_sent: dict[str, int] | None = None
        """The counts last sent on the current stream (None: none yet)."""
        self.ready_reports = 0
        self.settings = settings or FleetLinkSettings()
        self._inventory = inventory
        self._healthy = healthy
        self._latest: dict[str, tuple[int, dict[str, Any]]] = {}
        """Each work's latest status (resourceVersion, status): bounded by the works held."""
        self._dirty: set[str] = set()
        self._status_ready = asyncio.Event()
        self._cluster: str | None = None
        """This agent's cluster (its certificate's name), known once a session is up."""
        """Each received work's deleteOption, for a ``delete`` that does not name one."""
        self._sent_claims: tuple[dict[str, str], dict[str, str], dict[str, str]] | None = None
        """Claims, allocatable and capacity as last sent on the current stream."""
        self.lease_seconds = self.settings.lease_seconds
        self.leases = 0
        self.works_received = 0
        self.works_refused = 0
        self.deletes = 0
        self.statuses_sent = 0
        self.connected = False
        applier.on_status(self._on_status)

    def status(self) -> dict[str, object]:
        """The ``fleet`` part of the local API's /status."""
        return {
            "connected": self.connected,
            "lease_seconds": self.lease_seconds,
            "leases": self.leases,
            "works_received": self.works_received,
            "works_refused": self.works_refused,
            "deletes": self.deletes,
            "statuses_sent": self.statuses_sent,
            "ready_reports": self.ready_reports,
            "ready_endpoints": dict(self._ready_sent) if self._ready_sent is not None else None,
            "works": len(self.applier.works()),
            "claims": dict(self._sent_claims[0]) if self._sent_claims else None,
            "allocatable": dict(self._sent_claims[1]) if self._sent_claims else None,
            "capacity": dict(self._sent_claims[2]) if self._sent_claims else None,
        }

    def _on_status(self, name: str, resource_version: int, status: dict[str, Any]) -> None:
        self._latest[name] = (resource_version, status)
        self._dirty.add(name)
        self._status_ready.set()

    # ------------------------------------------------------------------ session task

    async def run_session(self, connection: TunnelConnection) -> None:
        """Session task: keep one ``fleet`` stream open while ``connection`` lives."""
        delay = self.settings.reopen_initial
        self._cluster = connection.name  # this agent's certificate name: its cluster
        while _usable(connection):
            try:
                stream = await connection.open_stream(
                    wire.FLEET_TARGET, timeout=self.settings.open_timeout
                )
            except StreamRejectedError as error:
                log.info("the cloud offers no fleet stream (%s); works stay as they are", error)
                return
            if await self._serve_until_draining(stream, connection):
                delay = self.settings.reopen_initial
            if not _usable(connection):
                return
            log.info("fleet stream closed; opening it again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reopen_max)

    async def _serve_until_draining(
        self, stream: TunnelStream, connection: TunnelConnection
    ) -> bool:
        """Serve the stream; reset it once the session drains, so the drain never waits on it."""
        try:
            async with asyncio.TaskGroup() as group:
                serving = group.create_task(self._serve(stream), name="fleet.stream")
                watch = group.create_task(_until_not_usable(connection), name="fleet.drain")
                await asyncio.wait({serving, watch}, return_when=asyncio.FIRST_COMPLETED)
                serving.cancel()
                watch.cancel()
        finally:
            self.connected = False
            with contextlib.suppress(StreamError):
                stream.reset(ErrorCode.CANCEL, "fleet stream closed")
        return not serving.cancelled() and serving.result()

    async def _serve(self, stream: TunnelStream) -> bool:
        """Serve one stream until it ends; True if the cloud answered at all."""
        writer = _Writer(stream)
        answered = asyncio.Event()
        self._ready_sent = None  # a new stream: the hub dropped the counts with the hello
        try:
            await writer.send(self._hello())
            self.connected = True
            # A new stream: every work's latest status again (the hub writes only what changed),
            # also those the applier had on disk from before a restart.
            for name, version in self.applier.works().items():
                kept = self.applier.status(name)
                if kept is not None and name not in self._latest:
                    self._latest[name] = (version, kept)
            self._dirty = set(self._latest)
            self._status_ready.set()
            async with asyncio.TaskGroup() as group:
                reader = group.create_task(self._read(stream, writer, answered), name="fleet.read")
                lease = group.create_task(self._renew(writer), name="fleet.lease")
                status = group.create_task(self._send_status(writer), name="fleet.status")
                tasks = [lease, status]
                if self.ready is not None:
                    tasks.append(
                        group.create_task(
                            self._report_ready(self.ready, writer), name="fleet.ready"
                        )
                    )
                await reader
                for task in tasks:
                    task.cancel()
        except* wire.WireError as errors:
            error = errors.exceptions[0]
            log.error("the cloud broke the fleet protocol: %s", error)  # noqa: TRY400
            with contextlib.suppress(StreamError):
                stream.reset(ErrorCode.PROTOCOL_ERROR, str(error)[:200])
        except* (StreamError, EOFError) as errors:
            log.info("fleet stream ended: %s", errors.exceptions[0])
        return answered.is_set()

    def _hello(self) -> wire.Hello:
        inventory = self._inventory()
        works = dict(sorted(self.applier.works().items())[: wire.MAX_WORKS])
        generations = {
            name: generation
            for name, generation in self.applier.generations().items()
            if name in works
        }
        self._sent_claims = None
        if inventory is None:
            return wire.fitting(
                wire.Hello(works=works, generations=generations, apiserver_healthy=self._healthy())
            )
        allocatable, capacity = resources_of(inventory)
        self._sent_claims = (claims_of(inventory), allocatable, capacity)
        return wire.fitting(
            wire.Hello(
                works=works,
                generations=generations,
                claims=self._sent_claims[0],
                allocatable=allocatable,
                capacity=capacity,
                apiserver_healthy=self._healthy(),
            )
        )

    async def _read(self, stream: TunnelStream, writer: _Writer, answered: asyncio.Event) -> None:
        decoder = wire.Decoder(sender="cloud")
        while chunk := await stream.read():
            answered.set()
            for message in decoder.feed(chunk):
                await self._on_message(message, writer)
        raise EOFError("the cloud ended the fleet stream")

    async def _on_message(
        self, message: wire.AgentMessage | wire.CloudMessage, writer: _Writer
    ) -> None:
        if isinstance(message, wire.Settings):
            if message.lease_duration_seconds != self.lease_seconds:
                log.info("lease every %d s (the hub's setting)", message.lease_duration_seconds)
            self.lease_seconds = message.lease_duration_seconds
            writer.lease_changed.set()
        elif isinstance(message, wire.WorkMessage):
            await self._set_work(message)
        elif isinstance(message, wire.Delete):
            # No policy from the hub: the work's own, from the copy the applier holds.
            policy = message.propagation_policy
            await self.applier.delete_work(message.work, propagation=policy)
            self.deletes += 1
            self._latest.pop(message.work, None)
            self._dirty.discard(message.work)
            await writer.send(wire.Removed(work=message.work))
            log.info("work %s removed (%s)", message.work, policy or "its own deleteOption")

    async def _set_work(self, message: wire.WorkMessage) -> None:
        document = dict(message.document)
        cluster = document["spec"]["clusterName"]  # checked by the wire
        if cluster != self._cluster:
            # The hub sends a cluster its own works only; anything else is a hub bug.
            self.works_refused += 1
            log.error("work %s is for cluster %s, not this one; ignored", message.name, cluster)
            return
        try:
            await self.applier.set_work(document)
        except (ValueError, OSError) as error:
            # One bad work (a spec the applier refuses, a full disk) must not cost the others.
            self.works_refused += 1
            log.error("work %s refused: %s", message.name, str(error)[:300])  # noqa: TRY400
            return
        self.works_received += 1
        log.info("work %s received (resourceVersion %d)", message.name, message.resource_version)

    async def _renew(self, writer: _Writer) -> None:
        """A lease every ``lease_seconds``; claims only when they changed since the last sent."""
        while True:
            writer.lease_changed.clear()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.lease_seconds):
                    await writer.lease_changed.wait()
                    continue  # a new period: start it now
            await writer.send(self._lease())
            self.leases += 1

    def _lease(self) -> wire.LeaseRenewal:
        inventory = self._inventory()
        healthy = self._healthy()
        ready = self.ready.ready_report() if self.ready is not None else None
        if ready is not None:
            self._ready_sent = ready
        if inventory is None:
            return wire.LeaseRenewal(apiserver_healthy=healthy, ready_endpoints=ready)
        claims = claims_of(inventory)
        allocatable, capacity = resources_of(inventory)
        if (claims, allocatable, capacity) == self._sent_claims:
            return wire.LeaseRenewal(apiserver_healthy=healthy, ready_endpoints=ready)
        self._sent_claims = (claims, allocatable, capacity)
        return wire.LeaseRenewal(
            apiserver_healthy=healthy,
            claims=claims,
            allocatable=allocatable,
            capacity=capacity,
            ready_endpoints=ready,
        )

    async def _report_ready(self, source: ReadySource, writer: _Writer) -> None:
        """A lease as soon as the ready-endpoint counts differ from those sent (debounced)."""
        loop = asyncio.get_running_loop()
        seen = -1  # a new stream: the current counts at once
        sent_at = -math.inf
        while True:
            seen = await source.wait_ready_changed(seen, float(self.lease_seconds))
            report = source.ready_report()
            if report is None or report == self._ready_sent:
                continue
            wait = sent_at + self.settings.ready_min_interval - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # the debounce: the lease below takes the latest counts
                seen = source.ready_revision()
            await writer.send(self._lease())
            sent_at = loop.time()
            self.leases += 1
            self.ready_reports += 1

    async def _send_status(self, writer: _Writer) -> None:
        while True:
            await self._status_ready.wait()
            self._status_ready.clear()
            for name in sorted(self._dirty):
                self._dirty.discard(name)
                latest = self._latest.get(name)
                if latest is None:
                    continue
                version, status = latest
                try:
                    await writer.send(
                        wire.Status(work=name, resource_version=version, status=status)
                    )
                except wire.WireError as error:  # over the message cap: the hub keeps the last
                    log.error("status of work %s not sent: %s", name, error)  # noqa: TRY400
                    continue
                self.statuses_sent += 1


class _Writer:
    """Serialises the writes of the link's tasks onto one stream."""

    def __init__(self, stream: TunnelStream) -> None:
        self._stream = stream
        self._lock = asyncio.Lock()
        self.lease_changed = asyncio.Event()

    async def send(self, message: wire.AgentMessage) -> None:
        data = wire.encode(message)
        async with self._lock:
            await self._stream.write(data)


def _usable(connection: TunnelConnection) -> bool:
    return not connection.terminated and connection.session.state is SessionState.OPEN


async def _until_not_usable(connection: TunnelConnection) -> None:
    # The session offers no event for "draining": poll it, as the twins link does.
    while True:
        await asyncio.sleep(_DRAIN_CHECK)
        if not _usable(connection):
            return
