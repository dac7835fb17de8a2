"""Per-stream credit windows, the HTTP/2 and yamux way.

Each direction of each stream has its own credit, so one slow reader stalls only its own
stream (the head-of-line blocking users hit with Konnectivity, ANP #180 and #881). The receiver
grants credit; the sender may not send more than it holds. The receiver never buffers more than
it granted, so memory per stream is bounded by the window whatever the peer does.
"""

from __future__ import annotations

from tunnel_protocol.errors import ErrorCode, LocalProtocolError, RemoteProtocolError
from tunnel_protocol.frames import MAX_WINDOW

__all__ = ["ReceiveWindow", "SendCredit"]


class SendCredit:
    """Bytes we may still send on a stream before the peer grants more."""

    __slots__ = ("available",)

    def __init__(self, initial: int) -> None:
        self.available = initial

    def consume(self, amount: int) -> None:
        if amount > self.available:
            raise LocalProtocolError("sending more than the peer's credit")
        self.available -= amount

    def grant(self, increment: int) -> None:
        """Add the peer's WINDOW_UPDATE; a window beyond 2**31-1 is the peer's bug."""
        if self.available + increment > MAX_WINDOW:
            raise RemoteProtocolError(
                "WINDOW_UPDATE overflows the window", code=ErrorCode.FLOW_CONTROL_ERROR
            )
        self.available += increment


class ReceiveWindow:
    """Credit we granted the peer on a stream.

    It is split into what the peer may still send, what the application holds unread, and what
    it has read but we have not yet handed back:

    ``remaining + unacknowledged + pending_update == size`` at all times.
    """

    __slots__ = ("pending_update", "remaining", "size", "unacknowledged")

    def __init__(self, size: int) -> None:
        self.size = size
        self.remaining = size
        self.unacknowledged = 0
        self.pending_update = 0

    def receive(self, amount: int) -> None:
        if amount > self.remaining:
            raise RemoteProtocolError(
                f"peer sent {amount} bytes with only {self.remaining} bytes of credit",
                code=ErrorCode.FLOW_CONTROL_ERROR,
            )
        self.remaining -= amount
        self.unacknowledged += amount

    def acknowledge(self, amount: int, *, defer: bool = False) -> int:
        """Record that the application consumed ``amount`` bytes.

        Returns a WINDOW_UPDATE increment to send now, or 0 to keep batching (always 0 with
        ``defer``: early data read before the stream is accepted, when no update may go yet;
        a later call, ``acknowledge(0)`` say, returns what is due then).

        Credit goes back once half the window is consumed (one update per half window, not per
        read), or as soon as the returned credit would at least match what the peer still
        holds: that case is a blocked or nearly blocked sender, and waiting longer could
        deadlock an application that holds the rest of the window until more bytes arrive.
        """
        if not 0 <= amount <= self.unacknowledged:
            raise LocalProtocolError(
                f"acknowledging {amount} bytes but only {self.unacknowledged} are unacknowledged"
            )
        self.unacknowledged -= amount
        self.pending_update += amount
        if self.pending_update == 0 or defer:
            return 0
        if self.pending_update >= self.size // 2 or self.pending_update >= self.remaining:
            increment, self.pending_update = self.pending_update, 0
            self.remaining += increment
            return increment
        return 0
