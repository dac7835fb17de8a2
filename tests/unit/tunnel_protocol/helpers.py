"""A pair of sessions wired back to back in memory (h11 ``ConnectionPair`` style).

Messages queue per direction until a test delivers them, so a test chooses exactly which
frames are in flight when: that is how races (a RESET crossing DATA, a GO_AWAY crossing an
OPEN) are written down as plain synchronous steps.
"""

from __future__ import annotations

from collections import deque

from tunnel_protocol import (
    Event,
    Frame,
    HandshakeComplete,
    Role,
    StreamAccepted,
    StreamOpened,
    TunnelSession,
    TunnelSettings,
    encode_frame,
)
from tunnel_protocol.session import MAX_OUTSTANDING_PINGS


class SessionPair:
    """A CLIENT (the agent) and a SERVER (the cloud) session talking to each other."""

    def __init__(
        self,
        *,
        client_settings: TunnelSettings | None = None,
        server_settings: TunnelSettings | None = None,
        now: float = 0.0,
        handshake: bool = True,
    ) -> None:
        self.now = now
        self.client = TunnelSession(Role.CLIENT, now=now, settings=client_settings)
        self.server = TunnelSession(Role.SERVER, now=now, settings=server_settings)
        self._in_flight: dict[Role, deque[bytes]] = {Role.CLIENT: deque(), Role.SERVER: deque()}
        if handshake:
            client_events, server_events = self.exchange()
            assert [type(e) for e in client_events] == [HandshakeComplete]
            assert [type(e) for e in server_events] == [HandshakeComplete]

    def peer_of(self, session: TunnelSession) -> TunnelSession:
        return self.server if session is self.client else self.client

    def in_flight(self, sender: TunnelSession) -> deque[bytes]:
        """Messages ``sender`` sent that its peer has not received yet."""
        self._in_flight[sender.role].extend(sender.messages_to_send())
        return self._in_flight[sender.role]

    def deliver(self, sender: TunnelSession, limit: int | None = None) -> list[Event]:
        """Hand up to ``limit`` in-flight messages of ``sender`` to its peer.

        Returns the peer's events, including any it queued itself before.
        """
        queue = self.in_flight(sender)
        receiver = self.peer_of(sender)
        count = len(queue) if limit is None else min(limit, len(queue))
        for _ in range(count):
            receiver.receive_message(queue.popleft(), now=self.now)
        return receiver.events()

    def to_server(self, limit: int | None = None) -> list[Event]:
        return self.deliver(self.client, limit)

    def to_client(self, limit: int | None = None) -> list[Event]:
        return self.deliver(self.server, limit)

    def exchange(self) -> tuple[list[Event], list[Event]]:
        """Deliver both ways until nothing is in flight; return (client events, server events)."""
        client_events: list[Event] = []
        server_events: list[Event] = []
        while self.in_flight(self.client) or self.in_flight(self.server):
            server_events += self.to_server()
            client_events += self.to_client()
        client_events += self.client.events()
        server_events += self.server.events()
        return client_events, server_events

    def inject(self, receiver: TunnelSession, frame: Frame, *, version: int = 1) -> list[Event]:
        """Make ``receiver`` get a frame its peer's session would never send; return its events.

        This is how tests play a buggy or hostile peer.
        """
        receiver.receive_message(encode_frame(frame, version=version), now=self.now)
        return receiver.events()

    def open_accepted(self, target: str = "kubelet", *, opener: TunnelSession | None = None) -> int:
        """Open a stream from ``opener`` (default: the client), accept it, return its id."""
        opener = opener or self.client
        acceptor = self.peer_of(opener)
        stream_id = opener.open_stream(target)
        assert self.deliver(opener) == [StreamOpened(stream_id, target)]
        acceptor.accept(stream_id)
        assert self.deliver(acceptor) == [StreamAccepted(stream_id)]
        return stream_id


def assert_no_leaks(session: TunnelSession) -> None:
    """Nothing of any stream is left: the check glue code and soak tests rely on."""
    assert session.open_streams_count == 0
    assert session.total_buffered_bytes == 0
    assert not session._streams
    assert session._local_count == 0
    assert len(session._pings) <= MAX_OUTSTANDING_PINGS
