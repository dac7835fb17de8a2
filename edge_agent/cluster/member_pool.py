"""Keep-alive connections to the member API server, reused by the cloud's plain exchanges.

Why: a new TCP + TLS connection per exchange (the cloud sends ``Connection: close``) cost the
agent and the member a TLS handshake per request, the bulk of the proxy's added latency.

Rules:

* Only exchanges that are not upgrades come here (``is_upgrade``); upgrades (exec, attach,
  port-forward) keep the raw pipe of ``apiserver``.
* The head sent to the member is the cloud's with the same rewrite as ``apiserver.encode_head``
  (credentials dropped, ``Host`` and the agent's ``Authorization`` added), minus the
  hop-by-hop ``Connection``/``Keep-Alive``, so the member keeps the connection open.
* h11 (client side) follows the exchange on that connection: it frames the request body (read
  from the stream by a server-side h11) and the answer, whose bytes go to the stream unchanged.
  The stream ends at the answer's ``EndOfMessage``.
* The connection goes back to the pool only when h11 says both sides are ``DONE`` (the whole
  request was sent, the answer did not say ``Connection: close``, nothing followed it); else it
  is closed. A watch holds its connection until it ends; the cloud resetting the stream aborts
  the connection.
* Bounded: at most ``max_idle`` idle connections, none older than ``idle_timeout``, and one
  the member closed is dropped when taken. A reused connection that fails before any byte of
  an answer (the member closed it as we sent) is retried once on a fresh connection, when the
  method is idempotent or no body was sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
import time
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

import h11
import prometheus_client

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode

log = logging.getLogger("edge_agent.cluster.member_pool")

Connect = Callable[[], Awaitable[tuple[asyncio.StreamReader, asyncio.StreamWriter]]]
"""Opens a fresh connection to the member API server (raises what the caller answers)."""

_DROPPED = frozenset(
    {b"authorization", b"proxy-authorization", b"host", b"connection", b"keep-alive"}
)
IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 section 9.2.2: a request the member may see twice without harm."""
CHUNK = 64 * 1024
"""Bytes read from the member at a time."""
MAX_RESPONSE_HEAD = 64 * 1024
"""Bytes: the largest answer head parsed; the cloud refuses more anyway."""
MAX_HEAD_REPARSE = 256 * 1024
"""Bytes: bound of the server-side parser that frames the request body (the head it re-reads
was already bounded by ``max_head_bytes``; chunk-size lines are far smaller)."""


@dataclass(frozen=True, kw_only=True)
class PoolSettings:
    """Bounds of the pool of idle connections to the member API server."""

    max_idle: int = 8
    """Idle connections kept: enough for a burst of parallel requests (kubectl sends a few at
    once) to find one, few enough to hold little on the member (each is a goroutine there)."""

    idle_timeout: float = 30.0
    """Seconds an idle connection is kept: below kube-apiserver's own idle timeout (90 s), so
    the agent, not the member, closes it, and a taken connection is rarely a closed one."""

    max_replay_bytes: int = 64 * 1024
    """Bytes of request body kept to send again when a reused connection turned out closed;
    a longer body is not retried (the cloud's caller then sees the failure)."""


class PoolMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.opened = prometheus_client.Counter(
            "edge_agent_cluster_member_connections_opened",
            "TCP+TLS connections opened to the member API server for the cloud's requests",
            registry=registry,
        )
        self.reused = prometheus_client.Counter(
            "edge_agent_cluster_member_connections_reused",
            "Cloud requests sent on a kept-alive connection to the member API server",
            registry=registry,
        )
        self.retried = prometheus_client.Counter(
            "edge_agent_cluster_member_retries",
            "Requests sent again on a fresh connection: the reused one was closed by the member",
            registry=registry,
        )
        self.idle = prometheus_client.Gauge(
            "edge_agent_cluster_member_connections_idle",
            "Idle kept-alive connections to the member API server",
            registry=registry,
        )


def is_upgrade(request: h11.Request) -> bool:
    """True for a request asking for a protocol switch (it keeps the raw pipe)."""
    for name, value in request.headers:
        if name == b"upgrade" or (name == b"connection" and b"upgrade" in value.lower()):
            return True
    return False


def has_body(request: h11.Request) -> bool:
    """True when the request carries a body (a non-zero Content-Length, or chunked)."""
    for name, value in request.headers:
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


def member_request(request: h11.Request, *, host: str, authorization: str | None) -> h11.Request:
    """The head for the member on a kept-alive connection (``apiserver.encode_head``'s rewrite)."""
    headers = [(b"Host", host.encode())]
    for name, value in request.headers.raw_items():
        if name.lower() not in _DROPPED:
            headers.append((name, value))
    if authorization is not None:
        headers.append((b"Authorization", authorization.encode("latin-1")))
    return h11.Request(method=request.method, target=request.target, headers=headers)


def body_parser(request: h11.Request, rest: bytes) -> h11.Connection:
    """A server-side h11 positioned after ``request``'s head, to frame its body from ``rest`` on.

    ``apiserver.read_head`` keeps only the request and the bytes past it; writing the head
    again and reading it back gives h11 the body's framing (Content-Length or chunked).
    """
    parser = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD_REPARSE)
    parser.receive_data(h11.Connection(h11.CLIENT).send(request) or b"")
    if rest:  # h11 takes b"" for the end of the connection
        parser.receive_data(rest)
    event = parser.next_event()
    if not isinstance(event, h11.Request):  # pragma: no cover - h11 reads back its own head
        raise h11.LocalProtocolError(f"request head not read back: {event!r}")
    return parser


@dataclass(eq=False, kw_only=True)
class MemberConnection:
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0

    def usable(self) -> bool:
        """False once the member closed it (its EOF is already read) or it is closing."""
        return not (self.writer.is_closing() or self.reader.at_eof())

    def abort(self) -> None:
        self.writer.transport.abort()


class _StaleError(Exception):
    """A reused connection failed before any byte of an answer."""


@dataclass(kw_only=True)
class _Upload:
    """The request body, read once from the stream, kept (bounded) to send again on a retry."""

    parser: h11.Connection
    limit: int
    kept: list[bytes] = field(default_factory=list)
    kept_bytes: int = 0
    replayable: bool = True
    ended: bool = False
    cloud_failed: bool = False

    async def send(
        self, stream: TunnelStream, client: h11.Connection, member: MemberConnection
    ) -> None:
        """Send the body to the member, then watch the stream: a reset aborts the exchange."""
        try:
            for data in self.kept:
                member.writer.write(_bytes(client, h11.Data(data=data)))
            while not self.ended:
                event = await self._next(stream)
                if isinstance(event, h11.Data):
                    self._keep(bytes(event.data))
                    member.writer.write(_bytes(client, event))
                    await member.writer.drain()
                else:
                    self.ended = True
            member.writer.write(_bytes(client, h11.EndOfMessage()))
            await member.writer.drain()
            # Nothing more comes for this exchange; a reset (the caller went away, say from a
            # watch) must still stop the answer, which may never end by itself.
            while await stream.read():
                pass
        except (StreamError, h11.ProtocolError) as error:
            self.cloud_failed = True
            log.debug("request to the member cut short by the stream: %s", error)
            stream.reset(ErrorCode.CANCEL, "the request from the cloud was cut short")
            member.abort()
        except (OSError, ssl.SSLError) as error:
            log.debug("request to the member not sent whole: %s", error)
            member.abort()

    async def _next(self, stream: TunnelStream) -> h11.Data | h11.EndOfMessage:
        while True:
            event = self.parser.next_event()
            if isinstance(event, h11.Data | h11.EndOfMessage):
                return event
            if event is not h11.NEED_DATA:
                raise h11.RemoteProtocolError(f"unexpected in a request body: {event!r}")
            self.parser.receive_data(await stream.read())

    def _keep(self, data: bytes) -> None:
        if self.replayable and self.kept_bytes + len(data) <= self.limit:
            self.kept.append(data)
            self.kept_bytes += len(data)
        else:
            self.replayable = False
            self.kept.clear()


@dataclass(kw_only=True)
class MemberPool:
    """Idle kept-alive connections to the member API server, and the exchanges that use them."""

    connect: Connect
    metrics: PoolMetrics
    settings: PoolSettings = field(default_factory=PoolSettings)
    _idle: deque[MemberConnection] = field(default_factory=deque)
    """Oldest first; ``take`` reuses the newest."""
    _janitor: asyncio.Task[None] | None = None

    @property
    def idle(self) -> int:
        return len(self._idle)

    async def exchange(
        self,
        stream: TunnelStream,
        taken: tuple[MemberConnection, bool],
        request: h11.Request,
        rest: bytes,
        *,
        outgoing: h11.Request,
    ) -> None:
        """Relay one exchange on ``taken`` (from ``take``).

        ``outgoing`` and the body (from ``rest`` on) go to the member, the answer to
        ``stream``. Raises what ``connect`` raises while nothing was answered (a retry opens a
        fresh connection).
        """
        member, reused = taken
        upload = _Upload(parser=body_parser(request, rest), limit=self.settings.max_replay_bytes)
        try:
            await self._attempt(stream, member, outgoing, upload)
        except _StaleError:
            if not reused or not (
                upload.replayable and (request.method in IDEMPOTENT or not has_body(request))
            ):
                log.debug(
                    "member connection closed before an answer; %s not retried", request.method
                )
                stream.end()  # the cloud answers its caller 502 (no answer)
                return
        else:
            return
        log.debug("a reused connection was closed by the member; retrying on a fresh one")
        self.metrics.retried.inc()
        member = await self._open()
        with contextlib.suppress(_StaleError):  # a fresh connection failing is the member's answer
            await self._attempt(stream, member, outgoing, upload)
            return
        stream.end()

    async def _attempt(
        self,
        stream: TunnelStream,
        member: MemberConnection,
        outgoing: h11.Request,
        upload: _Upload,
    ) -> None:
        client = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
        answered = False
        reusable = False
        try:
            member.writer.write(_bytes(client, outgoing))
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(
                    upload.send(stream, client, member), name="cluster.member-request"
                )
                try:
                    answered, reusable = await self._relay(stream, client, member)
                finally:
                    sender.cancel()  # the answer is over; so is the exchange
        finally:
            if reusable and not upload.cloud_failed:
                self._give_back(member)
            else:
                member.abort()
        if not answered and not upload.cloud_failed:
            raise _StaleError

    async def _relay(
        self, stream: TunnelStream, client: h11.Connection, member: MemberConnection
    ) -> tuple[bool, bool]:
        """The answer's bytes to the stream until its end: (any byte answered, reusable)."""
        answered = False
        while True:
            try:
                data = await member.reader.read(CHUNK)
            except (OSError, ssl.SSLError) as error:
                log.debug("member connection failed during the answer: %s", error)
                data = b""
            if not data and not answered:
                return False, False
            client.receive_data(data)
            done, extra = _scan(client)
            if done and extra:
                data = data[: len(data) - extra]
            try:
                if data:
                    await stream.write(data)
                answered = True
                if done or not data:
                    stream.end()
            except StreamError as error:
                log.debug("stream gone during the member's answer: %s", error)
                return True, False
            if done or not data:
                reusable = (
                    done
                    and not extra
                    and client.our_state is h11.DONE
                    and client.their_state is h11.DONE
                )
                return True, reusable

    async def take(self) -> tuple[MemberConnection, bool]:
        """An idle connection still open (and True), or a fresh one (False).

        Raises what ``connect`` raises.
        """
        now = time.monotonic()
        while self._idle:
            member = self._idle.pop()  # the most recently used: the least likely closed
            if member.usable() and now - member.idle_since < self.settings.idle_timeout:
                self.metrics.idle.set(len(self._idle))
                self.metrics.reused.inc()
                return member, True
            member.abort()
        self.metrics.idle.set(0)
        return await self._open(), False

    async def _open(self) -> MemberConnection:
        reader, writer = await self.connect()
        self.metrics.opened.inc()
        return MemberConnection(reader=reader, writer=writer)

    def _give_back(self, member: MemberConnection) -> None:
        member.idle_since = time.monotonic()
        self._idle.append(member)
        while len(self._idle) > self.settings.max_idle:
            self._idle.popleft().abort()
        self.metrics.idle.set(len(self._idle))
        if self._janitor is None or self._janitor.done():
            # Lives only while connections are idle. Not in a task group: the pool is built by
            # the target, which the daemon wires as a plain handler. Cancelled with the event
            # loop's other tasks when the agent stops, it closes what is idle then.
            self._janitor = asyncio.create_task(  # noqa: TID251 - referenced, see above
                self._expire(), name="cluster.member-pool-janitor"
            )

    async def _expire(self) -> None:
        """Close idle connections at ``idle_timeout``; all of them when cancelled."""
        try:
            while self._idle:
                wait = self._idle[0].idle_since + self.settings.idle_timeout - time.monotonic()
                if wait > 0:
                    await asyncio.sleep(wait)
                    continue
                self._idle.popleft().abort()
                self.metrics.idle.set(len(self._idle))
        finally:
            self.close()

    def close(self) -> None:
        """Drop every idle connection."""
        while self._idle:
            self._idle.pop().abort()
        self.metrics.idle.set(0)


def _bytes(client: h11.Connection, event: h11.Event) -> bytes:
    return client.send(event) or b""


def _scan(client: h11.Connection) -> tuple[bool, int]:
    """Consume h11's events: (the answer ended, bytes received past its end).

    An answer h11 cannot parse is relayed as it is (the cloud's parser answers its caller 502)
    and ends the exchange here, the connection not reused.
    """
    while True:
        try:
            event = client.next_event()
        except h11.RemoteProtocolError as error:
            log.debug("the member's answer is not valid HTTP/1.1: %s", error)
            return True, 0
        if isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return True, len(client.trailing_data[0])
        if event is h11.NEED_DATA or event is h11.PAUSED:
            return False, 0


__all__ = [
    "MemberConnection",
    "MemberPool",
    "PoolMetrics",
    "PoolSettings",
    "body_parser",
    "has_body",
    "is_upgrade",
    "member_request",
]
