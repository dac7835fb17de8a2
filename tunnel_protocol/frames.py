"""Tunnel frames: the binary layout of every frame type, encoding and strict decoding.

A WebSocket binary message carries one or more whole frames, back to back (senders coalesce
small frames to save a TLS record and a system call each; ``split_frames`` cuts a message
apart). Every frame starts with a fixed 12-byte header, big-endian::

    0        1        2                 4                                 8               12
    +--------+--------+--------+--------+--------+--------+--------+--------+------ ... ----+
    |version |  type  |      flags      |            stream id              | payload length|
    +--------+--------+--------+--------+--------+--------+--------+--------+------ ... ----+

followed by ``payload length`` bytes of payload. A frame never spans two messages: the last
frame must end exactly where the message ends; anything else is an error, not a hint to
buffer. ``docs/tunnel-protocol.md`` is the full specification; this module is its executable
form and the two must agree.

Frame objects validate their fields when built, raising ``LocalProtocolError``; the decoder
turns that into ``RemoteProtocolError`` because there the values came from the peer.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

from tunnel_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError

if TYPE_CHECKING:
    from collections.abc import Callable

__all__ = [
    "EXTENSION_EARLY_DATA",
    "FLAG_FINAL",
    "HEADER_SIZE",
    "MAX_FRAME_PAYLOAD_HARD_CAP",
    "MAX_STREAM_ID",
    "MAX_TARGET_LENGTH",
    "MAX_TEXT_LENGTH",
    "MAX_VERSIONS",
    "MAX_WINDOW",
    "MIN_FRAME_PAYLOAD",
    "PING_PAYLOAD_SIZE",
    "UNNEGOTIATED_VERSION",
    "Accept",
    "Data",
    "Fin",
    "Frame",
    "FrameType",
    "GoAway",
    "Hello",
    "Open",
    "Ping",
    "Pong",
    "Reject",
    "Reset",
    "WindowUpdate",
    "decode_frame",
    "encode_data",
    "encode_frame",
    "is_valid_target",
    "truncate_text",
]

_HEADER = struct.Struct("!BBHII")
_LENGTH = struct.Struct("!I")
HEADER_SIZE = _HEADER.size

MAX_FRAME_PAYLOAD_HARD_CAP = 1 << 20
"""No frame of any type may carry more than 1 MiB, whatever the peer advertises."""
MIN_FRAME_PAYLOAD = 1024
"""Smallest max-frame-payload a peer may advertise; smaller only multiplies per-frame cost."""
MAX_TARGET_LENGTH = 255
MAX_TEXT_LENGTH = 1024
"""Bytes of UTF-8 in the human text of REJECT, RESET and GO_AWAY."""
MAX_VERSIONS = 32
MAX_HELLO_PAYLOAD = 1024
"""HELLO may carry extension bytes after its fields (ignored by version 1), up to this size."""
MAX_WINDOW = (1 << 31) - 1
MAX_STREAM_ID = (1 << 32) - 1
PING_PAYLOAD_SIZE = 8
UNNEGOTIATED_VERSION = 0
"""Header version byte of HELLO, and of GO_AWAY sent before a version was agreed."""

FLAG_FINAL = 0x0001
"""GO_AWAY only: the sender has already torn the session down (not a drain)."""

_U16 = struct.Struct("!H")
_U32 = struct.Struct("!I")
_U32_U16 = struct.Struct("!IH")
_HELLO_SETTINGS = struct.Struct("!III")
_HELLO_EXTENSION = struct.Struct("!HH")

EXTENSION_EARLY_DATA = 0x0001
"""HELLO extension: the sender takes DATA and FIN on a stream it has not accepted yet (an
opener's *early data*, sent with its OPEN), and may send them itself when the peer offers
it too. No value bytes. Rules in ``docs/tunnel-protocol.md`` section 3 and ``stream_state``."""


class FrameType(enum.IntEnum):
    HELLO = 0x01
    OPEN = 0x02
    ACCEPT = 0x03
    REJECT = 0x04
    DATA = 0x05
    WINDOW_UPDATE = 0x06
    FIN = 0x07
    RESET = 0x08
    PING = 0x09
    PONG = 0x0A
    GO_AWAY = 0x0B


def truncate_text(text: str) -> str:
    """Cut ``text`` to at most MAX_TEXT_LENGTH bytes of UTF-8 without splitting a character."""
    raw = text.encode()
    if len(raw) <= MAX_TEXT_LENGTH:
        return text
    return raw[:MAX_TEXT_LENGTH].decode(errors="ignore")


def _check(condition: bool, message: str, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:  # noqa: FBT001 -- an assertion helper reads best with the condition first
    if not condition:
        raise LocalProtocolError(message, code=code)


# The checks run for every frame: their messages are formatted only when they fail.


def _check_stream_id(stream_id: int) -> None:
    if not 0 < stream_id <= MAX_STREAM_ID:
        raise LocalProtocolError(f"stream id {stream_id} out of range 1..2**32-1")


def _check_text(text: str) -> None:
    _check(
        len(text.encode()) <= MAX_TEXT_LENGTH,
        f"text longer than {MAX_TEXT_LENGTH} bytes",
        ErrorCode.FRAME_SIZE_ERROR,
    )


def is_valid_target(target: str) -> bool:
    """Whether ``target`` can name a stream: 1..255 printable ASCII characters, no spaces."""
    return 0 < len(target) <= MAX_TARGET_LENGTH and all("!" <= ch <= "~" for ch in target)


@dataclass(frozen=True, slots=True)
class Hello:
    """First frame each side sends: the versions it speaks and its receive limits."""

    versions: tuple[int, ...]
    max_frame_payload: int
    initial_window: int
    max_concurrent_streams: int
    extensions: frozenset[int] = frozenset()
    """Extension ids the sender offers (``EXTENSION_*``); a peer uses one only when both offer
    it. Each is sent as ``u16 id, u16 length`` and ``length`` value bytes (none so far), after
    the fixed fields, where a peer that predates extensions ignores them."""

    frame_type: ClassVar[FrameType] = FrameType.HELLO
    stream_id: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _check(0 < len(self.versions) <= MAX_VERSIONS, f"HELLO needs 1..{MAX_VERSIONS} versions")
        _check(all(0 < v <= 0xFFFF for v in self.versions), "HELLO versions must be 1..65535")
        _check(len(set(self.versions)) == len(self.versions), "HELLO versions must be distinct")
        _check(
            MIN_FRAME_PAYLOAD <= self.max_frame_payload <= MAX_FRAME_PAYLOAD_HARD_CAP,
            f"max frame payload must be {MIN_FRAME_PAYLOAD}..{MAX_FRAME_PAYLOAD_HARD_CAP}",
        )
        _check(0 < self.initial_window <= MAX_WINDOW, "initial window must be 1..2**31-1")
        _check(
            0 <= self.max_concurrent_streams <= MAX_WINDOW,
            "max concurrent streams must be 0..2**31-1",
        )
        _check(all(0 < e <= 0xFFFF for e in self.extensions), "HELLO extensions must be 1..65535")
        size = 1 + 2 * len(self.versions) + _HELLO_SETTINGS.size
        _check(
            size + _HELLO_EXTENSION.size * len(self.extensions) <= MAX_HELLO_PAYLOAD,
            f"HELLO larger than {MAX_HELLO_PAYLOAD} bytes",
            ErrorCode.FRAME_SIZE_ERROR,
        )

    def payload(self) -> bytes:
        versions = struct.pack(f"!B{len(self.versions)}H", len(self.versions), *self.versions)
        limits = (self.max_frame_payload, self.initial_window, self.max_concurrent_streams)
        extensions = b"".join(_HELLO_EXTENSION.pack(e, 0) for e in sorted(self.extensions))
        return versions + _HELLO_SETTINGS.pack(*limits) + extensions


@dataclass(frozen=True, slots=True)
class Open:
    """Ask the peer to open a stream to ``target``.

    The target is a name the receiver checks against its own allow-list and resolves itself.
    """

    stream_id: int
    target: str

    frame_type: ClassVar[FrameType] = FrameType.OPEN

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check(
            is_valid_target(self.target),
            f"target must be 1..{MAX_TARGET_LENGTH} printable ASCII characters without spaces",
        )

    def payload(self) -> bytes:
        return self.target.encode("ascii")


@dataclass(frozen=True, slots=True)
class Accept:
    stream_id: int

    frame_type: ClassVar[FrameType] = FrameType.ACCEPT

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Reject:
    stream_id: int
    code: ErrorCode
    text: str

    frame_type: ClassVar[FrameType] = FrameType.REJECT

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check_text(self.text)

    def payload(self) -> bytes:
        return _U16.pack(self.code) + self.text.encode()


@dataclass(frozen=True, slots=True)
class Data:
    stream_id: int
    data: bytes

    frame_type: ClassVar[FrameType] = FrameType.DATA

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        # Empty DATA frames carry nothing but cost work: a known flood vector (CVE-2019-9518).
        _check(len(self.data) > 0, "DATA must not be empty", ErrorCode.FRAME_SIZE_ERROR)
        _check(
            len(self.data) <= MAX_FRAME_PAYLOAD_HARD_CAP,
            "DATA larger than the hard cap",
            ErrorCode.FRAME_SIZE_ERROR,
        )

    def payload(self) -> bytes:
        return self.data


@dataclass(frozen=True, slots=True)
class WindowUpdate:
    stream_id: int
    increment: int

    frame_type: ClassVar[FrameType] = FrameType.WINDOW_UPDATE

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check(0 < self.increment <= MAX_WINDOW, "WINDOW_UPDATE increment must be 1..2**31-1")

    def payload(self) -> bytes:
        return _U32.pack(self.increment)


@dataclass(frozen=True, slots=True)
class Fin:
    stream_id: int

    frame_type: ClassVar[FrameType] = FrameType.FIN

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)

    def payload(self) -> bytes:
        return b""


@dataclass(frozen=True, slots=True)
class Reset:
    stream_id: int
    code: ErrorCode
    text: str

    frame_type: ClassVar[FrameType] = FrameType.RESET

    def __post_init__(self) -> None:
        _check_stream_id(self.stream_id)
        _check_text(self.text)

    def payload(self) -> bytes:
        return _U16.pack(self.code) + self.text.encode()


@dataclass(frozen=True, slots=True)
class Ping:
    opaque: bytes

    frame_type: ClassVar[FrameType] = FrameType.PING
    stream_id: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _check(
            len(self.opaque) == PING_PAYLOAD_SIZE,
            "PING payload must be 8 bytes",
            ErrorCode.FRAME_SIZE_ERROR,
        )

    def payload(self) -> bytes:
        return self.opaque


@dataclass(frozen=True, slots=True)
class Pong:
    opaque: bytes

    frame_type: ClassVar[FrameType] = FrameType.PONG
    stream_id: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _check(
            len(self.opaque) == PING_PAYLOAD_SIZE,
            "PONG payload must be 8 bytes",
            ErrorCode.FRAME_SIZE_ERROR,
        )

    def payload(self) -> bytes:
        return self.opaque


@dataclass(frozen=True, slots=True)
class GoAway:
    """No new streams; ``final`` means the sender already tore the session down."""

    last_stream_id: int
    code: ErrorCode
    text: str
    final: bool = False

    frame_type: ClassVar[FrameType] = FrameType.GO_AWAY
    stream_id: ClassVar[int] = 0

    def __post_init__(self) -> None:
        _check(0 <= self.last_stream_id <= MAX_STREAM_ID, "last stream id out of range")
        _check_text(self.text)

    def payload(self) -> bytes:
        return _U32_U16.pack(self.last_stream_id, self.code) + self.text.encode()


Frame = Hello | Open | Accept | Reject | Data | WindowUpdate | Fin | Reset | Ping | Pong | GoAway


def encode_frame(frame: Frame, *, version: int) -> bytes:
    """Return the WebSocket message for ``frame``, stamped with header ``version``."""
    payload = frame.payload()
    flags = FLAG_FINAL if isinstance(frame, GoAway) and frame.final else 0
    return _HEADER.pack(version, frame.frame_type, flags, frame.stream_id, len(payload)) + payload


def encode_data(stream_id: int, payload: bytes | memoryview, *, version: int) -> bytes:
    """The message of one DATA frame, built with one copy of ``payload`` (the hot path).

    Same bytes as ``encode_frame(Data(stream_id, bytes(payload)), version=version)`` without
    the intermediate ``bytes`` and the frame object; the caller (the session) has already
    checked the stream id, and the size against the credit and the peer's frame limit.
    """
    size = len(payload)
    if not 0 < size <= MAX_FRAME_PAYLOAD_HARD_CAP:
        raise LocalProtocolError(
            "DATA must carry 1 byte .. the hard cap", code=ErrorCode.FRAME_SIZE_ERROR
        )
    return b"".join((_HEADER.pack(version, FrameType.DATA, 0, stream_id, size), payload))


# ---------------------------------------------------------------------------- decoding


def _parse_hello(_stream_id: int, payload: bytes) -> Hello:
    _check(0 < len(payload) <= MAX_HELLO_PAYLOAD, "HELLO size", ErrorCode.FRAME_SIZE_ERROR)
    count = payload[0]
    end = 1 + 2 * count + _HELLO_SETTINGS.size
    _check(count > 0 and len(payload) >= end, "HELLO truncated", ErrorCode.FRAME_SIZE_ERROR)
    versions = struct.unpack_from(f"!{count}H", payload, 1)
    limits = _HELLO_SETTINGS.unpack_from(payload, 1 + 2 * count)
    # Extensions follow (a peer that predates them sent none, and ignored ours): each one an
    # id, a length and that many value bytes, which no extension defined so far uses. Ids we
    # do not know are kept but unused. Version 1 promised to ignore whatever follows the
    # fixed fields, so bytes that do not parse as entries end the list quietly, not the session.
    extensions: set[int] = set()
    offset = end
    while len(payload) - offset >= _HELLO_EXTENSION.size:
        extension, length = _HELLO_EXTENSION.unpack_from(payload, offset)
        offset += _HELLO_EXTENSION.size + length
        if offset > len(payload):
            break
        if extension:
            extensions.add(extension)
    max_frame_payload, initial_window, max_concurrent_streams = limits
    return Hello(
        tuple(versions),
        max_frame_payload,
        initial_window,
        max_concurrent_streams,
        frozenset(extensions),
    )


def _parse_open(stream_id: int, payload: bytes) -> Open:
    try:
        target = payload.decode("ascii")
    except UnicodeDecodeError:
        raise LocalProtocolError("OPEN target is not ASCII") from None
    return Open(stream_id, target)


def _parse_empty(payload: bytes, name: str) -> None:
    if payload:
        raise LocalProtocolError(f"{name} carries no payload", code=ErrorCode.FRAME_SIZE_ERROR)


def _parse_accept(stream_id: int, payload: bytes) -> Accept:
    _parse_empty(payload, "ACCEPT")
    return Accept(stream_id)


def _parse_fin(stream_id: int, payload: bytes) -> Fin:
    _parse_empty(payload, "FIN")
    return Fin(stream_id)


def _decode_text(raw: bytes) -> str:
    try:
        return raw.decode()
    except UnicodeDecodeError:
        raise LocalProtocolError("text is not valid UTF-8") from None


def _parse_code_text(payload: bytes, name: str) -> tuple[ErrorCode, str]:
    if len(payload) < _U16.size:
        raise LocalProtocolError(f"{name} truncated", code=ErrorCode.FRAME_SIZE_ERROR)
    (code,) = _U16.unpack_from(payload)
    return ErrorCode.from_wire(code), _decode_text(payload[_U16.size :])


def _parse_reject(stream_id: int, payload: bytes) -> Reject:
    return Reject(stream_id, *_parse_code_text(payload, "REJECT"))


def _parse_reset(stream_id: int, payload: bytes) -> Reset:
    return Reset(stream_id, *_parse_code_text(payload, "RESET"))


def _parse_data(stream_id: int, payload: bytes) -> Data:
    return Data(stream_id, payload)


def _parse_window_update(stream_id: int, payload: bytes) -> WindowUpdate:
    _check(len(payload) == _U32.size, "WINDOW_UPDATE size", ErrorCode.FRAME_SIZE_ERROR)
    (increment,) = _U32.unpack(payload)
    return WindowUpdate(stream_id, increment)


def _parse_ping(_stream_id: int, payload: bytes) -> Ping:
    return Ping(payload)


def _parse_pong(_stream_id: int, payload: bytes) -> Pong:
    return Pong(payload)


def _parse_go_away(_stream_id: int, payload: bytes, *, final: bool) -> GoAway:
    _check(len(payload) >= _U32_U16.size, "GO_AWAY truncated", ErrorCode.FRAME_SIZE_ERROR)
    last_stream_id, code = _U32_U16.unpack_from(payload)
    text = _decode_text(payload[_U32_U16.size :])
    return GoAway(last_stream_id, ErrorCode.from_wire(code), text, final=final)


_TYPES: dict[int, FrameType] = {int(t): t for t in FrameType}
"""Wire byte -> frame type: a dict lookup is several times cheaper than ``FrameType(byte)``."""

_CONNECTION_TYPES = frozenset({FrameType.HELLO, FrameType.PING, FrameType.PONG, FrameType.GO_AWAY})

_PARSERS: dict[FrameType, Callable[[int, bytes], Frame]] = {
    FrameType.HELLO: _parse_hello,
    FrameType.OPEN: _parse_open,
    FrameType.ACCEPT: _parse_accept,
    FrameType.REJECT: _parse_reject,
    FrameType.DATA: _parse_data,
    FrameType.WINDOW_UPDATE: _parse_window_update,
    FrameType.FIN: _parse_fin,
    FrameType.RESET: _parse_reset,
    FrameType.PING: _parse_ping,
    FrameType.PONG: _parse_pong,
}


def _check_header(frame_type: FrameType, flags: int, stream_id: int) -> None:
    allowed_flags = FLAG_FINAL if frame_type is FrameType.GO_AWAY else 0
    if flags & ~allowed_flags:
        raise LocalProtocolError(f"unknown flags {flags:#06x} on {frame_type.name}")
    if frame_type in _CONNECTION_TYPES:
        if stream_id != 0:
            raise LocalProtocolError(f"{frame_type.name} must use stream id 0")
    elif stream_id == 0:
        raise LocalProtocolError(f"{frame_type.name} needs a stream id")


def _decode(message: bytes, max_data_payload: int) -> tuple[int, Frame]:
    size = len(message) - HEADER_SIZE
    if size < 0:
        raise LocalProtocolError("message shorter than a header", code=ErrorCode.FRAME_SIZE_ERROR)
    version, raw_type, flags, stream_id, length = _HEADER.unpack_from(message)
    if length != size:
        raise LocalProtocolError(
            f"length field {length} does not match the message ({size})",
            code=ErrorCode.FRAME_SIZE_ERROR,
        )
    frame_type = _TYPES.get(raw_type)
    if frame_type is None:
        raise LocalProtocolError(f"unknown frame type {raw_type:#04x}")
    limit = max_data_payload if frame_type is FrameType.DATA else MAX_FRAME_PAYLOAD_HARD_CAP
    if length > limit:
        raise LocalProtocolError(
            f"{frame_type.name} payload too large", code=ErrorCode.FRAME_SIZE_ERROR
        )
    _check_header(frame_type, flags, stream_id)
    payload = message[HEADER_SIZE:]
    if frame_type is FrameType.GO_AWAY:
        return version, _parse_go_away(0, payload, final=bool(flags & FLAG_FINAL))
    return version, _PARSERS[frame_type](stream_id, payload)


MAX_FRAMES_PER_MESSAGE = 4096
"""Frames one message may carry; a message of thousands of empty-ish frames is an attack."""


def split_frames(message: bytes) -> list[bytes]:
    """Cut one WebSocket message into its frames (each still to be ``decode_frame``d).

    Raises ``RemoteProtocolError`` (FRAME_SIZE_ERROR) if a frame would run past the end of the
    message or the message holds more than ``MAX_FRAMES_PER_MESSAGE`` frames.
    """
    size = len(message)
    if size >= HEADER_SIZE and _LENGTH.unpack_from(message, 8)[0] == size - HEADER_SIZE:
        return [message]  # the common case: one frame, no copy
    frames: list[bytes] = []
    offset = 0
    while offset < size:
        if size - offset < HEADER_SIZE:
            raise RemoteProtocolError(
                "message ends inside a frame header", code=ErrorCode.FRAME_SIZE_ERROR
            )
        (length,) = _LENGTH.unpack_from(message, offset + 8)
        end = offset + HEADER_SIZE + length
        if end > size:
            raise RemoteProtocolError(
                f"frame length {length} runs past the end of the message",
                code=ErrorCode.FRAME_SIZE_ERROR,
            )
        if len(frames) >= MAX_FRAMES_PER_MESSAGE:
            raise RemoteProtocolError(
                f"more than {MAX_FRAMES_PER_MESSAGE} frames in one message",
                code=ErrorCode.FRAME_SIZE_ERROR,
            )
        frames.append(message[offset:end])
        offset = end
    if not frames:
        raise RemoteProtocolError("empty message", code=ErrorCode.FRAME_SIZE_ERROR)
    return frames


def decode_frame(
    message: bytes, *, max_data_payload: int = MAX_FRAME_PAYLOAD_HARD_CAP
) -> tuple[int, Frame]:
    """Decode one frame (a piece from ``split_frames``) into ``(header version, frame)``.

    Raises ``RemoteProtocolError`` (and nothing else) for any malformed input; its ``code`` is
    FRAME_SIZE_ERROR for a size problem and PROTOCOL_ERROR otherwise. ``max_data_payload`` is
    the largest DATA payload this receiver advertised.
    """
    try:
        return _decode(message, max_data_payload)
    except LocalProtocolError as exc:
        raise RemoteProtocolError(str(exc), code=exc.code) from None
