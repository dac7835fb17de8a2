"""Error codes carried on the wire and the exceptions of the protocol library.

As in h11, there are two kinds of protocol error. ``LocalProtocolError`` means *this* process
used the API wrongly (sent data on a closed stream, opened a stream before the handshake).
``RemoteProtocolError`` means the peer sent bytes that break the protocol. Library code raises
the local kind when it builds frames; the receive path converts it to the remote kind at the
boundary, because there the bad value came from the peer.
"""

from __future__ import annotations

import enum

__all__ = [
    "ErrorCode",
    "LocalProtocolError",
    "ProtocolError",
    "RemoteProtocolError",
    "StreamClosedError",
]


class ErrorCode(enum.IntEnum):
    """Codes of REJECT, RESET and GO_AWAY frames (16 bits on the wire).

    A received code this version does not know is read as ``INTERNAL_ERROR``: unknown codes
    must not trigger special behaviour (the HTTP/2 rule, RFC 9113 section 7).
    """

    NO_ERROR = 0
    """Graceful: a drain (GO_AWAY) or an orderly close."""
    PROTOCOL_ERROR = 1
    """The peer broke a rule of this protocol."""
    INTERNAL_ERROR = 2
    """The sender hit a bug or an unexpected condition of its own."""
    FLOW_CONTROL_ERROR = 3
    """The peer sent more DATA than its credit, or overflowed a window."""
    STREAM_CLOSED = 4
    """A frame arrived for a stream direction that was already closed (DATA after FIN)."""
    FRAME_SIZE_ERROR = 5
    """A frame was shorter or longer than its type or the negotiated limits allow."""
    REFUSED_STREAM = 6
    """The OPEN was not processed (stream cap reached, or draining); safe to retry elsewhere."""
    CANCEL = 7
    """The application no longer wants the stream."""
    VERSION_MISMATCH = 8
    """The two ends share no protocol version."""
    KEEPALIVE_TIMEOUT = 9
    """Nothing was heard from the peer within the keepalive timeout."""
    HANDSHAKE_TIMEOUT = 10
    """The peer's HELLO did not arrive in time."""
    TARGET_NOT_ALLOWED = 11
    """REJECT: the target is not in the receiver's allow-list."""
    TARGET_UNREACHABLE = 12
    """REJECT: the receiver could not connect to the target."""
    ENHANCE_YOUR_CALM = 13
    """GO_AWAY: the peer opened more streams that ended unproductively (reset or refused before
    any data) than its budget allows: the rapid-reset defence. Named after HTTP/2's code."""

    @classmethod
    def from_wire(cls, value: int) -> ErrorCode:
        """Map a received 16-bit code to a known code (unknown ones become INTERNAL_ERROR)."""
        try:
            return cls(value)
        except ValueError:
            return cls.INTERNAL_ERROR


class ProtocolError(Exception):
    """Base of the protocol's exceptions; ``code`` is what would go on the wire."""

    def __init__(self, message: str, *, code: ErrorCode = ErrorCode.PROTOCOL_ERROR) -> None:
        super().__init__(message)
        self.code = code

    @property
    def message(self) -> str:
        return str(self)


class LocalProtocolError(ProtocolError):
    """The caller misused the API; nothing was sent and the session state did not change."""


class StreamClosedError(LocalProtocolError):
    """The stream is closed (possibly by the peer a moment ago); the call was a no-op.

    A separate class because this is a race the glue code meets in normal operation (a writer
    task sends on a stream the peer just reset) and usually just stops on, unlike real misuse.
    """

    def __init__(self, stream_id: int) -> None:
        super().__init__(f"stream {stream_id} is closed", code=ErrorCode.STREAM_CLOSED)
        self.stream_id = stream_id


class RemoteProtocolError(ProtocolError):
    """The peer sent bytes that break the protocol."""
