"""The agent end of the ``models`` stream: device models from the cloud, validated and kept.

A session task (``TunnelClient.session_tasks["models"]``): for as long as a tunnel session
lives it keeps one ``models`` stream open (device_models/model_wire.py has the protocol). It
says hello with every model it holds; the cloud answers with every newer one and later pushes
each upload. Every model is validated on arrival; a valid newer one is stored atomically in
the received-models folder and used at once (``ReceivedModels.receive``); anything else is
refused with one log line and an ack saying why, never a crash. A stream that breaks is opened
again (1 s, doubling to 30 s) while the session lives; a cloud without the service (an older
server) is asked again only on the next session.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from dataclasses import dataclass

from device_models import DeviceModelsError
from device_models import model_wire as wire
from device_models.sync_wire import Decoder, WireError, encode
from edge_agent.twins.models import ReceivedModels
from tunnel_aio import StreamError, StreamRejectedError, TunnelConnection, TunnelStream
from tunnel_protocol import ErrorCode, SessionState

__all__ = ["CloudModelLink", "ModelLinkSettings"]

log = logging.getLogger("edge_agent.model_link")

_DRAIN_CHECK = 0.2
"""Seconds between looks at the session's state: a drain waits at most this for our stream."""


@dataclass(frozen=True, kw_only=True)
class ModelLinkSettings:
    open_timeout: float = 10.0
    """Seconds to wait for the cloud to accept the stream."""
    reopen_initial: float = 1.0
    """Seconds before opening a broken stream again; doubles up to ``reopen_max``."""
    reopen_max: float = 30.0
    """Seconds: the longest wait between attempts, so a fixed cloud is used within half a minute."""


class CloudModelLink:
    """Receives device models over the tunnel into ``ReceivedModels``."""

    def __init__(
        self, models: ReceivedModels, *, settings: ModelLinkSettings | None = None
    ) -> None:
        self.models = models
        self.settings = settings or ModelLinkSettings()
        self.received = 0
        self.refused = 0

    def status(self) -> dict[str, object]:
        return {"received": self.received, "refused": self.refused}

    async def run_session(self, connection: TunnelConnection) -> None:
        """Session task: keep one ``models`` stream open while ``connection`` lives."""
        delay = self.settings.reopen_initial
        while _usable(connection):
            try:
                stream = await connection.open_stream(
                    wire.MODELS_TARGET, timeout=self.settings.open_timeout
                )
            except StreamRejectedError as error:
                log.info(
                    "the cloud offers no models stream (%s); device models stay as they are", error
                )
                return
            if await self._serve_until_draining(stream, connection):
                delay = self.settings.reopen_initial
            if not _usable(connection):
                return
            log.info("models stream closed; opening it again in %.1f s", delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, self.settings.reopen_max)

    async def _serve_until_draining(
        self, stream: TunnelStream, connection: TunnelConnection
    ) -> bool:
        """Serve the stream; reset it once the session drains, so the drain never waits on it."""
        try:
            async with asyncio.TaskGroup() as group:
                serving = group.create_task(self._serve(stream), name="models.stream")
                watch = group.create_task(_until_not_usable(connection), name="models.drain")
                await asyncio.wait({serving, watch}, return_when=asyncio.FIRST_COMPLETED)
                serving.cancel()
                watch.cancel()
        finally:
            with contextlib.suppress(StreamError):
                stream.reset(ErrorCode.CANCEL, "models stream closed")
        return not serving.cancelled() and serving.result()

    async def _serve(self, stream: TunnelStream) -> bool:
        """Serve one stream until it ends; True if the cloud answered at all."""
        decoder = Decoder(max_bytes=wire.MAX_MESSAGE_BYTES, max_depth=wire.MAX_DEPTH)
        answered = False
        try:
            await stream.write(
                encode(wire.hello(self.models.have()), max_bytes=wire.MAX_MESSAGE_BYTES)
            )
            while chunk := await stream.read():
                answered = True
                for message in decoder.feed(chunk):
                    await stream.write(
                        encode(self._on_model(message), max_bytes=wire.MAX_MESSAGE_BYTES)
                    )
        except WireError as error:
            log.error("the cloud broke the models protocol: %s", error)  # noqa: TRY400
            stream.reset(ErrorCode.PROTOCOL_ERROR, str(error)[:200])
        except StreamError as error:
            log.debug("models stream ended: %s", error)
        except OSError as error:
            log.error("cannot store a device model: %s", error)  # noqa: TRY400
            stream.reset(ErrorCode.INTERNAL_ERROR, "cannot store the model")
        return answered

    def _on_model(self, message: dict[str, object]) -> dict[str, object]:
        raw = message.get("model")
        name = str(raw.get("name"))[:63] if isinstance(raw, dict) else "?"
        version = str(raw.get("version"))[:32] if isinstance(raw, dict) else "?"
        try:
            model = wire.parse_model(message)
        except DeviceModelsError as error:
            self.refused += 1
            problems = "; ".join(str(p) for p in error.problems[:3])
            log.error("device model %s %s from the cloud refused: %s", name, version, problems)  # noqa: TRY400 - one line
            return wire.ack(name, version, "refused", f"{error.summary}: {problems}")
        result, reason = self.models.receive(model)
        if result == "stored":
            self.received += 1
        elif result == "refused":
            self.refused += 1
        return wire.ack(model.name, model.version, result, reason)


def _usable(connection: TunnelConnection) -> bool:
    return not connection.terminated and connection.session.state is SessionState.OPEN


async def _until_not_usable(connection: TunnelConnection) -> None:
    # The session offers no event for "draining": poll it, as the twins link does.
    while True:
        await asyncio.sleep(_DRAIN_CHECK)
        if not _usable(connection):
            return
