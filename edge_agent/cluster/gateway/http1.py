"""Where an HTTP/1.1 message passing through ends, so a backend connection can be reused (sans-IO).

The cloud's gateway writes one request per tunnel stream; the agent relays it to a Service
endpoint and relays the answer back, byte for byte. To keep the TCP connection to the endpoint
open for the next stream (instead of a dial per request), the agent must know where the request
and the response end, and whether the backend keeps the connection. Nothing is re-encoded:
these functions only find boundaries; the bytes pass through untouched, except the request
head, from which the gateway's ``Connection: close`` (meant for the stream, not the backend)
is removed.

Rules (RFC 9112):

* ``split_head(buffer)`` finds the end of a head (``CRLF CRLF``) within ``MAX_HEAD`` bytes.
* A request (§6.1-6.3): ``Transfer-Encoding`` whose last coding is ``chunked`` -> a chunked
  body; any other transfer coding -> ``FramingError`` (no length can be known, §6.3 rule 4);
  else ``Content-Length`` (digits, several equal values allowed) -> that many bytes; else no
  body. ``Upgrade`` with ``Connection: upgrade`` -> ``upgrade`` (the caller pipes raw bytes
  on a connection of its own: it is never reused).
* A response to ``method`` (§6.3): 1xx (but 101), 204, 304, or any answer to HEAD -> no body
  (a 1xx is followed by another head); ``Transfer-Encoding`` ending in ``chunked`` ->
  chunked; other transfer codings or no length at all -> the body runs until the backend
  closes, and the connection is not reused; else ``Content-Length``. ``Content-Length`` next
  to ``Transfer-Encoding``, or an invalid one: not reused (§6.3 rules 3 and 5).
* The connection is kept (``keep_alive``) only for HTTP/1.1 without a ``close`` token in
  ``Connection``; HTTP/1.0 answers are never kept.
* ``BodyFramer.feed(data)`` says how many leading bytes of ``data`` still belong to the body
  and whether it is complete; a chunk size line over ``MAX_LINE`` bytes or trailers over
  ``MAX_HEAD`` are a ``FramingError``, so nothing is buffered without bound (the framer keeps
  at most one partial line).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

MAX_HEAD = 64 * 1024
"""Bytes of a head (request or response) or of a chunked body's trailers: the tunnel server
refuses request heads over 32 KiB and reads response heads up to 64 KiB itself."""
MAX_LINE = 4096
"""Bytes of one chunk size line, extensions included: real ones are a few bytes."""

IDEMPOTENT = frozenset({b"GET", b"HEAD", b"OPTIONS", b"TRACE", b"PUT", b"DELETE"})
"""RFC 9110 §9.2.2: a request of these methods may be sent again."""


class FramingError(ValueError):
    """The message's framing cannot be followed; the connection must not be reused."""


class Framing(enum.Enum):
    NONE = "none"
    LENGTH = "length"
    CHUNKED = "chunked"
    UNTIL_CLOSE = "until-close"


def split_head(buffer: bytes | bytearray) -> int | None:
    """The length of the head at the start of ``buffer`` (with its blank line).

    None if it has not all arrived; FramingError when it is longer than ``MAX_HEAD``.
    """
    end = buffer.find(b"\r\n\r\n", 0, MAX_HEAD + 4)
    if end < 0:
        if len(buffer) > MAX_HEAD:
            raise FramingError(f"head longer than {MAX_HEAD} bytes")
        return None
    return end + 4


def _fields(head: bytes) -> tuple[bytes, list[tuple[bytes, bytes, bytes]]]:
    """The start line and ``(lower name, value, raw line)`` of each field."""
    lines = head[:-4].split(b"\r\n")
    fields = []
    for line in lines[1:]:
        name, colon, value = line.partition(b":")
        if not colon or not name or name != name.strip() or line[:1] in (b" ", b"\t"):
            raise FramingError("malformed header field (or an obsolete line folding)")
        fields.append((name.lower(), value.strip(b" \t"), line))
    return lines[0], fields


def _tokens(fields: list[tuple[bytes, bytes, bytes]], name: bytes) -> list[bytes]:
    return [
        token.strip(b" \t").lower()
        for lower, value, _ in fields
        if lower == name
        for token in value.split(b",")
        if token.strip(b" \t")
    ]


def _content_length(fields: list[tuple[bytes, bytes, bytes]]) -> int | None:
    values = set(_tokens(fields, b"content-length"))
    if not values:
        return None
    if len(values) != 1:
        raise FramingError("different Content-Length values")
    (value,) = values
    if not value.isdigit() or len(value) > 18:
        raise FramingError("invalid Content-Length")
    return int(value)


@dataclass(frozen=True, slots=True)
class RequestHead:
    method: bytes
    framing: Framing
    length: int
    """Body bytes when ``framing`` is LENGTH, else 0."""
    upgrade: bool
    for_backend: bytes
    """The head to send to the backend: the same bytes without ``Connection: close``."""

    @property
    def replayable(self) -> bool:
        """Safe to send again on another connection: idempotent, and no body to replay."""
        return self.method in IDEMPOTENT and self.framing is Framing.NONE


def parse_request(head: bytes) -> RequestHead:
    """The request head ``head`` (as ``split_head`` cut it); FramingError if unusable."""
    start, fields = _fields(head)
    parts = start.split(b" ")
    if len(parts) != 3 or not parts[2].startswith(b"HTTP/1."):
        raise FramingError("malformed request line")
    connection = _tokens(fields, b"connection")
    upgrade = b"upgrade" in connection and any(lower == b"upgrade" for lower, _, _ in fields)
    codings = _tokens(fields, b"transfer-encoding")
    length = 0
    if codings:
        if codings[-1] != b"chunked":
            raise FramingError("a request body without a length")
        framing = Framing.CHUNKED
    else:
        found = _content_length(fields)
        framing, length = (Framing.NONE, 0) if not found else (Framing.LENGTH, found)
    if upgrade:
        for_backend = head
    else:
        kept = [start] + [line for lower, _, line in fields if lower != b"connection"]
        for_backend = b"\r\n".join(kept) + b"\r\n\r\n"
    return RequestHead(
        method=parts[0], framing=framing, length=length, upgrade=upgrade, for_backend=for_backend
    )


@dataclass(frozen=True, slots=True)
class ResponseHead:
    status: int
    framing: Framing
    length: int
    keep_alive: bool
    """The backend keeps the connection after this answer (and its framing allows reuse)."""

    @property
    def interim(self) -> bool:
        """A 1xx other than 101: another head follows."""
        return 100 <= self.status < 200 and self.status != 101


def parse_response(head: bytes, method: bytes) -> ResponseHead:
    """The response head ``head`` to a ``method`` request; FramingError if unusable."""
    start, fields = _fields(head)
    version, _, rest = start.partition(b" ")
    code = rest[:3]
    if not version.startswith(b"HTTP/1.") or len(code) != 3 or not code.isdigit():
        raise FramingError("malformed status line")
    status = int(code)
    keep_alive = version == b"HTTP/1.1" and b"close" not in _tokens(fields, b"connection")
    if 100 <= status < 200 or status in (204, 304) or method == b"HEAD":
        return ResponseHead(status=status, framing=Framing.NONE, length=0, keep_alive=keep_alive)
    codings = _tokens(fields, b"transfer-encoding")
    if codings:
        chunked = codings[-1] == b"chunked"
        mixed = any(lower == b"content-length" for lower, _, _ in fields)
        framing = Framing.CHUNKED if chunked else Framing.UNTIL_CLOSE
        keep = keep_alive and chunked and not mixed
        return ResponseHead(status=status, framing=framing, length=0, keep_alive=keep)
    try:
        length = _content_length(fields)
    except FramingError:
        length = None
    if length is None:
        return ResponseHead(status=status, framing=Framing.UNTIL_CLOSE, length=0, keep_alive=False)
    framing = Framing.LENGTH if length else Framing.NONE
    return ResponseHead(status=status, framing=framing, length=length, keep_alive=keep_alive)


class _Chunk(enum.Enum):
    SIZE = 0
    DATA = 1
    DATA_END = 2
    TRAILERS = 3


class BodyFramer:
    """Follows one body through the bytes that pass; see the module's rules."""

    def __init__(self, framing: Framing, length: int = 0) -> None:
        self.framing = framing
        self._left = length if framing is Framing.LENGTH else 0
        self.done = framing is Framing.NONE or (framing is Framing.LENGTH and length == 0)
        self._state = _Chunk.SIZE
        self._line = bytearray()
        self._trailers = 0

    def feed(self, data: bytes | memoryview) -> int:
        """How many leading bytes of ``data`` belong to the body (all of them until it ends)."""
        if self.done:
            return 0
        if self.framing is Framing.UNTIL_CLOSE:
            return len(data)
        if self.framing is Framing.LENGTH:
            taken = min(self._left, len(data))
            self._left -= taken
            self.done = self._left == 0
            return taken
        return self._chunked(bytes(data))

    def _chunked(self, data: bytes) -> int:  # noqa: C901, PLR0912 - one flat state machine reads best
        at = 0
        while at < len(data) and not self.done:
            if self._state is _Chunk.DATA:
                taken = min(self._left, len(data) - at)
                at += taken
                self._left -= taken
                if self._left == 0:
                    self._state = _Chunk.DATA_END
                continue
            end = data.find(b"\n", at)
            piece = data[at:] if end < 0 else data[at : end + 1]
            at += len(piece)
            self._line += piece
            if self._state is _Chunk.TRAILERS:
                self._trailers += len(piece)
                if self._trailers > MAX_HEAD:
                    raise FramingError("chunked trailers too long")
            elif len(self._line) > MAX_LINE:
                raise FramingError("chunk size line too long")
            if end < 0:
                break
            line, self._line = bytes(self._line), bytearray()
            if not line.endswith(b"\r\n"):
                raise FramingError("a chunked body line without CRLF")
            if self._state is _Chunk.DATA_END:
                if line != b"\r\n":
                    raise FramingError("chunk data longer than its size")
                self._state = _Chunk.SIZE
            elif self._state is _Chunk.SIZE:
                size = line[:-2].split(b";", 1)[0].strip(b" \t")
                if not size or len(size) > 16 or size.strip(b"0123456789abcdefABCDEF"):
                    raise FramingError("invalid chunk size")
                self._left = int(size, 16)
                self._state = _Chunk.DATA if self._left else _Chunk.TRAILERS
            elif line == b"\r\n":  # the blank line after the trailers: the body is complete
                self.done = True
        return at


__all__ = [
    "IDEMPOTENT",
    "MAX_HEAD",
    "BodyFramer",
    "Framing",
    "FramingError",
    "RequestHead",
    "ResponseHead",
    "parse_request",
    "parse_response",
    "split_head",
]
