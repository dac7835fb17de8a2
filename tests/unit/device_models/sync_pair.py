"""`SyncPair`: an edge and a cloud `SyncSession` talking to each other in memory.

Like tests/unit/tunnel_protocol/helpers.py's `SessionPair`: what one side sends waits in its
in-flight queue until a test delivers it, whole or cut into chunks, so every interleaving of
the two directions can be played as a synchronous script.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from device_models import Role
from device_models.sync_session import Event, Hello, SyncSession, Welcome

MAX_BYTES = 4096
MAX_DEPTH = 8


def session(role: Role, *, window: int = 4, max_batch_records: int = 16) -> SyncSession:
    return SyncSession(
        role,
        max_message_bytes=MAX_BYTES,
        max_depth=MAX_DEPTH,
        window=window,
        max_batch_records=max_batch_records,
    )


class SyncPair:
    """The edge (which speaks first) and the cloud, with the bytes each sent in flight."""

    def __init__(
        self, *, edge_window: int = 4, cloud_window: int = 4, handshake: bool = True
    ) -> None:
        self.edge = session(Role.EDGE, window=edge_window)
        self.cloud = session(Role.CLOUD, window=cloud_window)
        self._in_flight: dict[Role, deque[bytes]] = {Role.EDGE: deque(), Role.CLOUD: deque()}
        if handshake:
            self.send(self.edge, Hello(origin="node1.boot1", window=edge_window))
            assert self.deliver(self.edge) == [Hello(origin="node1.boot1", window=edge_window)]
            self.send(self.cloud, Welcome(origin="cloud.1"))
            assert self.deliver(self.cloud) == [Welcome(origin="cloud.1")]

    def peer_of(self, sender: SyncSession) -> SyncSession:
        return self.cloud if sender is self.edge else self.edge

    def send(self, sender: SyncSession, event: Event) -> None:
        self._in_flight[sender.role].append(sender.send(event))

    def send_batches(self, records: list[dict[str, Any]]) -> list[int]:
        """The edge sends `records`; the ids of the batches they went in."""
        frames = self.edge.send_batches(records)
        self._in_flight[Role.EDGE].extend(frame for _, frame in frames)
        return [batch_id for batch_id, _ in frames]

    def in_flight(self, sender: SyncSession) -> deque[bytes]:
        """Bytes `sender` wrote that its peer has not read yet, one entry per message."""
        return self._in_flight[sender.role]

    def deliver(self, sender: SyncSession, *, chunk: int | None = None) -> list[Event]:
        """Hand everything in flight from `sender` to its peer, in `chunk`-byte reads."""
        data = b"".join(self._in_flight[sender.role])
        self._in_flight[sender.role].clear()
        receiver = self.peer_of(sender)
        step = chunk or max(len(data), 1)
        events: list[Event] = []
        for start in range(0, len(data), step):
            events += receiver.receive_data(data[start : start + step])
        return events

    def to_cloud(self, *, chunk: int | None = None) -> list[Event]:
        return self.deliver(self.edge, chunk=chunk)

    def to_edge(self, *, chunk: int | None = None) -> list[Event]:
        return self.deliver(self.cloud, chunk=chunk)
