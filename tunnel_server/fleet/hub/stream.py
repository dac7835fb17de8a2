"""The cloud end of the ``fleet`` stream: works down to cluster agents, leases and status up.

Each connected cluster agent keeps one ``fleet`` stream open (fleet_model/wire.py has the
messages, docs/fleet/stream.md the protocol). Rules:

* Who: only a session whose *certificate* says kind ``cluster`` may open it, and the cluster is
  the certificate's name, never one the agent claims. Any other session is refused.
* Leases: ``hello`` and every ``lease`` renew ``hub.leases[cluster]`` (in memory) and notify the
  hub's events; the controller turns leases into conditions and taints, the gateway reads the
  ready-endpoint counts a lease may carry (``Lease.ready_endpoints``). A cluster not yet
  accepted may renew and send claims (so the hub shows it) but gets no works.
* Works go only to an accepted cluster: its ManagedCluster has ``hubAcceptsClient: true`` and
  its node record is approved. After the hello the cloud sends ``settings``, then every Work
  with ``spec.clusterName`` == the cluster that the agent lacks or holds at another
  resourceVersion, and ``delete`` for every Work the agent holds that is gone (or moved to
  another cluster). Then it takes the changes of its cluster's Works from the hub's one
  reader of the change log (``stream_fanout.py``) past the revision it read, and pushes
  ``work``/``delete`` as they happen; a change log that expired under the reader, or a stream
  that fell ``max_pending`` changes behind, means a full resend, as after a hello. A Work whose
  generation is what the agent holds is not sent again (a status write changes the
  resourceVersion only).
* Status: a ``status`` for Work W at resourceVersion R is written (``hub.set_status``) only
  when W exists, is for this cluster, and R is the version this stream gave the agent (or
  confirmed in its hello) *and* that version's generation is W's current generation. Anything
  else is stale (the agent applied an older spec; the newer one is on its way) and dropped:
  a status never describes a spec it was not made from. Only the status fields of a Work are
  kept (conditions, resourceStatus, observedGeneration, appliedAt).
* Bounds: at most ``max_pending`` changes wait per stream (shared objects, then a resend), and
  this end keeps only what the agent holds (name -> version, at most ``MAX_WORKS``). A write
  the agent does not take within ``send_timeout`` (it reads nothing) resets the stream; the
  agent opens it again and catches up through its hello. Broken frames reset the stream,
  nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Coroutine, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import prometheus_client
from aiohttp import web

from fleet_model import wire
from fleet_model.labels import parse_label_selector
from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import (
    AGENT_SERVICES_KEY,
    FLEET_HUB_KEY,
    REGISTRY_KEY,
    STORE_KEY,
)
from tunnel_server.fleet.hub.leases import Lease
from tunnel_server.fleet.hub.store import ConflictError, FleetStoreError
from tunnel_server.fleet.hub.stream_fanout import ChangeFanout
from tunnel_server.fleet.hub.stream_feed import ClusterFeed, status_fields

if TYPE_CHECKING:
    from tunnel_server.fleet.hub.hub import FleetHub
    from tunnel_server.fleet.hub.store import Change, StoredObject
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import AgentSession

__all__ = ["CLUSTER_LABEL", "STREAMS_KEY", "FleetStreams", "StreamSettings", "setup_stream"]

log = logging.getLogger("tunnel_server.fleet.hub.stream")

CLUSTER_LABEL = "fleet.edgefleet.io/cluster"
"""The label the hub puts on every Work: its ``spec.clusterName`` (lists one cluster's works)."""


@dataclass(frozen=True, kw_only=True)
class StreamSettings:
    hello_timeout: float = 30.0
    """Seconds an agent has to say hello after opening the stream."""
    send_timeout: float = 120.0
    """Seconds one message may wait for the agent to read (flow control) before the stream
    is reset: an agent that reads nothing costs a window of bytes, never a growing queue."""
    follow_timeout: float = 30.0
    """Seconds between looks at the change log when no write was notified (a safety net), and
    between each stream's looks at its cluster's acceptance (a node approval is not a fleet
    write)."""
    max_pending: int = 4096
    """Changes one stream may have waiting (its agent reads slowly) before it drops them and
    resends everything from the store instead: memory per stream stays bounded."""


# ------------------------------------------------------------------ metrics


class StreamMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.streams = prometheus_client.Gauge(
            "tunnel_server_fleet_streams", "Open fleet streams of cluster agents", registry=registry
        )
        self.works_pushed = prometheus_client.Counter(
            "tunnel_server_fleet_works_pushed", "Works sent to cluster agents", registry=registry
        )
        self.deletes_pushed = prometheus_client.Counter(
            "tunnel_server_fleet_work_deletes_pushed",
            "Work deletions sent to cluster agents",
            registry=registry,
        )
        self.status_updates = prometheus_client.Counter(
            "tunnel_server_fleet_status_updates",
            "Work status messages from agents, by what became of them",
            ["result"],
            registry=registry,
        )
        self.lease_renewals = prometheus_client.Counter(
            "tunnel_server_fleet_lease_renewals",
            "Lease renewals (hello and lease messages) of cluster agents",
            registry=registry,
        )
        self.resets = prometheus_client.Counter(
            "tunnel_server_fleet_stream_resets",
            "Fleet streams reset by the cloud, by reason",
            ["reason"],
            registry=registry,
        )


# ------------------------------------------------------------------ the streams


class FleetStreams:
    """The agent service ``fleet``: one ``serve`` per open stream."""

    def __init__(
        self,
        hub: FleetHub,
        *,
        nodes: Store,
        registry: prometheus_client.CollectorRegistry,
        settings: StreamSettings | None = None,
    ) -> None:
        self._hub = hub
        self._nodes = nodes
        self.settings = settings or StreamSettings()
        self.metrics = StreamMetrics(registry)
        self._selector_text = CLUSTER_LABEL + "={}"
        self.fanout = ChangeFanout(
            hub.store,
            hub.events,
            follow_timeout=self.settings.follow_timeout,
            max_pending=self.settings.max_pending,
        )

    async def serve(
        self, stream: TunnelStream, session: AgentSession, _app: web.Application
    ) -> None:
        identity = session.identity
        if identity.kind != "cluster":
            stream.reject(
                ErrorCode.TARGET_NOT_ALLOWED,
                "the fleet stream is for cluster agents (this session is a node's)",
            )
            return
        stream.accept()
        cluster = identity.name  # the certificate's name: the agent cannot choose another
        self.metrics.streams.inc()
        try:
            await self._serve(stream, cluster)
        except wire.WireError as error:
            log.warning("fleet stream of cluster %s broke the protocol: %s", cluster, error)
            self.metrics.resets.labels("protocol").inc()
            stream.reset(ErrorCode.PROTOCOL_ERROR, str(error)[:200])
        except _SendTimeoutError:
            log.warning(
                "cluster %s did not read its fleet stream for %.0f s; reset (it catches up on"
                " reopening)",
                cluster,
                self.settings.send_timeout,
            )
            self.metrics.resets.labels("not_reading").inc()
            stream.reset(ErrorCode.CANCEL, "not reading; reopen and say hello")
        except TimeoutError:
            self.metrics.resets.labels("no_hello").inc()
            stream.reset(ErrorCode.PROTOCOL_ERROR, "no hello in time")
        except (StreamError, EOFError) as error:
            log.debug("fleet stream of cluster %s ended: %s", cluster, error)
        except Exception:  # a bug here must cost this stream only (logged with its traceback)
            log.exception("fleet stream of cluster %s failed", cluster)
            self.metrics.resets.labels("internal").inc()
            with contextlib.suppress(StreamError):
                stream.reset(ErrorCode.INTERNAL_ERROR, "internal error; reopen")
        finally:
            self.metrics.streams.dec()
            with contextlib.suppress(StreamError):
                stream.end()

    async def _serve(self, stream: TunnelStream, cluster: str) -> None:
        decoder = wire.Decoder(sender="agent")
        async with asyncio.timeout(self.settings.hello_timeout):
            pending: list[wire.AgentMessage] = []
            while not pending:
                chunk = await stream.read()
                if not chunk:
                    raise EOFError("the agent closed the stream before its hello")
                pending = _from_agent(decoder.feed(chunk))
        hello, *rest = pending
        if not isinstance(hello, wire.Hello):
            raise wire.WireError("the first message must be a hello")
        if any(isinstance(message, wire.Hello) for message in rest):
            raise wire.WireError("one hello per stream")
        feed = ClusterFeed(cluster)
        feed.hello(hello.works, hello.generations)
        self._renew(cluster, hello)
        log.info("fleet stream of cluster %s open (%d works held)", cluster, len(hello.works))
        for message in rest:
            self._on_message(feed, message)
        # Both run until one ends; its error (if any) is the stream's (the reader's first).
        async with asyncio.TaskGroup() as group:
            reader = group.create_task(
                _outcome(self._read(stream, decoder, feed)), name=f"fleet.read.{cluster}"
            )
            pusher = group.create_task(
                _outcome(self._push(stream, feed)), name=f"fleet.push.{cluster}"
            )
            await asyncio.wait({reader, pusher}, return_when=asyncio.FIRST_COMPLETED)
            reader.cancel()
            pusher.cancel()
        for task in (reader, pusher):
            error = None if task.cancelled() else task.result()
            if error is not None:
                raise error

    async def _read(self, stream: TunnelStream, decoder: wire.Decoder, feed: ClusterFeed) -> None:
        while chunk := await stream.read():
            for message in _from_agent(decoder.feed(chunk)):
                if isinstance(message, wire.Hello):
                    raise wire.WireError("one hello per stream")
                self._on_message(feed, message)

    # ------------------------------------------------------------------ agent → cloud

    def _on_message(self, feed: ClusterFeed, message: wire.AgentMessage) -> None:
        if isinstance(message, wire.LeaseRenewal):
            self._renew(feed.cluster, message)
        elif isinstance(message, wire.Status):
            result = self._status(feed, message)
            self.metrics.status_updates.labels(result).inc()
            log.debug("status of work %s from %s: %s", message.work, feed.cluster, result)
        elif isinstance(message, wire.Removed):
            feed.removed(message.work)
            log.info("cluster %s removed work %s", feed.cluster, message.work)

    def _renew(self, cluster: str, message: wire.Hello | wire.LeaseRenewal) -> None:
        previous = self._hub.leases.get(cluster)

        def keep(new: Mapping[str, str] | None, old: Mapping[str, str] | None) -> dict[str, str]:
            if new is not None:
                return dict(new)
            return dict(old) if old is not None else {}

        self._hub.leases[cluster] = Lease(
            renewed_at=time.time(),
            apiserver_healthy=message.apiserver_healthy,
            claims=keep(message.claims, previous.claims if previous else None),
            allocatable=keep(message.allocatable, previous.allocatable if previous else None),
            capacity=keep(message.capacity, previous.capacity if previous else None),
            ready_endpoints=_ready(message, previous),
        )
        self.metrics.lease_renewals.inc()
        self._hub.events.notify()

    def _status(self, feed: ClusterFeed, message: wire.Status) -> str:
        if not self._accepted(feed.cluster):
            return "not_accepted"
        work = self._hub.store.get("Work", message.work)
        verdict = feed.status_applies(work, message.resource_version)
        if verdict != "current" or work is None:
            return verdict
        status = status_fields(message.status)
        try:
            self._hub.set_status("Work", work.name, status, expected_version=work.resource_version)
        except ConflictError:
            return "stale"  # the Work changed between our read and the write
        except FleetStoreError as error:
            log.warning("cannot write the status of work %s: %s", work.name, error)
            return "failed"
        return "written"

    # ------------------------------------------------------------------ cloud → agent

    def _cluster(self, cluster: str) -> StoredObject | None:
        return self._hub.store.get("ManagedCluster", cluster)

    def _accepted(self, cluster: str, record: StoredObject | None = None) -> bool:
        record = record if record is not None else self._cluster(cluster)
        if record is None or record.spec.get("hubAcceptsClient") is not True:
            return False
        node = self._nodes.get_node(cluster)
        return node is not None and node.state == "approved" and node.kind == "cluster"

    def _lease_seconds(self, record: StoredObject | None) -> int:
        seconds = record.spec.get("leaseDurationSeconds") if record is not None else None
        if isinstance(seconds, int) and not isinstance(seconds, bool) and 1 <= seconds <= 3600:
            return seconds
        return int(self._hub.settings.default_lease_seconds)

    def _works_of(self, cluster: str) -> list[StoredObject]:
        selector = parse_label_selector(self._selector_text.format(cluster))
        return self._hub.store.list("Work", selector=selector)

    async def _send(self, stream: TunnelStream, messages: list[wire.CloudMessage]) -> None:
        for message in messages:
            try:
                data = wire.encode(message)
            except wire.WireError as error:
                # A Work larger than the stream carries (max_work_bytes set over 1 MiB).
                log.error("cannot send %s: %s", type(message).__name__, error)  # noqa: TRY400
                continue
            try:
                async with asyncio.timeout(self.settings.send_timeout):
                    await stream.write(data)
            except TimeoutError:
                raise _SendTimeoutError from None
            if isinstance(message, wire.WorkMessage):
                self.metrics.works_pushed.inc()
                log.info(
                    "sent work %s (resourceVersion %s)", message.name, message.resource_version
                )
            elif isinstance(message, wire.Delete):
                self.metrics.deletes_pushed.inc()
                log.info("sent delete of work %s", message.work)

    async def _push(self, stream: TunnelStream, feed: ClusterFeed) -> None:
        """Settings, the catch-up, then every change of this cluster's works as it happens."""
        cluster = feed.cluster
        subscription = self.fanout.subscribe(cluster)
        try:
            # No await between subscribing and reading the catch-up: the subscription gets
            # exactly what is written after this read.
            record = self._cluster(cluster)
            lease_seconds = self._lease_seconds(record)
            accepted = self._accepted(cluster, record)
            first: list[wire.CloudMessage] = [wire.Settings(lease_duration_seconds=lease_seconds)]
            if accepted:
                first += feed.resync(list(self._works_of(cluster)))
            else:
                log.info("cluster %s is not accepted yet: leases only, no works", cluster)
            await self._send(stream, first)
            while True:
                await subscription.wait(self.settings.follow_timeout)
                changes = subscription.take()
                if changes is None:
                    log.info("cluster %s's stream resends all its works", cluster)
                record = self._cluster(cluster)
                now_accepted = self._accepted(cluster, record)
                seconds = self._lease_seconds(record)
                out: list[wire.CloudMessage] = []
                if seconds != lease_seconds:
                    lease_seconds = seconds
                    out.append(wire.Settings(lease_duration_seconds=seconds))
                if now_accepted and (changes is None or not accepted):
                    out += feed.resync(list(self._works_of(cluster)))
                elif now_accepted and changes:
                    out += self._changes(feed, changes)
                if accepted and not now_accepted:
                    log.info("cluster %s is no longer accepted: no more works sent", cluster)
                accepted = now_accepted
                if out:
                    await self._send(stream, out)
        finally:
            self.fanout.unsubscribe(subscription)

    def _changes(self, feed: ClusterFeed, changes: list[Change]) -> list[wire.CloudMessage]:
        out: list[wire.CloudMessage] = []
        for change in changes:
            work = change.object
            if work.kind != "Work":
                continue
            if change.type == "DELETED":
                out += feed.deleted(work)
            else:
                out += feed.changed(work)
        return out


class _SendTimeoutError(Exception):
    """The agent took nothing of a message for ``send_timeout`` seconds."""


def _ready(
    message: wire.Hello | wire.LeaseRenewal, previous: Lease | None
) -> Mapping[str, int] | None:
    """A lease's ready-endpoint counts: new when it carries them, kept when not.

    A hello drops them (a new stream: the agent may have lost its gateway).
    """
    if isinstance(message, wire.Hello):
        return None
    if message.ready_endpoints is not None:
        return dict(message.ready_endpoints)
    return previous.ready_endpoints if previous is not None else None


_AGENT_TYPES = (wire.Hello, wire.LeaseRenewal, wire.Status, wire.Removed)
_ENDINGS = (wire.WireError, _SendTimeoutError, StreamError, EOFError)


def _from_agent(
    messages: list[wire.AgentMessage | wire.CloudMessage],
) -> list[wire.AgentMessage]:
    # Decoder(sender="agent") yields agent messages only; this narrows the type.
    return [m for m in messages if isinstance(m, _AGENT_TYPES)]


async def _outcome(work: Coroutine[Any, Any, None]) -> BaseException | None:
    """How one half of the stream ended: None, or the error that ends the stream."""
    try:
        await work
    except _ENDINGS as error:
        return error
    return None


STREAMS_KEY = web.AppKey("fleet_streams", FleetStreams)


def setup_stream(app: web.Application, *, settings: StreamSettings | None = None) -> None:
    """Offer the ``fleet`` agent service; call after the fleet hub's ``setup`` (FLEET_HUB_KEY)."""
    if FLEET_HUB_KEY not in app or AGENT_SERVICES_KEY not in app:
        raise RuntimeError("setup_stream(app) must come after the tunnel's and the hub's setup")
    streams = FleetStreams(
        app[FLEET_HUB_KEY], nodes=app[STORE_KEY], registry=app[REGISTRY_KEY], settings=settings
    )
    app[STREAMS_KEY] = streams
    app[AGENT_SERVICES_KEY][wire.FLEET_TARGET] = streams.serve

    async def lifecycle(_app: web.Application) -> AsyncIterator[None]:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(streams.fanout.run(), name="fleet.stream-fanout")
            yield
            task.cancel()

    app.cleanup_ctx.append(lifecycle)
