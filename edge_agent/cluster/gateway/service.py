"""``GatewayPart``: the tunnel targets ``service/<namespace>/<name>:<port>`` of a cluster agent.

Rules:

* Started only with ``[cluster.gateway] enabled = true``: then, and only then, the agent
  watches Services and EndpointSlices (two cluster-wide informers, on a member API client of
  their own so their two long watches never take the connections status and works need).
* The cloud's gateway opens one stream per backend connection and writes raw HTTP/1.1 into
  it. ``serve`` checks the target's form (``target.parse_target``) and the operator's
  allow-list first: anything else is refused with TARGET_NOT_ALLOWED, and the reason names
  ``[cluster.gateway] services``. Over ``max_streams`` open streams: REFUSED_STREAM.
* The Service port is resolved from the informers' caches (``endpoints.resolve``: port number
  -> port name -> EndpointSlice port, ready and not terminating endpoints, IPv4 and IPv6).
  No such Service, no such port, no ready endpoint: TARGET_UNREACHABLE with a reason the cloud
  can show ("no ready endpoints for demo/web:80") and mark the backend unhealthy with.
* The endpoints are dialled in the balancer's order (round robin, outlier ejection:
  ``balancer``), each within ``connect_timeout``, all within ``dial_timeout``; the first that
  connects gets the stream, accepted and piped both ways (``tunnel_aio.pipe_socket``, with
  half-close), exactly as a ``[tunnel.targets]`` target is. None connecting: TARGET_UNREACHABLE
  naming the last error.
* While the member API server is unreachable the caches keep their last state, so the gateway
  keeps serving the endpoints it knew. A stream that comes before the first complete LIST
  waits for it (at most ``dial_timeout``), then is refused.
* The ready-endpoint counts of every allowed Service port (``ready_report``, at most
  ``wire.MAX_READY_ENTRIES`` by name) go to the cloud with the fleet lease, and at once (at most
  once a second) when they change (``FleetLink``): the cloud's gateway moves a backend's weight
  away when its count is 0, before any request fails.
* Metrics are labelled by Service (``namespace/name``) only for Services the allow-list
  admits and the cache holds, else ``-``: their number is bounded by the operator's list and
  the cluster, never by the names the cloud sends.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from collections.abc import Callable, Mapping
from typing import Any

import prometheus_client

from edge_agent.cluster.credentials import MemberCredentials
from edge_agent.cluster.gateway.balancer import Balancer
from edge_agent.cluster.gateway.endpoints import (
    SERVICE_NAME_LABEL,
    Endpoint,
    ResolveError,
    ready_endpoints,
    resolve,
    service_of,
    service_ports,
)
from edge_agent.cluster.gateway.http1 import (
    FramingError,
    RequestHead,
    parse_request,
    split_head,
)
from edge_agent.cluster.gateway.pool import Connection, Pool
from edge_agent.cluster.gateway.relay import CHUNK, NoAnswerError, relay
from edge_agent.cluster.gateway.settings import GatewaySettings
from edge_agent.cluster.gateway.target import AllowList, ServiceTarget, TargetError, parse_target
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings
from edge_agent.cluster.settings import ClusterSettings
from fleet_model.wire import MAX_READY_COUNT, MAX_READY_ENTRIES, ready_key
from tunnel_aio import StreamError, TunnelStream, pipe_socket
from tunnel_protocol import ErrorCode

__all__ = ["GatewayMetrics", "GatewayPart"]

log = logging.getLogger("edge_agent.cluster.gateway")

SERVICES_PATH = "/api/v1/services"
SLICES_PATH = "/apis/discovery.k8s.io/v1/endpointslices"
NO_SERVICE = "-"
"""The metrics label of a stream whose Service is not (yet) known or not allowed."""
MAX_STATUS_SERVICES = 256
"""Services listed in /status: the rest are counted, not listed, so the answer stays small."""

Key = tuple[str, str]


class GatewayMetrics:
    """Prometheus metrics of the gateway targets (see the module's rule on labels)."""

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.streams = prometheus_client.Counter(
            "edge_agent_gateway_streams",
            "Gateway streams by outcome: accepted, or why they were refused",
            ["service", "result"],
            registry=registry,
        )
        self.dial_failures = prometheus_client.Counter(
            "edge_agent_gateway_dial_failures",
            "Connects to a Service's endpoint that failed (refused, timed out)",
            ["service"],
            registry=registry,
        )
        self.ejections = prometheus_client.Counter(
            "edge_agent_gateway_ejections",
            "Endpoints ejected after connect failures in a row",
            ["service"],
            registry=registry,
        )
        self.connections = prometheus_client.Counter(
            "edge_agent_gateway_backend_connections",
            "Exchanges with endpoints by connection: dialled (new), reused (kept alive), raw "
            "(an upgrade or unframed bytes: a piped connection of its own)",
            ["how"],
            registry=registry,
        )
        self.open_streams = prometheus_client.Gauge(
            "edge_agent_gateway_open_streams", "Gateway streams open now", registry=registry
        )


MAX_RESOLVED = 1024
"""Targets whose resolved endpoints are kept between requests (see ``_endpoints``)."""


class GatewayPart:
    """Serves gateway streams from the cluster's ready endpoints (see the module's rules)."""

    def __init__(
        self,
        *,
        credentials: MemberCredentials,
        cluster: ClusterSettings,
        settings: GatewaySettings,
        registry: prometheus_client.CollectorRegistry,
        informer_settings: InformerSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._settings = settings
        self.allow = AllowList(settings.services)
        self._api = MemberApi(credentials=credentials, settings=cluster)
        watch = informer_settings or InformerSettings()
        self.services = Informer(self._api, SERVICES_PATH, settings=watch)
        # Only slices that name their Service: the others (none in practice) serve nobody.
        self.slices = Informer(
            self._api, SLICES_PATH, label_selector=SERVICE_NAME_LABEL, settings=watch
        )
        self.balancer = Balancer(
            eject_after=settings.eject_after,
            eject_base=settings.eject_base,
            eject_max=settings.eject_max,
        )
        self.pool = Pool(
            max_per_endpoint=settings.pool_per_endpoint,
            max_total=settings.pool_total,
            idle_timeout=settings.pool_idle_timeout,
        )
        self.metrics = GatewayMetrics(registry)
        self._clock = clock
        self._open = 0
        self._index: dict[Key, list[dict[str, Any]]] = {}
        self._index_revision = -1
        self._accepted: dict[str, Any] = {}
        """Service label -> its ``streams{result="accepted"}`` child (one per request)."""
        self._reused = self.metrics.connections.labels("reused")
        self._dialled = self.metrics.connections.labels("dialled")
        self._resolved: dict[ServiceTarget, tuple[int, int, list[Endpoint] | ResolveError]] = {}
        """Target -> (services revision, slices revision, what ``resolve`` said then): the
        caches change far less often than requests come, and resolving walks every slice."""

    # ------------------------------------------------------------------ running

    async def run(self) -> None:
        """Watch Services and EndpointSlices until cancelled."""
        await self._api.open()
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self.services.run(), name="gateway.services")
                group.create_task(self.slices.run(), name="gateway.endpointslices")
                group.create_task(self._sweep(), name="gateway.pool-sweep")
        finally:
            self.pool.close()
            await self._api.close()

    async def _sweep(self) -> None:
        """Close idle connections past their time or closed by their backend, every second."""
        while True:
            await asyncio.sleep(1.0)
            self.pool.sweep(self._clock())

    @property
    def synced(self) -> bool:
        return self.services.synced.is_set() and self.slices.synced.is_set()

    @property
    def open_streams(self) -> int:
        return self._open

    # ------------------------------------------------------------------ streams

    async def serve(self, stream: TunnelStream) -> None:
        """The handler of the tunnel targets ``service/...`` (``builtin_prefixes``)."""
        try:
            target = parse_target(stream.target)
        except TargetError as error:
            self._refuse(stream, NO_SERVICE, "bad_target", ErrorCode.TARGET_NOT_ALLOWED, str(error))
            return
        if not self.allow.allows(target.namespace, target.name):
            reason = (
                f"service {target.service} is not in this agent's allow-list "
                "([cluster.gateway] services)"
            )
            self._refuse(stream, NO_SERVICE, "not_allowed", ErrorCode.TARGET_NOT_ALLOWED, reason)
            return
        if self._open >= self._settings.max_streams:
            reason = (
                f"the gateway has {self._open} streams open, its limit "
                "([cluster.gateway] max_streams); try another backend"
            )
            self._refuse(stream, self._label(target), "busy", ErrorCode.REFUSED_STREAM, reason)
            return
        self._open += 1
        self.metrics.open_streams.inc()
        try:
            await self._serve(stream, target)
        finally:
            self._open -= 1
            self.metrics.open_streams.dec()

    async def _serve(self, stream: TunnelStream, target: ServiceTarget) -> None:
        if not await self._wait_synced():
            error = self.services.last_error or self.slices.last_error or "no answer yet"
            reason = (
                "the agent has not listed the cluster's Services and EndpointSlices yet "
                f"(member API server: {error[:600]})"
            )
            self._refuse(stream, NO_SERVICE, "not_synced", ErrorCode.TARGET_UNREACHABLE, reason)
            return
        label = self._label(target)
        endpoints = self._endpoints(target)
        if isinstance(endpoints, ResolveError):
            result, reason = endpoints.result, str(endpoints)
            self._refuse(stream, label, result, ErrorCode.TARGET_UNREACHABLE, reason)
            return
        order = self.balancer.order(str(target), endpoints, self._clock())
        connection = self.pool.take(order[0], self._clock())
        if connection is None:
            dialled = await self._dial(target, order, label)
            if isinstance(dialled, str):
                self._refuse(stream, label, "unreachable", ErrorCode.TARGET_UNREACHABLE, dialled)
                return
            connection = dialled
        try:
            stream.accept()
        except StreamError:  # the cloud gave up on the stream while we dialled
            self.pool.put(connection, self._clock())  # untouched: as good as before
            return
        accepted = self._accepted.get(label)
        if accepted is None:  # a child looked up once per Service (bounded, module rules)
            accepted = self._accepted[label] = self.metrics.streams.labels(label, "accepted")
        accepted.inc()
        await self._exchange(stream, target, order, connection, label)

    async def _exchange(
        self,
        stream: TunnelStream,
        target: ServiceTarget,
        order: list[Endpoint],
        connection: Connection,
        label: str,
    ) -> None:
        """Relay the stream's one request and its answer; keep the connection if it may be."""
        try:
            head, buffer, body = await _read_request(stream)
        except StreamError:
            self.pool.put(connection, self._clock())  # nothing was written to it
            return
        if head is None or head.upgrade:
            await self._pipe_raw(stream, target, order, connection, label, buffer)
            return
        while True:
            (self._reused if connection.reused else self._dialled).inc()
            try:
                reusable = await relay(stream, connection, head, body)
            except NoAnswerError:
                connection.close()
                if not (connection.reused and head.replayable):
                    stream.end()  # the cloud sees a connection closed without an answer
                    return
                # A kept connection the backend had closed: nothing was answered, and the
                # request (idempotent, no body) can be sent once more on a new connection.
                dialled = await self._dial(target, order, label)
                if isinstance(dialled, str):
                    stream.reset(ErrorCode.TARGET_UNREACHABLE, dialled)
                    return
                connection = dialled
                continue
            except (OSError, StreamError, FramingError) as error:
                log.debug("gateway exchange with %s ended: %s", connection.endpoint, error)
                connection.close()
                stream.reset(ErrorCode.CANCEL, "the exchange with the endpoint failed")
                return
            except BaseException:
                connection.close()
                raise
            if reusable:
                self.pool.put(connection, self._clock())
            else:
                connection.close()
            return

    async def _pipe_raw(  # noqa: PLR0917 - the stream's whole context, once
        self,
        stream: TunnelStream,
        target: ServiceTarget,
        order: list[Endpoint],
        connection: Connection,
        label: str,
        buffer: bytes,
    ) -> None:
        """Pipe raw bytes both ways on a new connection of its own, closed at the end.

        For an upgrade (WebSocket), or bytes that are no request we can frame: as every stream
        was served before connections were kept.
        """
        if connection.reused:
            self.pool.put(connection, self._clock())
            dialled = await self._dial(target, order, label)
            if isinstance(dialled, str):
                stream.reset(ErrorCode.TARGET_UNREACHABLE, dialled)
                return
            connection = dialled
        self.metrics.connections.labels("raw").inc()
        connection.writer.write(buffer)
        await pipe_socket(stream, connection.reader, connection.writer)

    async def _wait_synced(self) -> bool:
        if self.synced:
            return True
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(self._settings.dial_timeout):
                await self.services.synced.wait()
                await self.slices.synced.wait()
        return self.synced

    async def _dial(
        self, target: ServiceTarget, order: list[Endpoint], label: str
    ) -> Connection | str:
        """A new connection to the first endpoint of ``order`` that takes one, or why none did."""
        settings = self._settings
        deadline = self._clock() + settings.dial_timeout
        last = "no time left to dial"
        tried = 0
        for endpoint in order:
            left = deadline - self._clock()
            if left <= 0:
                break
            tried += 1
            try:
                async with asyncio.timeout(min(settings.connect_timeout, left)):
                    reader, writer = await asyncio.open_connection(
                        endpoint.address, endpoint.port, limit=CHUNK
                    )
            except (OSError, TimeoutError) as error:
                last = f"{endpoint}: {_describe(error)}"
                self.metrics.dial_failures.labels(label).inc()
                if self.balancer.failed(endpoint, self._clock()):
                    self.pool.drop(endpoint)
                    self.metrics.ejections.labels(label).inc()
                    log.warning(
                        "endpoint %s of %s ejected after connect failures (%s)",
                        endpoint,
                        target,
                        last,
                    )
                else:
                    log.info("cannot connect to endpoint %s of %s: %s", endpoint, target, last)
                continue
            self.balancer.succeeded(endpoint)
            return Connection(endpoint=endpoint, reader=reader, writer=writer)
        return (
            f"could not connect to {tried} of {len(order)} ready endpoints of {target} "
            f"within {settings.dial_timeout:g} s (last: {last})"
        )

    def _refuse(
        self, stream: TunnelStream, label: str, result: str, code: ErrorCode, reason: str
    ) -> None:
        self.metrics.streams.labels(label, result).inc()
        # Debug only: a cloud retrying a backend without endpoints would flood the log; the
        # metrics count every refusal, and the cloud shows the reason.
        log.debug("gateway stream to %r refused: %s", stream.target, reason)
        stream.reject(code, reason)

    def _endpoints(self, target: ServiceTarget) -> list[Endpoint] | ResolveError:
        """``resolve``'s answer for ``target``, computed again only after a cache changed."""
        slices = self._slices_of(target.namespace, target.name)  # the index follows changes too
        services_revision, slices_revision = self.services.revision, self.slices.revision
        hit = self._resolved.get(target)
        if hit is not None and hit[0] == services_revision and hit[1] == slices_revision:
            return hit[2]
        service = self.services.get(target.namespace, target.name)
        try:
            result: list[Endpoint] | ResolveError = resolve(target, service, slices)
        except ResolveError as error:
            result = error
        if len(self._resolved) >= MAX_RESOLVED:
            self._resolved.clear()  # targets come from the cloud: the memo stays bounded
        self._resolved[target] = (services_revision, slices_revision, result)
        return result

    def _label(self, target: ServiceTarget) -> str:
        known = self.services.get(target.namespace, target.name) is not None
        return target.service if known else NO_SERVICE

    # ------------------------------------------------------------------ the caches

    def _slices_of(self, namespace: str, name: str) -> list[dict[str, Any]]:
        """The EndpointSlices of one allowed Service; the index is rebuilt after a change."""
        if self.slices.revision != self._index_revision:
            index: dict[Key, list[dict[str, Any]]] = {}
            for endpoint_slice in self.slices.items().values():
                key = service_of(endpoint_slice)
                if key is not None and self.allow.allows(*key):
                    index.setdefault(key, []).append(endpoint_slice)
            self._index, self._index_revision = index, self.slices.revision
            known = _all_endpoints(index)
            self.balancer.retain(known)
            self.pool.retain(known)
        return self._index.get((namespace, name), [])

    def ready_counts(self) -> dict[str, dict[str, int]]:
        """Ready endpoints per allowed Service and port: ``{"demo/web": {"80": 2}}``."""
        counts: dict[str, dict[str, int]] = {}
        for (namespace, name), service in sorted(self.services.items().items()):
            if not self.allow.allows(namespace, name):
                continue
            slices = self._slices_of(namespace, name)
            counts[f"{namespace}/{name}"] = {
                str(port): len(ready_endpoints(port_name, slices))
                for port, port_name in service_ports(service)
            }
        return counts

    def ready_revision(self) -> int:
        """Grows whenever the Services or EndpointSlices the counts come from changed."""
        return self.services.revision + self.slices.revision

    async def wait_ready_changed(self, past: int, timeout: float) -> int:  # noqa: ASYNC109 - a wait that returns either way
        """``ready_revision()`` once it is past ``past``, or after ``timeout`` seconds."""
        if self.ready_revision() <= past:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(timeout), asyncio.TaskGroup() as group:
                    waits = [
                        group.create_task(
                            informer.wait_changed(informer.revision, timeout),
                            name=f"gateway.ready-wait.{kind}",
                        )
                        for kind, informer in (("services", self.services), ("slices", self.slices))
                    ]
                    await asyncio.wait(waits, return_when=asyncio.FIRST_COMPLETED)
                    for wait in waits:
                        wait.cancel()
        return self.ready_revision()

    def ready_report(self) -> dict[str, int] | None:
        """What the fleet lease carries: ``{"namespace/name:port": ready endpoints}``.

        Every allowed Service port, the first ``wire.MAX_READY_ENTRIES`` by name; None before
        the first complete LIST (nothing known yet: the cloud keeps judging by requests).
        """
        if not self.synced:
            return None
        report: dict[str, int] = {}
        for service, ports in self.ready_counts().items():
            namespace, _, name = service.partition("/")
            for port, count in ports.items():
                if len(report) >= MAX_READY_ENTRIES:
                    return report
                report[ready_key(namespace, name, int(port))] = min(count, MAX_READY_COUNT)
        return report

    def status(self) -> dict[str, object]:
        """The ``gateway`` part of the cluster section of /status."""
        counts = self.ready_counts()
        listed = dict(list(counts.items())[:MAX_STATUS_SERVICES])
        now = self._clock()
        return {
            "enabled": True,
            "synced": self.synced,
            "allowed": [str(pattern) for pattern in self.allow.patterns],
            "open_streams": self._open,
            "services": listed,
            "services_not_listed": len(counts) - len(listed),
            "ejected": {str(e): round(left, 1) for e, left in self.balancer.ejected(now).items()},
            "last_error": self.services.last_error or self.slices.last_error or None,
        }


def _all_endpoints(index: Mapping[Key, list[dict[str, Any]]]) -> set[Endpoint]:
    """Every ready endpoint of the indexed slices (the balancer keeps the state of these)."""
    known: set[Endpoint] = set()
    for slices in index.values():
        for endpoint_slice in slices:
            names = {
                (p.get("name") or "")
                for p in endpoint_slice.get("ports") or []
                if isinstance(p, dict)
            }
            for name in names:
                if isinstance(name, str):
                    known.update(ready_endpoints(name, [endpoint_slice]))
    return known


async def _read_request(stream: TunnelStream) -> tuple[RequestHead | None, bytes, bytes]:
    """The request head from the stream, the bytes read, and those past the head.

    The head is None when the bytes are no request we can follow; the bytes past it are the
    body's first ones.
    """
    buffer = b""
    try:
        while (size := split_head(buffer)) is None:
            data = await stream.read()
            if not data:
                return None, buffer, b""
            buffer += data
        return parse_request(buffer[:size]), buffer, buffer[size:]
    except FramingError as error:
        log.debug("gateway stream to %s: not a request we can follow: %s", stream.target, error)
        return None, buffer, b""


def _describe(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "connect timed out"
    if isinstance(error, OSError) and error.errno:
        return os.strerror(error.errno).lower()  # asyncio's strerror names the address again
    return str(error) or type(error).__name__
