"""``open_backend``'s choice: this process's session, the replica holding it, or refused.

Fakes stand for the tunnel (a connection whose ``open_stream`` records its calls) and for
peer forwarding (``forward``, as ``replicas.opener.open_agent_stream`` is called).
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any, Literal, cast

import pytest

from tunnel_aio import StreamRejectedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.fleet.gateway.backends import Refused, open_backend
from tunnel_server.fleet.gateway.router import Backend
from tunnel_server.identity.peer import PeerIdentity
from tunnel_server.replicas.opener import AgentNotConnectedError
from tunnel_server.store import NodeRecord, Store
from tunnel_server.tunnel.sessions import AgentSession, SessionRegistry

WEB = Backend(cluster="zone-a", namespace="demo", service="web", port=80)
Kind = Literal["node", "cluster"]
LOCAL = cast("TunnelStream", object())
FORWARDED = cast("TunnelStream", object())


class Nodes:
    def __init__(self, kinds: dict[str, Kind] | None = None) -> None:
        self.kinds = kinds or {}

    def get_node(self, name: str) -> NodeRecord | None:
        kind = self.kinds.get(name)
        if kind is None:
            return None
        return NodeRecord(name=name, kind=kind, state="approved", created_at=0.0)


class Connection:
    def __init__(self) -> None:
        self.opened: list[tuple[str, float]] = []

    async def open_stream(
        self,
        target: str,
        *,
        timeout: float,  # noqa: ASYNC109
        early_data: bytes = b"",
    ) -> TunnelStream:
        assert not early_data  # these tests open without a request head
        self.opened.append((target, timeout))
        return LOCAL


class Forward:
    def __init__(self, error: Exception | None = None) -> None:
        self.calls: list[tuple[str, str, float]] = []
        self.error = error

    async def __call__(self, cluster: str, target: str, within: float) -> TunnelStream:
        self.calls.append((cluster, target, within))
        if self.error is not None:
            raise self.error
        return FORWARDED


def registry(name: str | None, kind: Kind = "cluster") -> tuple[SessionRegistry, Connection]:
    sessions = SessionRegistry()
    connection = Connection()
    if name is not None:
        identity = PeerIdentity(
            name=name, kind=kind, serial="01", not_after=datetime(2099, 1, 1, tzinfo=UTC)
        )
        sessions.add(
            AgentSession(identity=identity, connection=cast("Any", connection), remote="test")
        )
    return sessions, connection


def open_(sessions: SessionRegistry, nodes: Nodes, forward: Forward | None) -> TunnelStream:
    return asyncio.run(
        open_backend(
            WEB, sessions=sessions, store=cast("Store", nodes), within=3.0, forward=forward
        )
    )


def test_a_local_session_is_used_and_forward_is_not_asked() -> None:
    sessions, connection = registry("zone-a")
    forward = Forward()
    assert open_(sessions, Nodes({"zone-a": "cluster"}), forward) is LOCAL
    assert connection.opened == [("service/demo/web:80", 3.0)]
    assert forward.calls == []


def test_without_a_local_session_the_holding_replica_opens_it() -> None:
    sessions, _ = registry(None)
    forward = Forward()
    assert open_(sessions, Nodes({"zone-a": "cluster"}), forward) is FORWARDED
    assert forward.calls == [("zone-a", "service/demo/web:80", 3.0)]


def test_no_replica_holding_it_is_the_cluster_offline() -> None:
    sessions, _ = registry(None)
    nodes = Nodes({"zone-a": "cluster"})
    forward = Forward(AgentNotConnectedError("zone-a"))
    with pytest.raises(Refused) as refused:
        open_(sessions, nodes, forward)
    assert (refused.value.status, refused.value.reason) == (503, "cluster_offline")
    with pytest.raises(Refused) as alone:  # no forwarding (SQLite): the same answer
        open_(sessions, nodes, None)
    assert (alone.value.status, alone.value.reason) == (503, "cluster_offline")


def test_an_unknown_cluster_is_not_found_and_a_rejection_through_a_peer_is_named() -> None:
    sessions, _ = registry(None)
    with pytest.raises(Refused) as unknown:
        open_(sessions, Nodes(), Forward(AgentNotConnectedError("zone-a")))
    assert (unknown.value.status, unknown.value.reason) == (502, "cluster_not_found")
    rejected = StreamRejectedError("no ready endpoints", code=ErrorCode.TARGET_UNREACHABLE)
    with pytest.raises(Refused) as unreachable:
        open_(sessions, Nodes({"zone-a": "cluster"}), Forward(rejected))
    assert (unreachable.value.status, unreachable.value.reason) == (503, "backend_unreachable")


def test_a_node_session_of_that_name_serves_nothing_and_is_not_forwarded() -> None:
    sessions, connection = registry("zone-a", kind="node")
    forward = Forward()
    with pytest.raises(Refused) as refused:
        open_(sessions, Nodes({"zone-a": "node"}), forward)
    assert (refused.value.status, refused.value.reason) == (502, "cluster_not_found")
    assert connection.opened == []
    assert forward.calls == []
