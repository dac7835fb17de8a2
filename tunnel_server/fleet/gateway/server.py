"""The gateway's listener: HTTP/1.1 from clients, each request through a cluster's tunnel.

A separate aiohttp server (``--gateway-listen``, HTTP, or HTTPS with the certificate files
given) in the tunnel server's process, so it reaches the live agent sessions directly.

Rules:

* Every outside input is bounded before anything is forwarded: the head's size and field
  count (431, by the parser for one line or too many fields, by us for the total), the
  body's size (413: at once from ``Content-Length``; a chunked body is counted as it
  streams and refused when it passes the limit), requests in flight (503 with
  ``Retry-After``), connections (closed at accept), and time: a head must be complete within
  the keep-alive timer, a backend must start answering within the route's timeouts (504),
  and an answer that moves no byte either way for ``stream_idle_timeout`` is cut.
* Each attempt is one tunnel stream to the chosen backend (``backends.open_backend``) and
  one HTTP/1.1 exchange on it: without an upgrade, ``exchange.forward_plain`` (the head as
  bytes, a plain answer relayed without h11, anything else handed to h11); an upgrade,
  ``http_over_stream.forward``, which the kube proxy uses too. Bodies stream both ways with
  backpressure (``Content-Length`` or chunked), an ``Upgrade`` answered 101 becomes a raw
  byte pipe both ways (WebSocket). Towards the client the connection stays open between
  requests (keep-alive).
* The head sent is the client's minus hop-by-hop fields, plus the route's header modifier,
  plus ``X-Forwarded-For/-Proto/-Host`` and ``X-Request-Id`` (``headers.py``); the request
  id is echoed to the client on our own answers.
* Retries (``router.py``): a refused attempt (nothing sent) moves on for every method; a
  failure before any answer moves on for idempotent methods whose body, if any, is held
  whole (``replay.py``: at most ``replay_body_limit`` bytes, read ahead before the first
  attempt when a retry or a mirror can use it; each attempt sends it from its first byte); a
  timeout does not move on (the backend may still be working on it). An answer whose status
  is in the decision's ``retry_codes`` moves on for the same requests while another backend
  is left: ``forward``'s ``respond`` hook holds its head back (``ResponseDeclined``) before
  any byte reaches the client. Each retry waits ``backoff`` first.
* Response side (the same hook): the decision's response header modifier, then its
  ``Set-Cookie`` (a new affinity session), on the backend's answers only.
* Mirrors: a request's head and its body held whole (none, or at most ``replay_body_limit``
  bytes) are queued for each of the decision's mirror backends (bounded queue, dropped and
  counted when full; a body too big to hold is not copied, counted ``skipped_body``) and
  sent by ``MIRROR_WORKERS`` tasks (``run_mirrors``); the answer is read (bounded) and
  dropped, its outcome reported.
* Our own answers are RFC 9457 problem documents (``type``, ``title``, ``status``,
  ``detail``, ``reason``), as in docs/api.md; a backend's answers pass untouched.
* Metrics: requests by route, backend and code class, errors and latency to the end of the
  answer by route and backend (a deleted route's series are dropped: ``retain_routes``),
  requests in flight, attempts and mirror copies by backend and outcome; the per-request
  ones are plain counts collected at scrape time (no lock per request). The same request
  ends feed the recent figures of the routes' status (``figures.py``).
"""

from __future__ import annotations

import asyncio
import bisect
import logging
import os
import ssl
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import h11
import prometheus_client
from aiohttp import web
from aiohttp.http_exceptions import BadHttpMessage, HttpProcessingError, LineTooLong
from aiohttp.streams import EmptyStreamReader, StreamReader
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.fleet.gateway import headers as head_rules
from tunnel_server.fleet.gateway import wire
from tunnel_server.fleet.gateway.backends import Forward, Problem, Refused, open_backend
from tunnel_server.fleet.gateway.exchange import forward_plain, response_parser
from tunnel_server.fleet.gateway.figures import Figures
from tunnel_server.fleet.gateway.replay import ReplayBody, may_retry, plan
from tunnel_server.fleet.gateway.router import (
    Backend,
    Decision,
    NoRoute,
    Outcome,
    OutcomeKind,
    RequestInfo,
    Router,
)
from tunnel_server.tunnel.http_over_stream import (
    ResponseDeclined,
    ResponseHook,
    UpstreamError,
    forward,
    origin_form,
    request_fields,
    unsendable,
)
from tunnel_server.web.errors import error_response

if TYPE_CHECKING:
    from collections.abc import Collection, Iterator

    from aiohttp.abc import AbstractStreamWriter
    from aiohttp.http_parser import RawRequestMessage

    from tunnel_server.settings import GatewaySettings
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import SessionRegistry

__all__ = ["GatewayMetrics", "GatewayServer", "GatewayStartError", "tls_context"]

log = logging.getLogger("tunnel_server.fleet.gateway")

NONE = "none"
"""The route or backend label of a request that had none."""
MIRROR_QUEUE = 256
"""Mirror copies waiting for a worker; more are dropped (counted): a slow canary must not
hold memory or delay anything of the client's request."""
MIRROR_WORKERS = 8
"""Mirror copies in flight at once (each holds one tunnel stream)."""
MAX_MIRROR_ANSWER = 1024 * 1024
"""Bytes of a mirror's answer read (and dropped) before its stream is reset."""
_NO_CHANGE = head_rules.HeaderModifier()
LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)


class GatewayStartError(ValueError):
    """The listener cannot start; the message says why, in one line."""


def tls_context(cert_file: str, key_file: str) -> ssl.SSLContext:
    """The HTTPS context of the listener: TLS 1.2+, HTTP/1.1 only (ALPN)."""
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(cert_file, key_file)
    context.set_alpn_protocols(["http/1.1"])
    return context


_BOUNDS = (*(repr(float(bound)) for bound in LATENCY_BUCKETS), "+Inf")
"""The ``le`` labels, as prometheus_client writes them (``0.001``, ``1.0``, ``+Inf``)."""


class _Histogram:
    """One label set's latency histogram: plain counts per bucket (not cumulative), sum."""

    __slots__ = ("buckets", "count", "total")

    def __init__(self) -> None:
        self.buckets = [0] * (len(LATENCY_BUCKETS) + 1)  # the last one: +Inf
        self.count = 0
        self.total = 0.0

    def observe(self, seconds: float) -> None:
        # ``le`` buckets: the first bound >= the value takes it.
        self.buckets[bisect.bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self.count += 1
        self.total += seconds

    def cumulative(self) -> list[tuple[str, float]]:
        out: list[tuple[str, float]] = []
        running = 0
        for bound, count in zip(_BOUNDS, self.buckets, strict=True):
            running += count
            out.append((bound, running))
        return out


class GatewayMetrics:
    """The gateway's Prometheus metrics and the recent figures a route's status shows.

    Route and backend label values come from operator objects (bounded); ``retain_routes``
    drops every series of a route that is gone, so a deleted route's labels do not stay.
    The per-request series (requests, errors, latency, attempts) are plain counts in dicts,
    read when the registry is scraped (``collect``): prometheus_client's own metrics take a
    lock and look a child up on every write, a visible share of the gateway's CPU per
    request.
    """

    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.figures = Figures()
        self._requests: dict[tuple[str, str, str], int] = {}
        """(route, backend, code) -> requests answered."""
        self._errors: dict[tuple[str, str], int] = {}
        self._seconds: dict[tuple[str, str], _Histogram] = {}
        self._attempts: dict[tuple[str, str], int] = {}
        """(backend, outcome) -> attempts (backends are operator-bounded)."""
        self.in_flight = prometheus_client.Gauge(
            "tunnel_server_gateway_in_flight",
            "Gateway requests being answered now",
            registry=registry,
        )
        self.mirrors = prometheus_client.Counter(
            "tunnel_server_gateway_mirrors",
            "Request copies sent to mirror backends, by backend and outcome (answered, "
            "refused, failed, timeout, dropped: the queue was full, skipped_body: a body too big "
            "to hold)",
            ["backend", "outcome"],
            registry=registry,
        )
        self.connections = prometheus_client.Gauge(
            "tunnel_server_gateway_connections",
            "Client connections open on the gateway listener",
            registry=registry,
        )
        registry.register(self)  # a Collector: ``collect``

    def collect(self) -> Iterator[prometheus_client.Metric]:
        """The per-request series, as the registry scrapes them."""
        requests = CounterMetricFamily(
            "tunnel_server_gateway_requests",
            "Gateway requests answered, by route, backend (cluster/namespace/service:port) and "
            "status class (2xx..5xx; 'cut' when an answer begun was cut)",
            labels=["route", "backend", "code"],
        )
        for labels, count in list(self._requests.items()):
            requests.add_metric(labels, count)
        errors = CounterMetricFamily(
            "tunnel_server_gateway_errors",
            "Gateway requests answered 5xx (ours or the backend's) or cut short, by route and "
            "backend",
            labels=["route", "backend"],
        )
        for pair, count in list(self._errors.items()):
            errors.add_metric(pair, count)
        seconds = HistogramMetricFamily(
            "tunnel_server_gateway_request_seconds",
            "Seconds from a request's arrival to the end of its answer, by route and backend",
            labels=["route", "backend"],
        )
        for pair, histogram in list(self._seconds.items()):
            seconds.add_metric(pair, histogram.cumulative(), histogram.total)
        attempts = CounterMetricFamily(
            "tunnel_server_gateway_attempts",
            "Attempts on a backend, by backend and outcome (answered, refused, failed, timeout)",
            labels=["backend", "outcome"],
        )
        for pair, count in list(self._attempts.items()):
            attempts.add_metric(pair, count)
        yield from (requests, errors, seconds, attempts)

    def answered(self, route: str, backend: str, code: str, seconds: float, now: float) -> None:
        """One request answered: its series, and the figures when a route took it."""
        key = (route, backend, code)
        self._requests[key] = self._requests.get(key, 0) + 1
        pair = (route, backend)
        histogram = self._seconds.get(pair)
        if histogram is None:
            histogram = self._seconds[pair] = _Histogram()
        histogram.observe(seconds)
        error = code in ("5xx", "cut")
        if error:
            self._errors[pair] = self._errors.get(pair, 0) + 1
        if NONE not in (route, backend):
            self.figures.record(route, backend, error=error, seconds=seconds, now=now)

    def refused(self, code: str) -> None:
        """A request answered before any route or backend (busy, malformed): counted only."""
        key = (NONE, NONE, code)
        self._requests[key] = self._requests.get(key, 0) + 1

    def attempt(self, backend: str, outcome: str) -> None:
        """One attempt on a backend ended so."""
        key = (backend, outcome)
        self._attempts[key] = self._attempts.get(key, 0) + 1

    def retain_routes(self, routes: Collection[str]) -> None:
        """Drop the series and figures of every route not in ``routes`` (deleted ones)."""
        self.figures.retain(routes)

        def gone(key: tuple[str, ...]) -> bool:
            return key[0] not in routes and key[0] != NONE

        self._requests = {key: n for key, n in self._requests.items() if not gone(key)}
        self._errors = {key: n for key, n in self._errors.items() if not gone(key)}
        self._seconds = {key: h for key, h in self._seconds.items() if not gone(key)}


def _problem(
    status: int, reason: str, detail: str, *, request_id: str | None = None
) -> web.Response:
    headers = {"X-Request-Id": request_id} if request_id else {}
    if status == 503:
        headers["Retry-After"] = "1"
    return error_response(status, reason, detail, headers=headers)


class _BodyTooLargeError(HttpProcessingError):
    code = 413


class _BoundedBody(StreamReader):
    """The client's body as ``forward`` reads it (``iter_any``), counted against the limit.

    ``forward`` reads ``request.content``; this stands in for aiohttp's reader (which keeps
    the parser's buffer and backpressure) and fails like a malformed body past the limit,
    so the stream is reset and the listener answers 413 if nothing was answered yet.
    """

    def __init__(
        self,
        inner: StreamReader,
        *,
        limit: int,
        protocol: web.RequestHandler,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(protocol, 2**16, loop=loop)
        self.inner = inner
        self.limit = limit
        self.seen = 0
        self.overflowed = False

    async def readany(self) -> bytes:
        data = await self.inner.readany()
        self.seen += len(data)
        if self.seen > self.limit:
            self.overflowed = True
            raise _BodyTooLargeError(message=f"the body is over {self.limit} bytes")
        return data

    def is_eof(self) -> bool:
        return self.inner.is_eof()


class _Watchdog:
    """Cancels an exchange's scope when its time is up (checked a few times per timeout).

    Before any byte of an answer came back: no byte moved either way for ``answer`` seconds,
    or ``deadline`` (loop time) passed. Once answering: nothing moved for ``idle`` seconds.
    """

    def __init__(
        self, stream: TunnelStream, *, answer: float, idle: float, deadline: float
    ) -> None:
        self._loop = asyncio.get_running_loop()
        self._stream = stream
        self._answer = answer
        self._idle = idle
        self._deadline = deadline
        self._period = max(0.05, min(answer, idle or answer) / 8)
        self._last = self._loop.time()
        self._moved = 0
        self._scope: asyncio.Timeout | None = None
        self._handle: asyncio.TimerHandle | None = None
        self.fired: str | None = None

    def start(self, scope: asyncio.Timeout) -> None:
        self._scope = scope
        self._schedule()

    def stop(self) -> None:
        if self._handle is not None:
            self._handle.cancel()

    def _schedule(self) -> None:
        now = self._loop.time()
        wait = self._period
        if self._stream.bytes_read == 0:
            wait = min(wait, max(0.0, self._deadline - now))
        self._handle = self._loop.call_at(now + wait, self._check)

    def _check(self) -> None:
        now = self._loop.time()
        moved = self._stream.bytes_read + self._stream.bytes_written
        if moved != self._moved:
            self._moved, self._last = moved, now
        quiet = now - self._last
        if self._stream.bytes_read == 0:
            if now >= self._deadline:
                self.fired = "deadline"
            elif quiet >= self._answer:
                self.fired = "answer"
        elif self._idle and quiet >= self._idle:
            self.fired = "idle"
        if self.fired is not None and self._scope is not None:
            self._scope.reschedule(now)  # cancels the exchange at once
            return
        self._schedule()


@dataclass(frozen=True, kw_only=True)
class _Result:
    response: web.StreamResponse
    code: str
    """The metrics label: a status class, or ``cut``."""
    outcome: Outcome | None = None
    """What to tell the router, if the backend was reached."""
    retry: Refused | None = None
    """The attempt failed before any answer: why, if the request may go to the next backend."""


def _code(status: int) -> str:
    return f"{status // 100}xx"


def _host(value: str | None) -> str:
    """The ``Host`` without its port, lower case (``[::1]:8080`` -> ``[::1]``)."""
    if not value:
        return ""
    value = value.strip().lower()
    if value.startswith("["):
        return value.partition("]")[0] + "]"
    name, _, port = value.rpartition(":")
    return name if name and port.isdigit() else value


class _GatewayProtocol(web.RequestHandler):
    """aiohttp's HTTP/1.1 connection, with our answers to what its parser refuses."""

    __slots__ = ("_admitted", "_gateway")

    def __init__(
        self,
        manager: web.Server,
        *,
        gateway: GatewayServer,
        loop: asyncio.AbstractEventLoop,
        options: dict[str, Any],
    ) -> None:
        super().__init__(manager, loop=loop, **options)
        self._gateway = gateway
        self._admitted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        self._admitted = self._gateway.admit()
        if not self._admitted:
            transport.close()

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._admitted:
            self._admitted = False
            self._gateway.release()
        super().connection_lost(exc)

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if request.writer.output_size > 0:
            raise ConnectionError("an answer was already sent")
        too_many = isinstance(exc, BadHttpMessage) and "too many headers" in str(exc).lower()
        if isinstance(exc, LineTooLong) or too_many:
            response = _problem(
                431,
                "headers_too_large",
                f"the request head is too large: {message or exc}; the gateway takes lines of "
                f"at most {self._gateway.settings.max_line_bytes} bytes and at most "
                f"{self._gateway.settings.max_headers} header fields",
            )
        elif status < 500:
            log.debug("malformed request from %s: %s", request.remote, message or exc)
            response = _problem(status, "bad_request", f"malformed request: {message or exc}")
        else:
            log.error("gateway request from %s failed", request.remote, exc_info=exc)
            response = _problem(
                status, "internal_error", "the gateway failed on this request (logged)"
            )
        self._gateway.metrics.refused(_code(response.status))
        response.force_close()
        return response


class GatewayServer:
    """The listener and the per-request logic (module docstring)."""

    def __init__(
        self,
        *,
        settings: GatewaySettings,
        router: Router,
        sessions: SessionRegistry,
        store: Store,
        metrics: GatewayMetrics,
        tls: ssl.SSLContext | None = None,
        forward: Forward | None = None,
    ) -> None:
        """The listener, not yet started.

        ``forward``: how to reach a cluster whose session another replica holds
        (``backends.open_backend``); None: the sessions of this process only.
        """
        self.settings = settings
        self._forward = forward
        self.metrics = metrics
        self._router = router
        self._sessions = sessions
        self._store = store
        self._tls = tls
        self._loop = asyncio.get_running_loop()
        self._manager = web.Server(self._handle, request_factory=self._make_request)
        self._server: asyncio.Server | None = None
        self._connections = 0
        self._in_flight = 0
        # Read when scraped, not written per request (a gauge's every write takes a lock).
        metrics.in_flight.set_function(lambda: self._in_flight)
        metrics.connections.set_function(lambda: self._connections)
        self._proto = "https" if tls is not None else "http"
        self._mirror_queue: asyncio.Queue[tuple[Backend, str, bytes, bytes]] = asyncio.Queue(
            MIRROR_QUEUE
        )

    # ------------------------------------------------------------------ lifecycle

    async def start(self) -> list[tuple[str, int]]:
        """Listen on ``settings.listen``; the bound addresses."""
        if self.settings.listen is None:
            raise GatewayStartError("no --gateway-listen address")
        host, port = self.settings.listen
        try:
            self._server = await self._loop.create_server(
                self._protocol,
                host,
                port,
                ssl=self._tls,
                ssl_handshake_timeout=self.settings.tls_handshake_timeout if self._tls else None,
                backlog=128,
            )
        except OSError as error:
            # asyncio's message repeats the address; the errno's text is enough.
            reason = os.strerror(error.errno).lower() if error.errno else str(error)
            raise GatewayStartError(
                f"cannot serve --gateway-listen {host}:{port}: {reason}"
            ) from None
        addresses = [sock.getsockname()[:2] for sock in self._server.sockets]
        for address in addresses:
            log.info(
                "gateway listening",
                extra={"kv": {"address": f"{self._proto}://{address[0]}:{address[1]}"}},
            )
        return addresses

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        self._manager.pre_shutdown()
        await self._manager.shutdown(self.settings.shutdown_grace)
        if self._server is not None:
            await self._server.wait_closed()

    async def run_mirrors(self) -> None:
        """Send the queued mirror copies until cancelled (``MIRROR_WORKERS`` at a time)."""
        async with asyncio.TaskGroup() as group:
            for _ in range(MIRROR_WORKERS):
                group.create_task(self._mirror_worker(), name="gateway.mirror")

    async def _mirror_worker(self) -> None:
        while True:
            backend, method, head, body = await self._mirror_queue.get()
            began = self._loop.time()
            try:
                kind, status = await self._send_mirror(backend, method, head, body)
            except Exception:  # a bug here must not end the workers
                log.exception("gateway mirror to %s failed", backend)
                continue
            outcome = Outcome(kind=kind, status=status, seconds=self._loop.time() - began)
            self.metrics.mirrors.labels(str(backend), kind).inc()
            self._router.report(backend, outcome)

    async def _send_mirror(
        self, backend: Backend, method: str, head: bytes, body: bytes
    ) -> tuple[OutcomeKind, int | None]:
        """One copy of a request, its answer read (bounded) and dropped.

        ``body``: the held body, framed as the head says (raw, or chunked).
        """
        s = self.settings
        try:
            stream = await open_backend(
                backend,
                sessions=self._sessions,
                store=self._store,
                within=s.open_timeout,
                forward=self._forward,
            )
        except Refused:
            return "refused", None
        try:
            async with asyncio.timeout(s.response_timeout):
                conn = response_parser(method)
                await stream.write(head + body)
                status: int | None = None
                while stream.bytes_read <= MAX_MIRROR_ANSWER:
                    event = conn.next_event()
                    if event is h11.NEED_DATA:
                        conn.receive_data(await stream.read())
                    elif isinstance(event, h11.Response):
                        status = event.status_code
                    elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                        break
        except TimeoutError:
            return "timeout", None
        except (StreamError, h11.ProtocolError):
            return "failed", None
        else:
            return ("answered", status) if status is not None else ("failed", None)
        finally:
            stream.reset(ErrorCode.CANCEL, "mirror over")

    def _mirror(
        self, decision: Decision, request: web.Request, head: bytes, body: bytes | None
    ) -> None:
        """A copy for each mirror; ``body`` None: a body not held (too large), not copied."""
        if body is None:
            for backend in decision.mirrors:
                self.metrics.mirrors.labels(str(backend), "skipped_body").inc()
            return
        if request.body_exists and request.content_length is None:
            # The head says ``Transfer-Encoding: chunked`` (as the client's did): one chunk.
            body = (b"%x\r\n%b\r\n" % (len(body), body) if body else b"") + b"0\r\n\r\n"
        for backend in decision.mirrors:
            try:
                self._mirror_queue.put_nowait((backend, request.method, head, body))
            except asyncio.QueueFull:
                self.metrics.mirrors.labels(str(backend), "dropped").inc()

    def admit(self) -> bool:
        """A new client connection: False when there are too many (it is closed)."""
        if self._connections >= self.settings.max_connections:
            return False
        self._connections += 1
        return True

    def release(self) -> None:
        self._connections -= 1

    def _protocol(self) -> _GatewayProtocol:
        s = self.settings
        options: dict[str, Any] = {
            "keepalive_timeout": s.idle_timeout,
            "max_line_size": s.max_line_bytes,
            "max_field_size": s.max_line_bytes,
            "max_headers": s.max_headers,
            "auto_decompress": False,  # bodies pass as the client encoded them
            "access_log": None,
        }
        return _GatewayProtocol(self._manager, gateway=self, loop=self._loop, options=options)

    def _make_request(
        self,
        message: RawRequestMessage,
        payload: StreamReader,
        protocol: web.RequestHandler,
        writer: AbstractStreamWriter,
        task: asyncio.Task[None],
    ) -> web.BaseRequest:
        limit = self.settings.max_body_bytes
        if limit and not isinstance(payload, EmptyStreamReader):
            payload = _BoundedBody(payload, limit=limit, protocol=protocol, loop=self._loop)
        replay = self.settings.replay_body_limit
        if replay and not isinstance(payload, EmptyStreamReader):
            payload = ReplayBody(payload, limit=replay, protocol=protocol, loop=self._loop)
        return web.Request(message, payload, protocol, writer, task, self._loop)

    # ------------------------------------------------------------------ requests

    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)  # noqa: S101 - _make_request makes them
        started = self._loop.time()
        if self._in_flight >= self.settings.max_concurrent_requests:
            self.metrics.refused("5xx")
            return _problem(
                503,
                "gateway_busy",
                f"the gateway forwards {self.settings.max_concurrent_requests} requests at "
                "once; try again in a moment",
            )
        self._in_flight += 1
        route, backend, code = NONE, NONE, "5xx"
        try:
            route, backend, result = await self._serve(request, started)
            code = result.code
            return result.response
        finally:
            self._in_flight -= 1
            now = self._loop.time()
            self.metrics.answered(route, backend, code, now - started, now)

    async def _serve(self, request: web.Request, started: float) -> tuple[str, str, _Result]:
        incoming = list(request.headers.items())
        request_id = head_rules.safe_request_id(request.headers.get("X-Request-Id"))
        request_id = request_id or os.urandom(16).hex()
        try:
            target = self._check(request)
            decision = self._decide(request, incoming, target)
            head, upgrade = self._head(request, incoming, target, decision, request_id)
        except Problem as answer:
            response = _problem(answer.status, answer.reason, answer.detail, request_id=request_id)
            if answer.status in (413, 431):
                response.force_close()  # the rest of the request is not read
            return NONE, NONE, _Result(response=response, code=_code(answer.status))
        if request.headers.get("Expect", "").lower() == "100-continue":
            # What aiohttp's router does for an application: the client may send its body.
            await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
        body = await self._hold(request, decision, upgrade=upgrade, started=started)
        if decision.mirrors and isinstance(head, bytes):  # upgrades are not mirrored
            self._mirror(decision, request, head, body)
        backend, result = await self._attempts(
            request, decision, head, upgrade=upgrade, started=started
        )
        if isinstance(result.response, web.Response) and result.code != "cut":
            result.response.headers.setdefault("X-Request-Id", request_id)
        return decision.route, backend, result

    async def _hold(
        self, request: web.Request, decision: Decision, *, upgrade: bool, started: float
    ) -> bytes | None:
        """The body to send again: b"" for none, its bytes when held whole, else None."""
        if not request.body_exists:
            return b""
        content = request.content
        s = self.settings
        wanted = plan(
            method=request.method,
            has_body=True,
            content_length=request.content_length,
            upgrade=upgrade,
            backends=len(decision.backends),
            mirrors=len(decision.mirrors),
            limit=s.replay_body_limit,
        )
        if not wanted.hold or not isinstance(content, ReplayBody):
            return None
        # Read ahead within the request's time left, and no longer than a stalled client
        # would be allowed anyway: a slow one streams its body once, as without holding.
        left = started + (decision.timeouts.request or s.request_timeout) - self._loop.time()
        within = max(0.0, min(left, s.stream_idle_timeout or left))
        return content.body() if await content.fill(within=within) else None

    def _check(self, request: web.Request) -> str:
        """The target to send on, after the limits on what the client sent."""
        s = self.settings
        size = len(request.method) + len(request.raw_path) + 11  # the request line
        size += sum(len(name) + len(value) + 4 for name, value in request.raw_headers)
        if size > s.max_header_bytes:
            raise Problem(
                431,
                "headers_too_large",
                f"the request head is {size} bytes; the gateway takes at most "
                f"{s.max_header_bytes} bytes",
            )
        length = request.content_length
        if s.max_body_bytes and length is not None and length > s.max_body_bytes:
            raise Problem(
                413,
                "body_too_large",
                f"the body is {length} bytes; the gateway takes at most {s.max_body_bytes}",
            )
        target = origin_form(request)
        if not target.startswith("/"):
            raise Problem(400, "bad_request", "the request target must be a path (origin form)")
        bad = unsendable(target)
        if bad is not None:
            raise Problem(
                400,
                "bad_request",
                f"the request target holds {bad!r}, which is not sent on: percent-encode "
                "non-ASCII bytes and spaces; NUL, CR and LF are refused even encoded",
            )
        return target

    def _decide(
        self, request: web.Request, incoming: list[tuple[str, str]], target: str
    ) -> Decision:
        path, _, query = target.partition("?")
        decision = self._router.route(
            RequestInfo(
                method=request.method,
                host=_host(request.headers.get("Host")),
                path=path,
                query=query,
                headers=incoming,
            )
        )
        if isinstance(decision, NoRoute):
            raise Problem(decision.status, decision.reason, decision.detail)
        return decision

    def _head(
        self,
        request: web.Request,
        incoming: list[tuple[str, str]],
        target: str,
        decision: Decision,
        request_id: str,
    ) -> tuple[bytes | h11.Request, bool]:
        """The head to send: bytes (``wire``), or an h11 request for an upgrade (``forward``)."""
        host = request.headers.get("Host")
        first = decision.backends[0] if decision.backends else None
        fallback = f"{first.service}.{first.namespace}.svc" if first else "gateway"
        drop = head_rules.hop_by_hop(incoming) | head_rules.FORWARDED | {"expect"}
        fields, upgrade = request_fields(request, host=host or fallback, drop=drop)
        if decision.modifier != _NO_CHANGE:
            fields = head_rules.modify(fields, decision.modifier)
        fields = head_rules.with_forwarded(
            fields,
            incoming=incoming,
            client=request.remote or "unknown",
            proto=self._proto,
            host=host,
            request_id=request_id,
        )
        try:
            if upgrade:
                return h11.Request(method=request.method, target=target, headers=fields), True
            return wire.request_head(request.method, target, fields), False
        except (h11.LocalProtocolError, wire.UnsendableError) as error:
            raise Problem(400, "bad_request", f"this request cannot be sent on: {error}") from None

    async def _attempts(
        self,
        request: web.Request,
        decision: Decision,
        head: bytes | h11.Request,
        *,
        upgrade: bool,
        started: float,
    ) -> tuple[str, _Result]:
        s = self.settings
        deadline = started + (decision.timeouts.request or s.request_timeout)
        answer = decision.timeouts.backend_request or s.response_timeout
        content = request.content
        held = isinstance(content, ReplayBody) and content.held
        replayable = may_retry(request.method, has_body=request.body_exists, held=held)
        refusals: list[tuple[Backend, Refused]] = []
        last = NONE
        for index, backend in enumerate(decision.backends):
            last = str(backend)
            if index > 0 and refusals and decision.backoff > 0:
                await asyncio.sleep(min(decision.backoff, max(0.0, deadline - self._loop.time())))
            began = self._loop.time()
            left = deadline - began
            if left <= 0:
                break
            # The head goes with the OPEN (early data) when the request may be sent again
            # anyway: a timeout or a tunnel failure while opening may have let it through.
            early = head if replayable and isinstance(head, bytes) else b""
            try:
                stream = await open_backend(
                    backend,
                    sessions=self._sessions,
                    store=self._store,
                    within=min(s.open_timeout, left),
                    forward=self._forward,
                    early_data=early,
                )
            except Refused as refused:
                log.debug("backend %s refused: %s", backend, refused.detail)
                self._report(backend, Outcome(kind="refused", reason=refused.reason), began)
                refusals.append((backend, refused))
                continue
            last_one = index == len(decision.backends) - 1
            respond = self._responder(decision, may_decline=replayable and not last_one)
            if isinstance(content, ReplayBody):
                content.rewind()  # a held body starts again at its first byte
            try:
                result = await self._exchange(
                    request,
                    stream,
                    head,
                    upgrade=upgrade,
                    deadline=deadline,
                    answer=answer,
                    respond=respond,
                    head_sent=bool(early),
                )
            finally:
                stream.reset(ErrorCode.CANCEL, "exchange over")  # a no-op once both ends closed
            if result.outcome is not None:
                self._report(backend, result.outcome, began)
            if result.retry is not None and replayable:
                refusals.append((backend, result.retry))
                continue
            return last, result
        return last, self._unavailable(refusals, decision, started, deadline)

    @staticmethod
    def _responder(decision: Decision, *, may_decline: bool) -> ResponseHook:
        """The response head's hook: retry codes held back, the route's modifier, a cookie."""

        def respond(status: int, fields: list[tuple[str, str]]) -> list[tuple[str, str]]:
            if may_decline and status in decision.retry_codes:
                raise ResponseDeclined(status)
            out = head_rules.modify(fields, decision.response_modifier)
            if decision.set_cookie is not None:
                out.append(("Set-Cookie", decision.set_cookie))
            return out

        return respond

    def _report(self, backend: Backend, outcome: Outcome, began: float) -> None:
        seconds = self._loop.time() - began
        self.metrics.attempt(str(backend), outcome.kind)
        full = Outcome(
            kind=outcome.kind, status=outcome.status, reason=outcome.reason, seconds=seconds
        )
        self._router.report(backend, full)

    def _unavailable(
        self,
        refusals: list[tuple[Backend, Refused]],
        decision: Decision,
        started: float,
        deadline: float,
    ) -> _Result:
        if not refusals:
            if not decision.backends:
                status, reason = 503, "no_backends"
                detail = f"route {decision.route} has no backend to send this request to"
            else:
                waited = deadline - started
                status, reason = 504, "request_timeout"
                detail = f"no backend answered within the request timeout ({waited:g} s)"
            return _Result(response=_problem(status, reason, detail), code=_code(status))
        reasons = {refused.reason for _, refused in refusals}
        reason = reasons.pop() if len(reasons) == 1 else "no_backend_available"
        status = 503 if any(r.status == 503 for _, r in refusals) else 502
        detail = "; ".join(refused.detail for _, refused in refusals)
        if len(refusals) > 1:
            detail = f"every backend of route {decision.route} failed: {detail}"
        return _Result(response=_problem(status, reason, detail), code=_code(status))

    async def _exchange(
        self,
        request: web.Request,
        stream: TunnelStream,
        head: bytes | h11.Request,
        *,
        upgrade: bool,
        deadline: float,
        answer: float,
        respond: ResponseHook | None = None,
        head_sent: bool = False,
    ) -> _Result:
        watchdog = _Watchdog(
            stream, answer=answer, idle=self.settings.stream_idle_timeout, deadline=deadline
        )
        began = self._loop.time()
        try:
            async with asyncio.timeout(None) as scope:
                watchdog.start(scope)
                try:
                    if isinstance(head, bytes):
                        reply = await forward_plain(
                            request, stream, head, respond=respond, head_sent=head_sent
                        )
                    else:
                        reply = await forward(
                            request, stream, head, upgrade=upgrade, respond=respond
                        )
                finally:
                    watchdog.stop()
        except TimeoutError:
            if watchdog.fired is None:
                raise
            return self._timed_out(request, stream, watchdog.fired, answer, began)
        except ResponseDeclined as declined:
            detail = f"{stream.target}: answered {declined.status}, a status the route retries"
            log.debug("%s", detail)
            return _Result(
                response=_problem(502, "retried_status", detail),
                code="5xx",
                outcome=Outcome(kind="answered", status=declined.status),
                retry=Refused(502, "retried_status", detail),
            )
        except (UpstreamError, StreamError) as error:
            body = request.content
            if isinstance(body, ReplayBody):
                body = body.inner
            if isinstance(body, _BoundedBody) and body.overflowed:
                response = _problem(
                    413,
                    "body_too_large",
                    f"the body is over {body.limit} bytes, the most the gateway takes",
                )
                response.force_close()
                return _Result(response=response, code="4xx")
            log.debug("exchange with %s failed before an answer: %s", stream.target, error)
            reason = "bad_upstream" if isinstance(error, UpstreamError) else "backend_failed"
            detail = f"{stream.target}: {error}"
            return _Result(
                response=_problem(502, reason, detail),
                code="5xx",
                outcome=Outcome(kind="failed", reason=reason),
                retry=Refused(502, reason, detail),
            )
        return _Result(
            response=reply,
            code=_code(reply.status),
            outcome=Outcome(kind="answered", status=reply.status),
        )

    def _timed_out(
        self, request: web.Request, stream: TunnelStream, fired: str, answer: float, began: float
    ) -> _Result:
        if stream.bytes_read == 0:  # nothing of an answer came back, so none was begun
            if fired == "deadline":
                detail = "no answer within the request timeout"
            else:
                detail = f"no answer and no byte moved either way for {answer:g} s"
            waited = self._loop.time() - began
            return _Result(
                response=_problem(504, "backend_timeout", f"{stream.target}: {detail}"),
                code="5xx",
                outcome=Outcome(kind="timeout", reason="backend_timeout", seconds=waited),
            )
        # The answer had begun: no status can follow, so the client sees it cut short.
        log.debug(
            "answer from %s cut: no byte moved for %s s",
            stream.target,
            self.settings.stream_idle_timeout,
        )
        if request.transport is not None:
            request.transport.close()
        response = web.Response(status=504)
        response.force_close()
        return _Result(
            response=response, code="cut", outcome=Outcome(kind="timeout", reason="idle")
        )
