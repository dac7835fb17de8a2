"""The tunnel target ``kube-apiserver``: one cloud stream = one HTTP exchange with the member.

Rules:

* The cloud opens a stream per exchange and writes an HTTP/1.1 request into it. The agent
  accepts at once, reads the request head (h11, at most ``max_head_bytes``, within
  ``head_timeout``), and checks its impersonation (``impersonation.refusal``).
* It drops any ``Authorization`` and ``Proxy-Authorization``, sets ``Host`` and adds its own
  credential (a bearer token; a client certificate rides in the TLS handshake), opens TLS to
  the member API server (verified against the member's CA) and sends the head.
* From then on bytes are relayed raw both ways until either side ends, so request bodies,
  chunked watch answers and 101 upgrades (WebSocket ``v5.channel.k8s.io``, SPDY/3.1) pass
  untouched. The cloud sends ``Connection: close`` (or an upgrade), so the member ends the
  exchange; the cloud resetting the stream (its caller went away) aborts the connection.
  Bodiless GETs and HEADs instead reuse kept-alive connections (``reuse``): same bytes, no
  TLS handshake per request.
* Whatever the agent refuses is answered in the stream as a Kubernetes ``Status`` (403
  impersonation, 400/431 bad head, 408 no head, 503 member unreachable), so kubectl prints it.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from dataclasses import dataclass, field
from http import HTTPStatus

import h11
import prometheus_client

from edge_agent.cluster import impersonation
from edge_agent.cluster.credentials import CredentialsError, MemberCredentials
from edge_agent.cluster.reuse import (
    AnswerTracker,
    ConnectionPool,
    keep_alive_request,
    poolable,
)
from edge_agent.cluster.settings import ClusterSettings
from tunnel_aio import StreamError, TunnelStream, pipe_socket
from tunnel_aio.tls_connect import open_tls_connection

log = logging.getLogger("edge_agent.cluster.apiserver")

TARGET = "kube-apiserver"
"""The built-in tunnel target of a cluster-mode agent."""
_DROPPED = frozenset({b"authorization", b"proxy-authorization", b"host"})
_CHUNK = 64 * 1024

REASONS = {
    400: "BadRequest",
    403: "Forbidden",
    408: "Timeout",
    431: "RequestHeaderFieldsTooLarge",
    500: "InternalError",
    503: "ServiceUnavailable",
}


def status_body(code: int, message: str) -> bytes:
    """A Kubernetes ``Status`` object (kubectl prints its message)."""
    return json.dumps(
        {
            "kind": "Status",
            "apiVersion": "v1",
            "metadata": {},
            "status": "Failure",
            "message": message,
            "reason": REASONS.get(code, "Unknown"),
            "code": code,
        }
    ).encode()


def status_response(code: int, message: str) -> bytes:
    """A whole HTTP/1.1 answer carrying ``status_body``; the connection ends after it."""
    body = status_body(code, message)
    phrase = HTTPStatus(code).phrase
    head = (
        f"HTTP/1.1 {code} {phrase}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n"
    )
    return head.encode("latin-1") + body


class RefusedError(Exception):
    """The exchange is answered by the agent itself with a Status (``code``, message)."""

    def __init__(self, code: int, message: str) -> None:
        super().__init__(message)
        self.code = code


async def read_head(stream: TunnelStream, *, limit: int) -> tuple[h11.Request, bytes]:
    """The request head from ``stream`` and the bytes already read past it (the body's start).

    Raises RefusedError (400, or 431 past ``limit``) for anything that is not a request head.
    """
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=limit)
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            code = 431 if error.error_status_hint == 431 else 400
            raise RefusedError(code, f"bad request head: {error}") from None
        if isinstance(event, h11.Request):
            return event, bytes(conn.trailing_data[0])
        if event is not h11.NEED_DATA:
            raise RefusedError(400, "the stream ended before a request head")
        data = await stream.read()
        if not data:
            conn.receive_data(b"")  # h11 then reports how the head was cut short
        else:
            conn.receive_data(data)


def encode_head(head: h11.Request, *, host: str, authorization: str | None) -> bytes:
    """The head sent to the member: the cloud's, minus its credentials, plus ours."""
    lines = [b"%s %s HTTP/1.1" % (head.method, head.target), b"Host: " + host.encode()]
    for name, value in head.headers.raw_items():
        if name.lower() not in _DROPPED:
            lines.append(name + b": " + value)
    if authorization is not None:
        lines.append(b"Authorization: " + authorization.encode("latin-1"))
    return b"\r\n".join(lines) + b"\r\n\r\n"


class _StaleError(Exception):
    """The member closed (or reset) a connection before any byte of the answer."""


class _CloudGoneError(Exception):
    """The cloud reset the stream: its caller went away."""


class ApiServerMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.exchanges = prometheus_client.Counter(
            "edge_agent_cluster_exchanges",
            "Cloud requests to the member API server, by outcome",
            ["result"],
            registry=registry,
        )
        self.connections_opened = prometheus_client.Counter(
            "edge_agent_cluster_member_connections_opened",
            "TCP+TLS connections opened to the member API server for the cloud's requests",
            registry=registry,
        )


@dataclass(kw_only=True)
class ApiServerTarget:
    """Serves the tunnel target ``kube-apiserver`` (one instance per agent)."""

    settings: ClusterSettings
    credentials: MemberCredentials
    metrics: ApiServerMetrics
    counts: dict[str, int] = field(default_factory=dict)
    last_error: str | None = None
    last_error_at: float | None = None
    pool: ConnectionPool = field(init=False)

    def __post_init__(self) -> None:
        self.pool = ConnectionPool(
            max_idle=self.settings.max_idle_connections,
            idle_timeout=self.settings.idle_timeout,
        )

    def close(self) -> None:
        """Drop the kept connections (the agent is stopping)."""
        self.pool.close()

    def status(self) -> dict[str, object]:
        """The ``cluster`` section of the local API's /status (without the report part)."""
        return {
            "server": self.credentials.server,
            "in_cluster": self.settings.in_cluster,
            "exchanges": dict(self.counts),
            "kept_connections": len(self.pool),
            "reused_connections": self.pool.reused,
            "last_error": self.last_error,
            "last_error_at": self.last_error_at,
        }

    def _count(self, result: str) -> None:
        self.counts[result] = self.counts.get(result, 0) + 1
        self.metrics.exchanges.labels(result).inc()

    async def serve(self, stream: TunnelStream) -> None:
        """One exchange: the handler the tunnel client calls for a stream to ``TARGET``."""
        stream.accept()
        try:
            request, rest, authorization = await self._admit(stream)
            if poolable(request, rest):
                await self._kept_exchange(stream, request, authorization)
                return
            head = encode_head(
                request, host=self.credentials.host_header, authorization=authorization
            )
            reader, writer = await self._connect()
        except RefusedError as refused:
            self._count(f"refused_{refused.code}")
            await _answer(stream, refused.code, str(refused))
            return
        self._count("relayed")
        writer.write(head + rest)
        await pipe_socket(stream, reader, writer)

    async def _admit(self, stream: TunnelStream) -> tuple[h11.Request, bytes, str | None]:
        """The request head (checked), the bytes past it, and our ``Authorization``."""
        settings = self.settings
        try:
            async with asyncio.timeout(settings.head_timeout):
                request, rest = await read_head(stream, limit=settings.max_head_bytes)
        except TimeoutError:
            raise RefusedError(408, "no request head within the agent's head_timeout") from None
        refused = impersonation.refusal(request.headers.raw_items())
        if refused is not None:
            log.warning("refused a request from the cloud: %s", refused)
            raise RefusedError(403, f"the cluster agent refused this request: {refused}")
        try:
            authorization = self.credentials.authorization()
        except CredentialsError as error:
            self._failed(str(error))
            raise RefusedError(
                503, f"the cluster agent has no usable credential: {error}"
            ) from None
        return request, rest, authorization

    async def _kept_exchange(
        self, stream: TunnelStream, request: h11.Request, authorization: str | None
    ) -> None:
        """A bodiless GET/HEAD over a kept connection (once more on a fresh one if stale)."""
        kept = keep_alive_request(request)
        head = encode_head(kept, host=self.credentials.host_header, authorization=authorization)
        for attempt in range(2):
            taken = self.pool.take() if attempt == 0 else None
            reader, writer = taken if taken is not None else await self._connect()
            tracker = AnswerTracker(kept)
            writer.write(head)
            outcome = await _relay_answer(stream, reader, tracker)
            if outcome == "stale":
                writer.transport.abort()
                if taken is not None:
                    continue  # the member closed it while idle: a fresh connection
                raise RefusedError(
                    503, "the member API server closed the connection without answering"
                )
            if outcome == "gone":
                writer.transport.abort()
                self._count("relayed_kept")
                return
            self._count("relayed_kept")
            if tracker.reusable:
                self.pool.give(reader, writer)
            else:
                writer.transport.abort()
            return

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        creds = self.credentials
        try:
            async with asyncio.timeout(self.settings.connect_timeout):
                opened = await open_tls_connection(
                    creds.host,
                    creds.port,
                    ssl_context=creds.ssl_context,
                    server_hostname=creds.host,
                )
        except (OSError, TimeoutError, ssl.SSLError) as error:
            reason = str(error) or type(error).__name__
            self._failed(f"cannot reach {creds.server}: {reason}")
            raise RefusedError(
                503, f"the cluster agent cannot reach its API server {creds.server}: {reason}"
            ) from None
        self.metrics.connections_opened.inc()
        return opened

    def _failed(self, message: str) -> None:
        self.last_error = message
        self.last_error_at = time.time()
        log.warning("%s", message)


async def _copy_answer(
    stream: TunnelStream, reader: asyncio.StreamReader, tracker: AnswerTracker
) -> None:
    got = 0
    while True:
        try:
            data = await reader.read(_CHUNK)
        except OSError:
            if got == 0:
                raise _StaleError from None
            raise
        if not data and got == 0:
            raise _StaleError
        tracker.feed(data)
        if data:
            got += len(data)
            await stream.write(data)
        if not data or tracker.complete:
            stream.end()
            return


async def _relay_answer(
    stream: TunnelStream, reader: asyncio.StreamReader, tracker: AnswerTracker
) -> str:
    """Copy the member's answer to the stream until it is complete (or the member's EOF).

    ``"done"``; ``"stale"`` when the member ended or reset before any byte; ``"gone"`` when
    the cloud reset the stream (a watch whose caller went away) or a side failed midway.
    """

    async def cloud_gone() -> None:
        await stream.wait_closed()
        raise _CloudGoneError

    outcome = "done"
    try:
        async with asyncio.TaskGroup() as group:
            watch = group.create_task(cloud_gone(), name=f"cluster.kept-{stream.stream_id}-cloud")
            relay = group.create_task(
                _copy_answer(stream, reader, tracker), name=f"cluster.kept-{stream.stream_id}-relay"
            )
            relay.add_done_callback(lambda _: watch.cancel())
    except* _StaleError:
        outcome = "stale"
    except* (_CloudGoneError, OSError, StreamError):
        outcome = "gone"
    return outcome


async def _answer(stream: TunnelStream, code: int, message: str) -> None:
    try:
        await stream.write(status_response(code, message))
        stream.end()
    except StreamError as error:
        log.debug("could not answer %s: %s", code, error)
