"""One HTTP/1.1 exchange between a tunnel stream and a kept-alive endpoint connection.

Rules:

* The request head goes to the endpoint without the gateway's ``Connection: close``
  (``http1.parse_request``), then its body, exactly as many bytes as its framing says, read
  from the stream only as the endpoint takes them (``drain``: backpressure); the stream is
  never read past the request's end.
* The answer goes back to the stream as it arrives, byte for byte (interim 1xx heads too);
  once the final answer's body is complete (``http1.BodyFramer``) the stream is ended (our
  half-close: the gateway's h11 sees the answer end there, as it did when the endpoint
  closed the connection).
* ``relay`` returns whether the connection may serve another request: the request was sent to
  its end, the answer read to its end, the endpoint keeps the connection, and it sent nothing
  beyond its answer. A 101 (switching protocols) turns the rest into a raw pipe of the
  endpoint's bytes until it closes; never reused.
* The stream is watched while the exchange runs: the gateway closing it (its timeout fired, its
  client went away) ends the exchange at once (StreamResetError) and the connection is closed,
  since the endpoint may still be working on the request.
* ``NoAnswerError``: the endpoint closed or reset the connection before a byte of an answer,
  and nothing of the request body was taken from the stream beyond what the caller held: the
  caller may send the request again on a new connection (it does so only for a kept
  connection and a replayable request). Other failures raise OSError, StreamError or
  FramingError; the caller closes the connection and resets the stream.
"""

from __future__ import annotations

import asyncio

from edge_agent.cluster.gateway.http1 import (
    BodyFramer,
    Framing,
    RequestHead,
    parse_response,
    split_head,
)
from edge_agent.cluster.gateway.pool import Connection
from tunnel_aio import StreamResetError, TunnelStream
from tunnel_protocol import ErrorCode

CHUNK = 64 * 1024
"""Bytes per read from the endpoint: one full DATA frame at the tunnel's default frame size."""


class NoAnswerError(ConnectionError):
    """The endpoint closed the connection before answering (see the module's rules)."""


async def relay(
    stream: TunnelStream, connection: Connection, head: RequestHead, body: bytes
) -> bool:
    """Send the request and relay the answer; whether the connection may be reused.

    ``head``, then ``body`` (its first bytes, read with the head), then the rest from the stream.
    """
    request = BodyFramer(head.framing, head.length)
    taken = request.feed(body)
    clean = taken == len(body)  # anything past the request's end: nothing we should send on
    connection.writer.write(head.for_backend + body[:taken])
    overflow: list[bool] = []
    sending = None
    try:
        async with asyncio.TaskGroup() as group:
            watching = group.create_task(_watch(stream), name="gateway.watch")
            if not request.done:
                sending = group.create_task(
                    _send_body(stream, connection, request, overflow), name="gateway.request-body"
                )
            reusable = await _answer(stream, connection, head.method)
            watching.cancel()
            if sending is not None:
                # An answer before the whole body (an early 413, 401): the rest is not sent
                # on, and this connection, in the middle of a request, is not reused.
                sending.cancel()
    except BaseExceptionGroup as errors:
        raise errors.exceptions[0] from None  # the first failure says what went wrong
    cut = sending is not None and sending.cancelled()
    return reusable and clean and request.done and not overflow and not cut


async def _watch(stream: TunnelStream) -> None:
    """Fail when the gateway closes the stream before the answer is whole.

    Its timeout fired or its client went away: the endpoint may never answer, and nothing
    else would notice.
    """
    await stream.wait_closed()
    raise StreamResetError(f"{stream.target}: closed by the gateway", code=ErrorCode.CANCEL)


async def _send_body(
    stream: TunnelStream, connection: Connection, request: BodyFramer, overflow: list[bool]
) -> None:
    writer = connection.writer
    while not request.done:
        data = await stream.read()
        if not data:
            # The cloud ended the stream before the body did: the endpoint would wait for the
            # rest forever, so the connection goes (the answer's read then fails).
            writer.transport.abort()
            return
        taken = request.feed(data)
        if taken < len(data):
            overflow.append(True)  # bytes past the request's end: not sent on, not reused
            data = data[:taken]
        writer.write(data)
        await writer.drain()


async def _answer(  # noqa: C901 - heads, then a body: one read loop each
    stream: TunnelStream, connection: Connection, method: bytes
) -> bool:
    reader = connection.reader
    buffer = b""
    sent = 0
    while True:
        size = split_head(buffer)
        if size is None:
            try:
                data = await reader.read(CHUNK)
            except ConnectionError as error:
                if sent or buffer:
                    raise
                raise NoAnswerError(str(error)) from error
            if not data:
                if sent or buffer:
                    await stream.write(buffer)
                    stream.end()  # a head cut short: the gateway's parser says so
                    return False
                raise NoAnswerError("closed before answering")
            buffer += data
            continue
        response = parse_response(buffer[:size], method)
        if response.interim:
            await stream.write(buffer[:size])
            sent += size
            buffer = buffer[size:]
            continue
        if response.status == 101:
            await stream.write(buffer)
            while data := await reader.read(CHUNK):
                await stream.write(data)
            stream.end()
            return False
        break
    body = BodyFramer(response.framing, response.length)
    taken = body.feed(memoryview(buffer)[size:])
    clean = size + taken == len(buffer)
    await stream.write(buffer[: size + taken])
    while not body.done:
        data = await reader.read(CHUNK)
        if not data:
            break  # until-close ends here; a short body ends here too, and h11 says so
        taken = body.feed(data)
        clean = clean and taken == len(data)
        await stream.write(data if taken == len(data) else data[:taken])
    stream.end()
    return (
        body.done and clean and response.keep_alive and response.framing is not Framing.UNTIL_CLOSE
    )


__all__ = ["CHUNK", "NoAnswerError", "relay"]
