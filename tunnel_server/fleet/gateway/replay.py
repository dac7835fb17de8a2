"""Small request bodies held once, so a retry or a mirror can send them again (issue 16).

A request's body streams from the client to one backend and is not kept. To retry a request
with a body on another backend (a failure before any answer, or a status in the route's
``retry.codes``) or to copy it to mirror backends, its bytes must be sent again, so a small
body is read into memory before the first attempt.

Rules:

* Only what can use it is held (``plan``): a body is read ahead when the decision has a mirror
  (any method), or when the method is idempotent (RFC 9110 section 9.2.2: PUT and DELETE with a
  body are; POST and PATCH never) and the decision names another backend to retry on. A
  protocol upgrade never (its bytes after the head are not a body).
* Bounded: at most ``limit`` bytes (the gateway's ``replay_body_limit``, 64 KiB by default),
  whether the size is announced (``Content-Length``: a bigger one is not read ahead at all) or
  not (chunked: read until it ends or passes the limit). Memory per request is at most the
  limit plus one read of the client's socket buffer.
* A body that passes the limit, or whose client stops sending before the end within the time
  allowed, or fails (malformed chunking, a client gone), keeps today's behaviour: what was read
  is sent first, the rest streams once; no retry once a byte was sent, no mirror copy (the data
  path counts it, ``outcome="skipped_body"``). A read error is raised again to the data path at
  the point where it would have met it, so its answer (413, a reset stream) is unchanged.
* ``BodyBuffer`` is the sans-IO core (chunks in, a state and the held chunks out);
  ``ReplayBody`` is the thin aiohttp adapter the data path reads as the request's content:
  until ``fill()`` it passes the client's stream through untouched; after it, each pass
  (``rewind()`` before each attempt) serves the held chunks, then the rest of a body too big
  to hold.
"""

from __future__ import annotations

import asyncio
import enum
from dataclasses import dataclass
from typing import TYPE_CHECKING

from aiohttp.http_exceptions import HttpProcessingError
from aiohttp.streams import StreamReader

if TYPE_CHECKING:
    from aiohttp.base_protocol import BaseProtocol

__all__ = [
    "DEFAULT_BODY_LIMIT",
    "IDEMPOTENT",
    "BodyBuffer",
    "BodyState",
    "Plan",
    "ReplayBody",
    "ReplayError",
    "may_retry",
    "plan",
]

DEFAULT_BODY_LIMIT = 64 * 1024
"""Bytes of a request body held for a replay by default: API calls (JSON, form posts) fit
many times over; an upload does not, and should not sit in the gateway's memory: at 1,000
requests in flight that is 64 MiB at most."""
IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
"""RFC 9110 section 9.2.2: methods a client may repeat; only these are retried once sent."""


class ReplayError(RuntimeError):
    """A body read once was asked to start again: a bug of the caller, never the client's."""


# ---------------------------------------------------------------------------- the decision


@dataclass(frozen=True, kw_only=True)
class Plan:
    """What to do with one request's body before its first attempt."""

    hold: bool
    """Read the body ahead (up to the limit) so it can be sent more than once."""
    too_large: bool = False
    """The announced ``Content-Length`` is over the limit: streamed once, never held."""


def plan(
    *,
    method: str,
    has_body: bool,
    content_length: int | None,
    upgrade: bool,
    backends: int,
    mirrors: int,
    limit: int,
) -> Plan:
    """Whether to hold the body (module rules); pure, so every case is a unit test.

    ``backends``: the decision's backends (the first and the ones to retry on); ``mirrors``:
    its mirror backends; ``limit``: bytes, 0 turns holding off.
    """
    if not has_body or upgrade or limit <= 0:
        return Plan(hold=False)
    useful = mirrors > 0 or (method.upper() in IDEMPOTENT and backends > 1)
    if not useful:
        return Plan(hold=False)
    if content_length is not None and content_length > limit:
        return Plan(hold=False, too_large=True)
    return Plan(hold=True)


def may_retry(method: str, *, has_body: bool, held: bool) -> bool:
    """May a request that reached a backend go to the next one (no answer relayed yet)?

    Idempotent methods only, and only when the body (if any) can be sent again whole.
    """
    return method.upper() in IDEMPOTENT and (not has_body or held)


# ---------------------------------------------------------------------------- sans-IO core


class BodyState(enum.Enum):
    FILLING = "filling"
    """Chunks are still coming; nothing is known yet."""
    COMPLETE = "complete"
    """The whole body is held (at most ``limit`` bytes): it can be sent any number of times."""
    OVER = "over"
    """It passed the limit: the held part is sent once, the rest streams behind it."""
    CUT = "cut"
    """Reading stopped before the end (an error, the time allowed): as ``OVER``."""


class BodyBuffer:
    """Collects a body's chunks up to ``limit`` bytes (module rules); no I/O."""

    def __init__(self, *, limit: int) -> None:
        if limit < 0:
            raise ValueError(f"limit must be >= 0 bytes, not {limit}")
        self.limit = limit
        self.state = BodyState.FILLING
        self.size = 0
        """Bytes held."""
        self._chunks: list[bytes] = []

    @property
    def held(self) -> tuple[bytes, ...]:
        """The chunks read so far, in order (empty ones are not kept)."""
        return tuple(self._chunks)

    @property
    def complete(self) -> bool:
        return self.state is BodyState.COMPLETE

    def body(self) -> bytes:
        """The whole body; only once ``complete``."""
        if not self.complete:
            raise ReplayError(f"the body is not held whole ({self.state.value})")
        return b"".join(self._chunks)

    def feed(self, chunk: bytes) -> None:
        """One chunk as read from the client; past the limit the state becomes ``OVER``."""
        if self.state is not BodyState.FILLING:
            raise ReplayError(f"no chunk is taken once the body is {self.state.value}")
        if not chunk:
            return
        self._chunks.append(chunk)
        self.size += len(chunk)
        if self.size > self.limit:
            self.state = BodyState.OVER

    def end(self) -> None:
        """The client's body ended (within the limit, or ``feed`` would have said ``OVER``)."""
        if self.state is BodyState.FILLING:
            self.state = BodyState.COMPLETE

    def stop(self) -> None:
        """Reading stopped before the end: what is held goes once, the rest streams."""
        if self.state is BodyState.FILLING:
            self.state = BodyState.CUT

    def chunk(self, index: int) -> bytes | None:
        """The held chunk ``index`` of a pass, None past the last."""
        return self._chunks[index] if 0 <= index < len(self._chunks) else None


# ---------------------------------------------------------------------------- aiohttp adapter


class ReplayBody(StreamReader):
    """The request's content as the data path reads it (``iter_any``), able to start again.

    Wraps the client's body reader (the gateway's bounded one). Before ``fill()`` it passes
    reads straight through, so a request whose body is not held costs one call per chunk.
    """

    def __init__(
        self,
        inner: StreamReader,
        *,
        limit: int,
        protocol: BaseProtocol,
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        super().__init__(protocol, 2**16, loop=loop)
        self.inner = inner
        self.buffer: BodyBuffer | None = None
        """None until ``fill()``: the body streams through untouched."""
        self._limit = limit
        self._index = 0
        """The next held chunk of this pass."""
        self._read = False
        """This pass has returned bytes (held or streamed)."""
        self._error: BaseException | None = None
        """What reading ahead met, raised again where the data path reads past the held part."""

    @property
    def held(self) -> bool:
        """The whole body is in memory: it can be sent again."""
        return self.buffer is not None and self.buffer.complete

    def body(self) -> bytes:
        """The whole body; only when ``held``."""
        if self.buffer is None:
            raise ReplayError("the body was not read ahead")
        return self.buffer.body()

    async def fill(self, *, within: float) -> bool:
        """Read the body ahead; True when it is held whole. Once, before the first attempt.

        Reads until the body ends, passes the limit, fails, or ``within`` seconds pass.
        """
        if self.buffer is not None or self._read:
            raise ReplayError("the body is read ahead once, before any pass")
        buffer = self.buffer = BodyBuffer(limit=self._limit)
        try:
            async with asyncio.timeout(within):
                while buffer.state is BodyState.FILLING:
                    chunk = await self.inner.readany()
                    if chunk:
                        buffer.feed(chunk)
                    else:
                        buffer.end()
        except TimeoutError:
            buffer.stop()  # a slow client: the rest streams, as without holding
        except (HttpProcessingError, ConnectionError, RuntimeError) as error:
            # A malformed body, a client gone (aiohttp says "Connection closed." with a
            # RuntimeError): met again by the data path where it reads on.
            buffer.stop()
            self._error = error
        return buffer.complete

    def rewind(self) -> None:
        """The next read starts again at the first byte (before every attempt)."""
        if not self._read:
            return  # nothing of this pass was read (the attempt was refused before sending)
        if not self.held:
            raise ReplayError("a body not held whole is sent once")
        self._index = 0
        self._read = False

    async def readany(self) -> bytes:
        chunk = await self._next()
        self._read = self._read or bool(chunk)
        return chunk

    async def _next(self) -> bytes:
        buffer = self.buffer
        if buffer is None:
            return await self.inner.readany()
        chunk = buffer.chunk(self._index)
        if chunk is not None:
            self._index += 1
            return chunk
        if buffer.complete:
            return b""
        if self._error is not None:
            raise self._error
        return await self.inner.readany()

    def is_eof(self) -> bool:
        if self.buffer is not None and self.buffer.chunk(self._index) is not None:
            return False
        return self.held or self.inner.is_eof()
