"""Which agent holds a live tunnel session, keyed by its certificate's subject.

One session per name: a new session with the same verified identity replaces the old one
(the agent reconnected; the old socket may not have noticed yet). The name always comes from
the client certificate, never from anything the agent says.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import prometheus_client

from tunnel_protocol import ErrorCode

if TYPE_CHECKING:
    from collections.abc import Iterable

    from tunnel_aio import TunnelConnection
    from tunnel_server.identity.peer import PeerIdentity
    from tunnel_server.store import Store

log = logging.getLogger("tunnel_server.sessions")


@dataclass(kw_only=True, eq=False)
class AgentSession:
    identity: PeerIdentity
    connection: TunnelConnection
    remote: str
    connected_at: float = field(default_factory=time.time)
    agent_version: str | None = None
    tasks: asyncio.TaskGroup | None = None
    """The session's task group while it runs (the endpoint starts per-session work in it)."""
    announcer: asyncio.Task[None] | None = None
    """The CA-rotation announcer while one runs: only during a rotation, not per idle session."""

    @property
    def name(self) -> str:
        return self.identity.name


class SessionMetrics:
    """Prometheus series of the tunnel endpoint."""

    def __init__(
        self, registry: prometheus_client.CollectorRegistry, sessions: SessionRegistry
    ) -> None:
        self.sessions = prometheus_client.Gauge(
            "tunnel_server_sessions", "Live agent tunnel sessions", registry=registry
        )
        self.sessions.set_function(lambda: len(sessions))
        self.streams = prometheus_client.Gauge(
            "tunnel_server_streams", "Open streams over all sessions", registry=registry
        )
        self.streams.set_function(sessions.open_streams)
        self.tasks = prometheus_client.Gauge(
            "tunnel_server_asyncio_tasks",
            "Live asyncio tasks in this process: a leak shows as growth at a steady load",
            registry=registry,
        )
        self.tasks.set_function(lambda: len(asyncio.all_tasks()))
        self.connects = prometheus_client.Counter(
            "tunnel_server_session_connects",
            "Sessions opened (first connects and reconnects)",
            registry=registry,
        )
        self.reconnects = prometheus_client.Counter(
            "tunnel_server_session_reconnects",
            "Sessions opened by a name seen before in this process",
            registry=registry,
        )
        self.refused = prometheus_client.Counter(
            "tunnel_server_session_refused",
            "Tunnel connections refused",
            ["reason"],
            registry=registry,
        )
        self.bytes = prometheus_client.Counter(
            "tunnel_server_tunnel_bytes",
            "WebSocket bytes of ended sessions",
            ["direction"],
            registry=registry,
        )
        self.frame_errors = prometheus_client.Counter(
            "tunnel_server_frame_errors",
            "Sessions ended by a protocol violation of the peer",
            registry=registry,
        )
        self.streams_opened = prometheus_client.Counter(
            "tunnel_server_streams_opened",
            "Streams opened towards agents",
            ["result"],
            registry=registry,
        )
        self.request_duration = prometheus_client.Histogram(
            "tunnel_server_tunnel_request_duration_seconds",
            "HTTP requests relayed to an agent over its tunnel: seconds from sending the request"
            " to the target's response head, by target kind (node_service: the node proxy;"
            " cluster_api: a cluster's API server; the gateway times its own requests)",
            ["target_kind"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )


REQUEST_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a LAN round trip is ~5 ms, a cellular one 100 ms+, a slow API list some seconds."""

CLUSTER_API_TARGET = "kube-apiserver"
CLUSTER_SERVICE_PREFIX = "service/"


def target_kind(target: str) -> str:
    """The bounded label for a stream's target (the name itself is the node's to choose)."""
    if target == CLUSTER_API_TARGET:
        return "cluster_api"
    if target.startswith(CLUSTER_SERVICE_PREFIX):
        return "cluster_service"
    return "node_service"


class SessionRegistry:
    """Live sessions by node name."""

    def __init__(self) -> None:
        self._by_name: dict[str, AgentSession] = {}
        self._seen: set[str] = set()

    def __len__(self) -> int:
        return len(self._by_name)

    def get(self, name: str) -> AgentSession | None:
        return self._by_name.get(name)

    def all(self) -> list[AgentSession]:
        return list(self._by_name.values())

    def open_streams(self) -> int:
        return sum(s.connection.open_streams for s in self._by_name.values())

    def add(self, session: AgentSession) -> bool:
        """Register; close a session this one replaces. True if the name was seen before."""
        old = self._by_name.get(session.name)
        if old is not None:
            log.info("session replaced", extra={"kv": {"node": session.name, "old": old.remote}})
            old.connection.close(ErrorCode.NO_ERROR, "replaced by a newer session of this node")
        self._by_name[session.name] = session
        seen = session.name in self._seen
        self._seen.add(session.name)
        return seen

    def remove(self, session: AgentSession) -> None:
        if self._by_name.get(session.name) is session:
            del self._by_name[session.name]


class SeenWriter:
    """``last_seen`` of connects and disconnects, written for many nodes in one transaction.

    A connect or disconnect is queued here and ``flush`` (once a second, from the endpoint's
    background task) writes all queued names with one ``touch_nodes``: in a reconnect storm
    that is one write a second instead of one per agent (a transaction each, ~2 % of the
    server's CPU at 3,000 agents). The stored time is the flush's, at most a second late. A
    connect with an agent version the record does not have yet is written at once, version
    included (``nodes`` shows it as soon as the agent is connected); the check is a read.
    """

    def __init__(self, store: Store) -> None:
        self._store = store
        self._pending: set[str] = set()

    @property
    def pending(self) -> int:
        return len(self._pending)

    def connected(self, name: str, *, agent_version: str | None, now: float) -> None:
        if agent_version is not None:
            record = self._store.get_node(name)
            if record is not None and record.agent_version != agent_version:
                self._store.touch_node(name, now=now, agent_version=agent_version)
                self._pending.discard(name)
                return
        self._pending.add(name)

    def seen(self, name: str) -> None:
        self._pending.add(name)

    def flush(self, *, now: float, also: Iterable[str] = ()) -> int:
        """Write the queued names and ``also`` as seen ``now``, in one transaction; how many."""
        names, self._pending = self._pending.union(also), set()
        if names:
            self._store.touch_nodes(sorted(names), now=now)
        return len(names)
