"""One request without an upgrade over a tunnel stream: its head as bytes, a plain answer relayed.

The gateway's common case, kept short (a large share of its CPU per request went to h11):

* The head (``wire.request_head``, checked there) goes out as it is; a body follows as the
  client sends it, read only as the stream's credit allows: raw after a ``Content-Length``,
  re-chunked when the client's was chunked (the head says ``Transfer-Encoding: chunked``).
  Our half of the stream is not ended after the request (no FIN): an agent of the previous
  release pipes the stream raw to the endpoint and would pass a FIN on as a half-close,
  which some servers take as the client giving up (Go's net/http cancels the request).
* The answer: a plain one (``wire.parse_plain_response``: a final status, valid fields, a
  ``Content-Length`` body or none) is relayed with its fields (hop-by-hop ones out, then the
  ``respond`` hook) and exactly its body's bytes; the head, and a small body with it, leave in
  one write. Anything else (interim 1xx, chunked, until close, malformed) is handed with the
  bytes read so far to h11 (``http_over_stream.relay_answer``), which relays it, or says why
  it is not HTTP, exactly as ``forward`` does.
* Failures as ``forward``: ``UpstreamError`` / ``StreamError`` / ``ResponseDeclined`` only
  while nothing was answered; once the answer began, a broken backend cuts the client's
  connection and a client that went away resets the stream.

Upgrades (WebSocket) go through ``http_over_stream.forward`` with h11, as before.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

import h11
from aiohttp import web
from aiohttp.http_exceptions import HttpProcessingError

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.fleet.gateway.wire import PlainResponse, parse_plain_response
from tunnel_server.tunnel.http_over_stream import (
    HOP_BY_HOP,
    MAX_RESPONSE_HEAD,
    Reply,
    ResponseDeclined,
    ResponseHook,
    UpstreamError,
    client_gone,
    relay_answer,
)

__all__ = ["forward_plain", "response_parser"]

log = logging.getLogger("tunnel_server.fleet.gateway")


def response_parser(method: str) -> h11.Connection:
    """An h11 client connection that has sent a ``method`` request: it parses the answer."""
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    conn.send(h11.Request(method=method, target="/", headers=[("Host", "gateway")]))
    conn.send(h11.EndOfMessage())
    return conn


async def forward_plain(
    request: web.Request,
    stream: TunnelStream,
    head: bytes,
    *,
    respond: ResponseHook | None = None,
    head_sent: bool = False,
) -> web.StreamResponse:
    """Send ``head`` and the client's body over ``stream``; relay the answer (module rules).

    ``head_sent``: the head already went with the stream's OPEN (early data).
    """
    if not head_sent:
        await stream.write(head)
    if not request.body_exists:
        return await _answer(request, stream, respond)
    chunked = request.content_length is None
    failed: UpstreamError | StreamError | ResponseDeclined | None = None
    # The group's own body must not raise: Python 3.11 would wrap it in an ExceptionGroup.
    async with asyncio.TaskGroup() as group:
        body = group.create_task(
            _send_body(request, stream, chunked=chunked), name="gateway.request-body"
        )
        try:
            return await _answer(request, stream, respond)
        except (UpstreamError, StreamError, ResponseDeclined) as error:
            failed = error
        finally:
            # The exchange is over: a body the backend never read (an early error answer)
            # is not sent any further.
            if not body.done():
                body.cancel()
    raise failed


async def _send_body(request: web.Request, stream: TunnelStream, *, chunked: bool) -> None:
    try:
        async for chunk in request.content.iter_any():
            if not chunk:
                continue  # an empty chunk would end a chunked body
            if chunked:
                await stream.write(b"%x\r\n%b\r\n" % (len(chunk), chunk))
            else:
                await stream.write(chunk)
        if chunked:
            await stream.write(b"0\r\n\r\n")
    except StreamError:
        return  # the backend side failed; the answer's path reports it
    except ConnectionError:
        stream.reset(ErrorCode.CANCEL, "the client went away while sending the body")
    except HttpProcessingError as error:  # a broken chunked encoding, a body over the limit
        stream.reset(ErrorCode.CANCEL, f"the client's body is malformed: {error.message}")


async def _answer(
    request: web.Request, stream: TunnelStream, respond: ResponseHook | None
) -> web.StreamResponse:
    buffer = b""
    method = request.method
    while True:
        data = await stream.read()
        if not data:
            break
        buffer = buffer + data if buffer else data
        end = buffer.find(b"\r\n\r\n", 0, MAX_RESPONSE_HEAD)
        if end < 0 and len(buffer) <= MAX_RESPONSE_HEAD:
            continue
        plain = parse_plain_response(buffer, method=method, limit=MAX_RESPONSE_HEAD)
        if plain is not None:
            return await _relay(request, stream, plain, buffer, respond)
        break
    # Not a plain answer (or the stream ended first): h11 reads it from the same bytes.
    conn = response_parser(method)
    try:
        conn.receive_data(buffer)
        if not data:
            conn.receive_data(b"")
    except h11.RemoteProtocolError as error:
        raise UpstreamError(f"the target sent invalid HTTP: {error}") from error
    return await relay_answer(request, stream, conn, respond)


async def _relay(
    request: web.Request,
    stream: TunnelStream,
    plain: PlainResponse,
    buffer: bytes,
    respond: ResponseHook | None,
) -> web.StreamResponse:
    fields = [(name, value) for name, value in plain.fields if name.lower() not in HOP_BY_HOP]
    if respond is not None:
        fields = respond(plain.status, fields)
    reply = Reply(status=plain.status, reason=plain.reason or None)
    headers = reply.headers
    for name, value in fields:
        headers.add(name, value)
    try:
        await reply.prepare(request)
    except ConnectionError:
        return client_gone(stream, reply)
    held = buffer[plain.size : plain.size + plain.length]
    try:
        held = await _copy_body(stream, reply, held, plain.length - len(held))
    except (UpstreamError, StreamError) as error:
        # The answer is begun, so no 502 can follow: what came before the break is the
        # client's (written by ``_copy_body``), and the cut tells it the answer is incomplete.
        log.debug("answer from %s cut short: %s", stream.target, error)
        reply.force_close()
        if request.transport is not None:
            request.transport.close()
        return reply
    except ConnectionError:  # from the client's socket
        return client_gone(stream, reply)
    with contextlib.suppress(ConnectionError):
        await reply.write_eof(held)
    return reply


async def _copy_body(stream: TunnelStream, reply: Reply, held: bytes, left: int) -> bytes:
    """Relay the ``left`` body bytes after ``held``; the last piece is returned, unwritten.

    One piece is held back until the next is known, so the head, the last piece and the end
    of a small answer go out in one write (``write_eof``).
    """
    try:
        while left > 0:
            if not stream.has_data:
                # About to wait for the backend: what we hold (at least the head) goes now.
                await reply.write(held)
                held = b""
            data = await stream.read()
            if not data:
                break
            if held:
                await reply.write(held)
            held = data[:left]
            left -= len(held)
    except StreamError:
        with contextlib.suppress(ConnectionError):
            await reply.write(held)
        raise
    if left > 0:
        with contextlib.suppress(ConnectionError):
            await reply.write(held)
        raise UpstreamError(f"the answer ended {left} bytes before its Content-Length")
    return held
