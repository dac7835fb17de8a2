"""The cloud end of the ``models`` stream: agents get every newer model, now and on reconnect.

Each connected agent keeps one ``models`` stream open (device_models/model_wire.py has the
protocol). On its hello the cloud sends every model the agent lacks or holds at a lower version;
an upload is then queued to every open stream. An agent that was offline during an upload gets
it in the answer to its next hello, so nothing needs to be remembered per node. A stream whose
queue is full (an agent that reads nothing) is reset; the agent opens it again and catches up
through its hello.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from aiohttp import web

from device_models import DeviceModel, is_newer
from device_models import model_wire as wire
from device_models.sync_wire import Decoder, WireError, encode
from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.tunnel.sessions import AgentSession
from tunnel_server.twins.model_store import ModelCatalogue

__all__ = ["ModelPush"]

log = logging.getLogger("tunnel_server.twins.model_push")

MAX_QUEUED = 64
"""Uploads queued for one stream before it is reset (the agent catches up on reopening)."""
HELLO_TIMEOUT = 30.0
"""Seconds an agent has to send its hello after opening the stream."""


class ModelPush:
    """The open ``models`` streams and what to send on them."""

    def __init__(self, catalogue: ModelCatalogue) -> None:
        self._catalogue = catalogue
        self._queues: dict[asyncio.Queue[DeviceModel], str] = {}

    @property
    def streams(self) -> int:
        return len(self._queues)

    def publish(self, model: DeviceModel) -> None:
        """Queue a new model for every connected agent."""
        for queue, node in list(self._queues.items()):
            try:
                queue.put_nowait(model)
            except asyncio.QueueFull:
                log.warning("models stream of %s is not reading; it will catch up on reopen", node)
                del self._queues[queue]

    async def serve(
        self, stream: TunnelStream, session: AgentSession, _app: web.Application
    ) -> None:
        stream.accept()
        queue: asyncio.Queue[DeviceModel] = asyncio.Queue(maxsize=MAX_QUEUED)
        decoder = Decoder(max_bytes=wire.MAX_MESSAGE_BYTES, max_depth=wire.MAX_DEPTH)
        node = session.name
        try:
            async with asyncio.timeout(HELLO_TIMEOUT):
                have = wire.parse_hello(await _next_message(stream, decoder))
            self._queues[queue] = node
            for model in self._newer(have):
                queue.put_nowait(model)
            # Both end quietly (errors logged); the stream's end ends the reader, then the sender.
            async with asyncio.TaskGroup() as group:
                sender = group.create_task(self._send(stream, queue, node), name="models.send")
                await _read_acks(stream, decoder, node)
                sender.cancel()
        except WireError as error:
            log.warning("models stream of %s broke the protocol: %s", node, error)
            stream.reset(ErrorCode.PROTOCOL_ERROR, str(error)[:200])
        except (StreamError, TimeoutError, EOFError) as error:
            log.debug("models stream of %s ended: %s", node, error)
        finally:
            self._queues.pop(queue, None)
            with contextlib.suppress(StreamError):
                stream.end()  # the agent ended or reset it: close our side too

    def _newer(self, have: dict[str, str]) -> list[DeviceModel]:
        out = []
        for name in self._catalogue.names():
            latest = self._catalogue.latest(name)
            if latest is None:
                continue
            try:
                newer = is_newer(latest.version, have.get(name))
            except ValueError:
                newer = True
            if newer:
                out.append(latest.model)
        return out[: wire.MAX_HAVE]

    async def _send(
        self, stream: TunnelStream, queue: asyncio.Queue[DeviceModel], node: str
    ) -> None:
        while True:
            if queue not in self._queues:  # dropped by publish: too far behind
                stream.reset(ErrorCode.CANCEL, "too many models queued; reopen and say hello")
                return
            model = await queue.get()
            try:
                await stream.write(
                    encode(wire.model_message(model), max_bytes=wire.MAX_MESSAGE_BYTES)
                )
            except (StreamError, WireError) as error:
                log.debug("models stream of %s: cannot send: %s", node, error)
                return
            log.info("sent device model %s %s to %s", model.name, model.version, node)


async def _next_message(stream: TunnelStream, decoder: Decoder) -> dict[str, object]:
    while True:
        chunk = await stream.read()
        if not chunk:
            raise EOFError("the agent closed the stream")
        messages = decoder.feed(chunk)
        if messages:
            if len(messages) > 1:
                raise WireError("one hello first, then acks")
            return messages[0]


async def _read_acks(stream: TunnelStream, decoder: Decoder, node: str) -> None:
    """Log the agent's acks until the stream ends or breaks the protocol (then reset it)."""
    try:
        while chunk := await stream.read():
            for message in decoder.feed(chunk):
                name, version, result, reason = wire.parse_ack(message)
                if result == "refused":
                    log.warning(
                        "node %s refused device model %s %s: %s", node, name, version, reason
                    )
                else:
                    log.info("node %s: device model %s %s %s", node, name, version, result)
    except WireError as error:
        log.warning("models stream of %s broke the protocol: %s", node, error)
        stream.reset(ErrorCode.PROTOCOL_ERROR, str(error)[:200])
    except StreamError as error:
        log.debug("models stream of %s ended: %s", node, error)
