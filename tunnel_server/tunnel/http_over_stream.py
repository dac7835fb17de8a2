"""Forward one aiohttp request over a tunnel stream as HTTP/1.1, and stream the answer back.

h11 writes the request and parses the response (no hand-written HTTP parser). Bodies stream
both ways with backpressure: a request body is read from the client only as the stream's
credit allows, and response bytes are acknowledged to the agent only after the client took
them. An ``Upgrade`` (WebSocket, SPDY) answered with 101 turns the exchange into a raw
two-way byte pipe, untouched, so ``kubectl exec``, ``attach``, ``port-forward`` work through.

``forward(..., respond=)`` (optional; the gateway's, the kube proxies pass none) sees each
response head before anything of it reaches the client: it returns the header fields to
send (a route's response header modifier, a session cookie), or raises ``ResponseDeclined``
to hold the response back (the gateway then retries on another backend).

``relay_answer`` relays an answer for a caller that wrote the request itself (the gateway's
short path, ``fleet/gateway/exchange.py``, for the answers it does not relay on its own).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import time
from collections import deque
from collections.abc import Callable

import h11
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError
from yarl import URL

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import METRICS_KEY
from tunnel_server.tunnel.sessions import target_kind

log = logging.getLogger("tunnel_server.http_over_stream")

# RFC 9110 section 7.6.1: connection-specific fields a proxy must not forward.
HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-connection",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
    }
)
MAX_RESPONSE_HEAD = 64 * 1024
"""Bytes: the largest response head we parse from a target; more is a 502, not a crash."""
UPGRADE_BUFFER = 256 * 1024
"""Bytes of client data held after an upgrade before we stop reading the client socket."""


class UpstreamError(Exception):
    """The target's answer was not valid HTTP/1.1; shown to the caller as a 502."""


class ResponseDeclined(Exception):  # noqa: N818 - a decision of the caller, not a failure
    """Raised by a ``respond`` hook: this response is not relayed (nothing was sent yet)."""

    def __init__(self, status: int) -> None:
        super().__init__(f"the response {status} is held back")
        self.status = status


ResponseHook = Callable[[int, list[tuple[str, str]]], list[tuple[str, str]]]
"""``(status, header fields without the hop-by-hop ones)`` -> the fields to send; may raise
``ResponseDeclined``."""


class UnsendableRequestError(Exception):
    """The caller's request cannot be written as HTTP/1.1 (h11 refuses it); a 400."""


_UNSENDABLE = re.compile(r"[^\x21-\x7e]|%0[0adAD]")
"""Not sent on in a path or query: anything but printable ASCII (h11 and HTTP/1.1 allow no more
in a request target), and an encoded NUL, LF or CR, which a target that decodes them could be
tricked into splitting a line or a header on."""


def origin_form(request: web.Request) -> str:
    """The caller's path and query exactly as written on the request line, in origin form.

    Taken from the request line itself, not from the decoded path, so ``a%2Fb``, ``a%3Fb``,
    ``%2e%2e`` and ``a%23b`` reach the target as the caller wrote them; an absolute-form
    target (``GET https://host/... HTTP/1.1``) is cut down to its path and query.
    """
    raw = request.raw_path
    if not raw.startswith("/"):
        url = URL(raw, encoded=True)
        raw = url.raw_path + (f"?{url.raw_query_string}" if url.raw_query_string else "")
    return raw


def unsendable(target: str) -> str | None:
    """The first character or escape of ``target`` that is never sent on, or None."""
    bad = _UNSENDABLE.search(target)
    return None if bad is None else bad.group()


def request_fields(
    request: web.Request, *, host: str, drop: frozenset[str] = frozenset()
) -> tuple[list[tuple[str, str]], bool]:
    """The header fields to send to the target, and whether the request asks for an upgrade.

    Not validated yet: a caller that changes the fields further (the gateway) builds and so
    checks the request once, at the end, instead of once here and once after its changes.
    """
    upgrade = "upgrade" in request.headers.get("Connection", "").lower() and (
        "Upgrade" in request.headers
    )
    headers: list[tuple[str, str]] = [("Host", host)]
    for name, value in request.headers.items():
        lower = name.lower()
        if lower in HOP_BY_HOP or lower == "host" or lower in drop:
            continue
        headers.append((name, value))
    if upgrade:
        headers += [("Connection", "Upgrade"), ("Upgrade", request.headers["Upgrade"])]
    else:
        headers.append(("Connection", "close"))  # one exchange per stream
        if request.body_exists and request.content_length is None:
            headers.append(("Transfer-Encoding", "chunked"))
    if request.remote:
        headers.append(("X-Forwarded-For", request.remote))
    return headers, upgrade


def request_head(
    request: web.Request, *, path: str, host: str, drop: frozenset[str] = frozenset()
) -> tuple[h11.Request, bool]:
    """The request to send to the target, and whether it asks for a protocol upgrade."""
    headers, upgrade = request_fields(request, host=host, drop=drop)
    try:
        return h11.Request(method=request.method, target=path, headers=headers), upgrade
    except h11.LocalProtocolError as error:
        raise UnsendableRequestError(f"this request cannot be sent on: {error}") from None


def encode_request(
    request: web.Request, head: h11.Request, *, upgrade: bool
) -> tuple[h11.Connection, bytes]:
    """An h11 connection that has written ``head``, and the bytes it wrote.

    A request without a body (most proxied requests are GETs; an upgrade request has none in
    practice) is written whole, its end included, so it fits one DATA frame: the early data
    a caller sends with the stream's OPEN, before handing both to ``forward(..., sent=)``.
    """
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    data = conn.send(head) or b""
    if upgrade or not request.body_exists:
        data += conn.send(h11.EndOfMessage()) or b""
    return conn, data


async def forward(
    request: web.Request,
    stream: TunnelStream,
    head: h11.Request,
    *,
    upgrade: bool,
    respond: ResponseHook | None = None,
    sent: h11.Connection | None = None,
) -> web.StreamResponse:
    """Send ``head`` and the body over ``stream``; relay the target's response to the client.

    ``sent``: the connection of ``encode_request`` whose bytes already went on the stream
    (as early data with its OPEN); ``head`` is not written again.

    Raises UpstreamError or StreamError only while nothing was answered yet (the caller then
    answers 502), and ResponseDeclined when ``respond`` raised it. Later the answer is already
    on its way: a failure then cuts the client's connection (it sees a truncated answer), and
    a client that went away resets the stream.
    """
    began = time.monotonic()
    if sent is None:
        conn, data = encode_request(request, head, upgrade=upgrade)
        await stream.write(data)
    else:
        conn = sent
    bodiless = upgrade or not request.body_exists
    failed: UpstreamError | StreamError | ResponseDeclined | None = None
    # The group's own body must not raise: Python 3.11 would wrap it in an ExceptionGroup.
    async with asyncio.TaskGroup() as group:
        body = None
        if not bodiless:
            body = group.create_task(_send_body(request, stream, conn), name="proxy.request-body")
        try:
            response = await _next_response(conn, stream)
            _observe(request, stream, began)
            if response.status_code == 101 and upgrade:
                return await _switch(request, stream, conn, response, respond)
            return await _relay(request, stream, conn, response, respond)
        except (UpstreamError, StreamError, ResponseDeclined) as error:
            failed = error
        finally:
            # The exchange is over: a body the target never read (an early error answer)
            # is not sent any further.
            if body is not None and not body.done():
                body.cancel()
    raise failed


def _observe(request: web.Request, stream: TunnelStream, began: float) -> None:
    """Time to the response head, in the tunnel's histogram (an app without one: not kept)."""
    # The gateway's requests come from a bare web.Server: no app, and ``config_dict`` would
    # fail its assertion. The gateway times its requests itself (by route and backend).
    if request._match_info is None:  # noqa: SLF001 - aiohttp has no public "has an app"
        return
    metrics = request.config_dict.get(METRICS_KEY)
    if metrics is not None:
        kind = target_kind(stream.target)
        metrics.request_duration.labels(kind).observe(time.monotonic() - began)


async def _send_body(request: web.Request, stream: TunnelStream, conn: h11.Connection) -> None:
    try:
        if request.body_exists:
            async for chunk in request.content.iter_any():
                await stream.write(conn.send(h11.Data(data=chunk)))
        await stream.write(conn.send(h11.EndOfMessage()))
    except StreamError:
        return  # the target side failed; the response path reports it
    except ConnectionError:
        stream.reset(ErrorCode.CANCEL, "the client went away while sending the body")
    except HttpProcessingError as error:  # a broken chunked encoding, a short body
        stream.reset(ErrorCode.CANCEL, f"the client's body is malformed: {error.message}")


async def _next_event(conn: h11.Connection, stream: TunnelStream) -> h11.Event | type[h11.PAUSED]:
    while True:
        try:
            event = conn.next_event()
        except h11.RemoteProtocolError as error:
            raise UpstreamError(f"the target sent invalid HTTP: {error}") from error
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await stream.read())


Head = h11.Response | h11.InformationalResponse


async def _next_response(conn: h11.Connection, stream: TunnelStream) -> Head:
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Response):
            return event
        if isinstance(event, h11.InformationalResponse) and event.status_code == 101:
            return event
        if isinstance(event, h11.ConnectionClosed):
            raise UpstreamError("the target closed the connection without answering")
        # other 1xx (100 Continue, 103 Early Hints): not relayed, wait for the real answer


def _response_headers(
    response: Head, *, keep_upgrade: bool, respond: ResponseHook | None = None
) -> list[tuple[str, str]]:
    out: list[tuple[str, str]] = []
    for raw_name, raw_value in response.headers:
        name, value = raw_name.decode("latin-1"), raw_value.decode("latin-1")
        lower = name.lower()
        if lower in HOP_BY_HOP and not (keep_upgrade and lower in ("upgrade", "connection")):
            continue
        out.append((name, value))
    return out if respond is None else respond(response.status_code, out)


class Reply(web.StreamResponse):
    """A response whose head leaves with its first body bytes: one TLS record and one send.

    ``_relay`` flushes the head on its own before it waits for the target, so a client
    never waits for headers behind a body that is not there yet (a watch, a long poll).
    """

    _send_headers_immediately = False  # aiohttp's switch for this (web.Response sets it too)


async def _relay(
    request: web.Request,
    stream: TunnelStream,
    conn: h11.Connection,
    response: Head,
    respond: ResponseHook | None,
) -> web.StreamResponse:
    fields = _response_headers(response, keep_upgrade=False, respond=respond)
    reply = Reply(status=response.status_code, reason=response.reason.decode() or None)
    for name, value in fields:
        reply.headers.add(name, value)
    try:
        await reply.prepare(request)
    except ConnectionError:
        return _client_gone(stream, reply)
    try:
        held = await _copy_body(conn, stream, reply)
    except (UpstreamError, StreamError) as error:
        # The answer is begun, so no 502 can follow: cut the connection, so that the client
        # sees an incomplete answer instead of one that merely looks short.
        log.debug("answer from %s cut short: %s", stream.target, error)
        reply.force_close()
        if request.transport is not None:
            request.transport.close()
        return reply
    except ConnectionError:  # from the client's socket (a StreamError is caught above)
        return _client_gone(stream, reply)
    with contextlib.suppress(ConnectionError):
        await reply.write_eof(held)
    return reply


async def _copy_body(conn: h11.Connection, stream: TunnelStream, reply: Reply) -> bytes:
    """Relay the body up to its last piece, which is returned for ``write_eof``.

    One piece is held back until the next event is known, so the head, the last piece and
    the end of a small answer go out in one write.
    """
    held = b""
    try:
        while True:
            try:
                event = conn.next_event()
            except h11.RemoteProtocolError as error:
                raise UpstreamError(f"the target sent invalid HTTP: {error}") from error
            if event is h11.NEED_DATA:
                if not stream.has_data:
                    # About to wait for the target: what we hold (at least the head) goes now.
                    await reply.write(held)
                    held = b""
                conn.receive_data(await stream.read())
            elif isinstance(event, h11.Data):
                if held:
                    await reply.write(held)
                held = bytes(event.data)
            elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
                return held
    except (UpstreamError, StreamError):
        # The target broke mid-answer: what came before the break is the client's, the cut
        # that follows tells it the answer is incomplete.
        with contextlib.suppress(ConnectionError):
            await reply.write(held)
        raise


async def relay_answer(
    request: web.Request,
    stream: TunnelStream,
    conn: h11.Connection,
    respond: ResponseHook | None = None,
) -> web.StreamResponse:
    """Relay the answer to a request without an upgrade, as ``forward`` does, from ``conn``.

    For a caller that wrote the request itself: ``conn`` has a request sent (so it expects
    an answer) and may already hold the first bytes of it. Raises as ``forward`` does.
    """
    response = await _next_response(conn, stream)
    return await _relay(request, stream, conn, response, respond)


def client_gone(stream: TunnelStream, reply: web.StreamResponse) -> web.StreamResponse:
    """The caller hung up mid-answer (see ``_client_gone``)."""
    return _client_gone(stream, reply)


def _client_gone(stream: TunnelStream, reply: web.StreamResponse) -> web.StreamResponse:
    """The caller hung up mid-answer: nobody wants the rest, so the target stops sending it."""
    log.debug("client of %s went away during the answer", stream.target)
    stream.reset(ErrorCode.CANCEL, "the client went away")
    return reply


class _UpgradedClient:
    """Stands in for aiohttp's payload parser after a 101: raw client bytes into a queue."""

    def __init__(self, transport: asyncio.Transport) -> None:
        self._transport = transport
        self._chunks: deque[bytes] = deque()
        self._size = 0
        self._eof = False
        self._ready = asyncio.Event()

    def feed_data(self, data: bytes) -> tuple[bool, bytes]:
        self._chunks.append(bytes(data))
        self._size += len(data)
        self._ready.set()
        if self._size > UPGRADE_BUFFER:
            self._transport.pause_reading()
        return False, b""

    def feed_eof(self) -> None:
        self._eof = True
        self._ready.set()

    async def read(self) -> bytes:
        while not self._chunks:
            if self._eof:
                return b""
            self._ready.clear()
            await self._ready.wait()
        chunk = self._chunks.popleft()
        self._size -= len(chunk)
        if self._size <= UPGRADE_BUFFER // 2 and not self._transport.is_closing():
            self._transport.resume_reading()
        return chunk


async def _switch(
    request: web.Request,
    stream: TunnelStream,
    conn: h11.Connection,
    response: Head,
    respond: ResponseHook | None,
) -> web.StreamResponse:
    transport = request.transport
    if transport is None:
        raise ConnectionResetError("the client went away before the upgrade")
    fields = _response_headers(response, keep_upgrade=True, respond=respond)
    reply = web.StreamResponse(status=101, reason="Switching Protocols")
    for name, value in fields:
        reply.headers.add(name, value)
    reply.force_close()
    try:
        await reply.prepare(request)
    except ConnectionError:
        return _client_gone(stream, reply)
    client = _UpgradedClient(transport)
    request.protocol.set_parser(client)  # type: ignore[arg-type]
    leftover, _closed = conn.trailing_data
    if leftover:
        await reply.write(bytes(leftover))
    async with asyncio.TaskGroup() as group:
        group.create_task(_client_to_stream(client, stream), name="proxy.upgrade-up")
        group.create_task(_stream_to_client(stream, reply), name="proxy.upgrade-down")
    return reply


async def _client_to_stream(client: _UpgradedClient, stream: TunnelStream) -> None:
    with contextlib.suppress(StreamError):
        while data := await client.read():
            await stream.write(data)
        stream.end()


async def _stream_to_client(stream: TunnelStream, reply: web.StreamResponse) -> None:
    try:
        while data := await stream.read():
            await reply.write(data)
    except (StreamError, ConnectionError):
        stream.reset(ErrorCode.CANCEL, "client gone")
    with contextlib.suppress(ConnectionError):
        await reply.write_eof()


__all__ = [
    "HOP_BY_HOP",
    "MAX_RESPONSE_HEAD",
    "Reply",
    "ResponseDeclined",
    "ResponseHook",
    "UnsendableRequestError",
    "UpstreamError",
    "client_gone",
    "encode_request",
    "forward",
    "relay_answer",
    "request_fields",
    "request_head",
]
