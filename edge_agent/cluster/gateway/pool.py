"""Idle keep-alive connections to Service endpoints, for the next gateway stream to reuse.

Rules:

* A connection enters the pool only after a whole exchange on it: the request sent to its
  end, the response read to its end, the backend keeping the connection (``http1``). A
  connection whose response was not read to the end is never reused: it is closed.
* At most ``max_per_endpoint`` idle connections per endpoint and ``max_total`` in all: one
  more closes it instead (the oldest of the pool when the total is full), so an agent holds a
  bounded number of file descriptors however bursty the traffic.
* ``take`` hands out the most recently used idle connection (LIFO: the warmest, and the
  older ones age out), skipping and closing any that is stale: idle past ``idle_timeout``,
  closed by the backend (EOF or bytes nobody asked for), or with a closing transport.
* ``retain(endpoints)`` closes the connections of endpoints that are gone (left their
  EndpointSlices, not ready any more); ``drop(endpoint)`` closes one endpoint's (outlier
  ejection); ``sweep(now)`` closes those idle too long (the agent calls it every second);
  ``close()`` closes everything (shutdown).
* No I/O of its own beyond closing transports, and time is passed in.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Iterable
from dataclasses import dataclass

from edge_agent.cluster.gateway.endpoints import Endpoint


@dataclass(slots=True, eq=False)
class Connection:
    """One TCP connection to an endpoint."""

    endpoint: Endpoint
    reader: asyncio.StreamReader
    writer: asyncio.StreamWriter
    idle_since: float = 0.0
    """Monotonic time it went idle in the pool."""
    reused: bool = False
    """Taken from the pool (it may have been closed by the backend meanwhile)."""

    def usable(self) -> bool:
        """Open, and nothing came from the backend while idle (not even an EOF)."""
        reader = self.reader
        return not (
            self.writer.transport.is_closing() or reader.at_eof() or reader._buffer  # type: ignore[attr-defined]  # noqa: SLF001 - no public "bytes buffered"
        )

    def close(self) -> None:
        """Close at once (no goodbye: a keep-alive backend expects a connection to vanish)."""
        self.writer.transport.abort()


class Pool:
    """The idle connections, per endpoint; see the module's rules."""

    def __init__(self, *, max_per_endpoint: int, max_total: int, idle_timeout: float) -> None:
        if max_per_endpoint < 0 or max_total < 0 or idle_timeout <= 0:
            raise ValueError("max_per_endpoint >= 0, max_total >= 0, idle_timeout > 0")
        self._max_per_endpoint = max_per_endpoint
        self._max_total = max_total
        self._idle_timeout = idle_timeout
        self._idle: dict[Endpoint, deque[Connection]] = {}
        self._total = 0
        self.reuses = 0
        """Connections handed out again so far."""

    @property
    def idle(self) -> int:
        return self._total

    def take(self, endpoint: Endpoint, now: float) -> Connection | None:
        """The most recently pooled usable connection to ``endpoint``, or None."""
        idle = self._idle.get(endpoint)
        while idle:
            connection = idle.pop()
            self._total -= 1
            if now - connection.idle_since < self._idle_timeout and connection.usable():
                if not idle:
                    del self._idle[endpoint]
                connection.reused = True
                self.reuses += 1
                return connection
            connection.close()
        self._idle.pop(endpoint, None)
        return None

    def put(self, connection: Connection, now: float) -> None:
        """Keep ``connection`` for reuse (its exchange is complete), or close it if full."""
        if not connection.usable() or self._max_per_endpoint == 0 or self._max_total == 0:
            connection.close()
            return
        idle = self._idle.setdefault(connection.endpoint, deque())
        if len(idle) >= self._max_per_endpoint:
            idle.popleft().close()
            self._total -= 1
        elif self._total >= self._max_total:
            self._close_oldest()
        connection.idle_since = now
        idle.append(connection)
        self._total += 1

    def _close_oldest(self) -> None:
        endpoint, idle = min(self._idle.items(), key=lambda item: item[1][0].idle_since)
        idle.popleft().close()
        self._total -= 1
        if not idle:
            del self._idle[endpoint]

    def drop(self, endpoint: Endpoint) -> None:
        """Close every idle connection to ``endpoint``."""
        for connection in self._idle.pop(endpoint, ()):
            connection.close()
            self._total -= 1

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        """Close the idle connections of every endpoint not in ``endpoints``."""
        keep = set(endpoints)
        for endpoint in [e for e in self._idle if e not in keep]:
            self.drop(endpoint)

    def sweep(self, now: float) -> None:
        """Close the connections idle past the timeout or closed by their backend."""
        for endpoint in list(self._idle):
            idle = self._idle[endpoint]
            fresh = deque(c for c in idle if now - c.idle_since < self._idle_timeout and c.usable())
            for connection in idle:
                if connection not in fresh:
                    connection.close()
            self._total -= len(idle) - len(fresh)
            if fresh:
                self._idle[endpoint] = fresh
            else:
                del self._idle[endpoint]

    def close(self) -> None:
        for endpoint in list(self._idle):
            self.drop(endpoint)


__all__ = ["Connection", "Pool"]
