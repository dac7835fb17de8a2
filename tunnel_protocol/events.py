"""What a session reports to its application: frozen dataclasses, drained by ``events()``.

Guarantees the glue code can build on:

* every stream the application learns of (the id ``open_stream`` returned, or a
  ``StreamOpened``) ends with exactly one ``StreamClosed``, after which the id is forgotten;
* ``SessionTerminated`` is the last event of a session; before it, every live stream gets a
  ``StreamReset`` and a ``StreamClosed``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tunnel_protocol.errors import ErrorCode

__all__ = [
    "DataReceived",
    "Event",
    "GoAwayReceived",
    "HandshakeComplete",
    "PeerSettings",
    "PongReceived",
    "SendCapacityAvailable",
    "SessionTerminated",
    "StreamAccepted",
    "StreamClosed",
    "StreamEnded",
    "StreamOpened",
    "StreamRejected",
    "StreamReset",
]


@dataclass(frozen=True, slots=True)
class PeerSettings:
    """The limits the peer announced in its HELLO."""

    versions: tuple[int, ...]
    max_frame_payload: int
    """Bytes: largest DATA payload the peer accepts."""
    initial_window: int
    """Bytes: credit each new stream starts with towards the peer."""
    max_concurrent_streams: int
    """Streams we may have open towards the peer at once."""
    extensions: frozenset[int] = frozenset()
    """HELLO extensions the peer offered (``EXTENSION_*`` of ``frames``)."""


@dataclass(frozen=True, slots=True)
class HandshakeComplete:
    """Both HELLOs are in; streams may be opened from now on."""

    version: int
    peer_settings: PeerSettings
    early_data: bool = False
    """Both ends offered early data: DATA and FIN may follow an OPEN before its ACCEPT."""


@dataclass(frozen=True, slots=True)
class StreamOpened:
    """The peer wants a stream to ``target``: answer with ``accept`` or ``reject``."""

    stream_id: int
    target: str


@dataclass(frozen=True, slots=True)
class StreamAccepted:
    """The peer accepted a stream we opened; we may send DATA now (early data went before)."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamRejected:
    """The peer refused a stream we opened (a ``StreamClosed`` follows).

    Nothing we sent on it reached the peer's application: early data is dropped unread, so
    a request sent as early data is safe to send again elsewhere, whatever it was.
    """

    stream_id: int
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class DataReceived:
    """Bytes for the application; call ``acknowledge(stream_id, len(data))`` once consumed."""

    stream_id: int
    data: bytes


@dataclass(frozen=True, slots=True)
class StreamEnded:
    """The peer sent FIN: no more data will arrive; we may still send until we end too."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class StreamReset:
    """The stream died abruptly (a ``StreamClosed`` follows).

    ``by_peer`` is True when the peer sent RESET or tore the session down, False when this
    end reset it because the peer broke a stream rule or the session ended here.
    """

    stream_id: int
    code: ErrorCode
    text: str
    by_peer: bool


@dataclass(frozen=True, slots=True)
class StreamClosed:
    """Both directions are done and the session forgot the stream: free its resources."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class SendCapacityAvailable:
    """The peer granted credit on a stream whose credit was zero: ``send_data`` can progress."""

    stream_id: int


@dataclass(frozen=True, slots=True)
class PongReceived:
    """Answer to one of our PINGs; ``rtt`` is in seconds of the caller's monotonic clock."""

    rtt: float
    opaque: bytes


@dataclass(frozen=True, slots=True)
class GoAwayReceived:
    """The peer drains: no new streams either way; live ones finish normally.

    Our streams above ``last_stream_id``, which the peer never processed, have already been
    ended with ``StreamRejected(REFUSED_STREAM)``, so they are safe to retry elsewhere.
    """

    last_stream_id: int
    code: ErrorCode
    text: str


@dataclass(frozen=True, slots=True)
class SessionTerminated:
    """The session is over: flush ``messages_to_send()``, then close the WebSocket.

    ``code`` is NO_ERROR after a clean drain or ``close()``.
    """

    code: ErrorCode
    text: str


Event = (
    HandshakeComplete
    | StreamOpened
    | StreamAccepted
    | StreamRejected
    | DataReceived
    | StreamEnded
    | StreamReset
    | StreamClosed
    | SendCapacityAvailable
    | PongReceived
    | GoAwayReceived
    | SessionTerminated
)
