"""``FleetRouter`` on a real fleet store and session registry; a fixed clock, no network.

The agents' sessions are registry entries without a connection (the router only asks whether
one is there); the node store is a stand-in answering ``revision`` and ``get_node``.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import pytest

from fleet_model.gateway import BalancerSettings
from tunnel_server.fleet.gateway import (
    Backend,
    Decision,
    FleetRouter,
    FleetRouterSettings,
    NoRoute,
    Outcome,
    RequestInfo,
)
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings
from tunnel_server.fleet.hub.store import FleetEvents
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore
from tunnel_server.identity.peer import PeerIdentity
from tunnel_server.store import NodeRecord, Store
from tunnel_server.tunnel.sessions import AgentSession, SessionRegistry

KIND = "MultiClusterRoute"


class Nodes:
    """The node store as the router reads it: registered clusters by name."""

    def __init__(self, *names: str) -> None:
        self.names = set(names)
        self.version = 1

    def revision(self) -> int:
        return self.version

    def get_node(self, name: str) -> NodeRecord | None:
        if name not in self.names:
            return None
        return NodeRecord(name=name, kind="cluster", state="approved", created_at=0.0)


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def connect(sessions: SessionRegistry, name: str) -> AgentSession:
    identity = PeerIdentity(
        name=name, kind="cluster", serial="01", not_after=datetime(2099, 1, 1, tzinfo=UTC)
    )
    session = AgentSession(identity=identity, connection=cast("Any", None), remote="test")
    sessions.add(session)
    return session


def ref(cluster: str, weight: int, service: str = "web") -> dict[str, Any]:
    return {"cluster": cluster, "namespace": "demo", "name": service, "port": 80, "weight": weight}


def request(host: str = "shop.test", path: str = "/", **headers: str) -> RequestInfo:
    return RequestInfo(method="GET", host=host, path=path, query="", headers=list(headers.items()))


class World:
    def __init__(self, data: Path) -> None:
        store = SqliteFleetStore.open(data)
        self.hub = FleetHub(
            store=store, events=FleetEvents(store.revision), settings=FleetSettings()
        )
        self.sessions = SessionRegistry()
        self.nodes = Nodes("zone-a", "zone-b")
        self.clock = Clock()
        self.router = FleetRouter(
            hub=self.hub,
            sessions=self.sessions,
            nodes=cast("Store", self.nodes),
            settings=FleetRouterSettings(balancer=BalancerSettings(slow_start_seconds=0)),
            clock=self.clock,
        )

    def put(self, name: str, spec: dict[str, Any]) -> None:
        self.hub.put(KIND, name, labels={}, annotations={}, spec=spec, now=time.time())

    def status(self, name: str) -> dict[str, Any]:
        obj = self.hub.store.get(KIND, name)
        assert obj is not None
        return dict(obj.status)

    def decide(self, info: RequestInfo) -> Decision:
        decision = self.router.route(info)
        assert isinstance(decision, Decision), decision
        return decision


@pytest.fixture
def world(tmp_path: Path) -> Iterator[World]:
    made = World(tmp_path)
    connect(made.sessions, "zone-a")
    connect(made.sessions, "zone-b")
    yield made
    made.hub.store.close()


SHOP = {
    "hostnames": ["shop.test"],
    "rules": [
        {
            "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
            "backendRefs": [ref("zone-b", 1)],
        },
        {
            "matches": [{"path": {"type": "PathPrefix", "value": "/api"}}],
            "backendRefs": [ref("zone-a", 1)],
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {"set": [{"name": "x-via", "value": "gw"}]},
                }
            ],
            "timeouts": {"request": "5s"},
        },
        {"backendRefs": [ref("zone-a", 90), ref("zone-b", 10)]},
    ],
}


def test_weights_headers_and_paths(world: World) -> None:
    world.put("shop", SHOP)
    world.router.sync()
    seen = Counter(world.decide(request()).backends[0].cluster for _ in range(1000))
    assert seen == {"zone-a": 900, "zone-b": 100}
    both = world.decide(request())
    assert [b.cluster for b in both.backends] == ["zone-a", "zone-b"] or [
        b.cluster for b in both.backends
    ] == ["zone-b", "zone-a"]
    pinned = world.decide(request(**{"X-Canary": "1"}))
    assert [str(b) for b in pinned.backends] == ["zone-b/demo/web:80"]
    api = world.decide(request(path="/api/items"))
    assert [b.cluster for b in api.backends] == ["zone-a"]
    assert api.modifier.set == (("x-via", "gw"),)
    assert api.timeouts.request == 5.0
    missing = world.router.route(request(host="other.test"))
    assert isinstance(missing, NoRoute)
    assert missing.status == 404


def test_status_names_an_unknown_cluster_and_the_rest_serves(world: World) -> None:
    world.put("lost", {"rules": [{"backendRefs": [ref("zone-x", 1), ref("zone-a", 1)]}]})
    world.router.sync()
    status = world.status("lost")
    conditions = {c["type"]: c for c in status["conditions"]}
    assert conditions["Accepted"]["status"] == "True"
    assert conditions["ResolvedRefs"]["status"] == "False"
    assert conditions["ResolvedRefs"]["reason"] == "BackendNotFound"
    assert "zone-x" in conditions["ResolvedRefs"]["message"]
    for _ in range(10):
        assert [b.cluster for b in world.decide(request()).backends] == ["zone-a"]


def test_a_lost_session_moves_traffic_and_all_down_is_503(world: World) -> None:
    world.put("shop", SHOP)
    world.router.sync()
    session = world.sessions.get("zone-a")
    assert session is not None
    world.sessions.remove(session)
    for _ in range(20):
        assert [b.cluster for b in world.decide(request()).backends] == ["zone-b"]
    other = world.sessions.get("zone-b")
    assert other is not None
    world.sessions.remove(other)
    down = world.router.route(request())
    assert isinstance(down, NoRoute)
    assert (down.status, down.reason) == (503, "no_healthy_backend")
    assert "zone-a/demo/web:80: unhealthy: Unreachable" in down.detail
    world.router.sync()
    backends = {b["name"]: b for b in world.status("shop")["backends"]}
    assert backends["zone-b/demo/web:80"]["reasons"] == ["Unreachable"]


def test_passive_errors_eject_and_route_changes_follow_the_store(world: World) -> None:
    world.put("shop", SHOP)
    world.router.sync()
    zone_a = Backend(cluster="zone-a", namespace="demo", service="web", port=80)
    for _ in range(5):
        world.router.report(zone_a, Outcome(kind="answered", status=500))
    assert {world.decide(request()).backends[0].cluster for _ in range(10)} == {"zone-b"}
    world.put("shop", {"rules": [{"backendRefs": [ref("zone-b", 1, service="other")]}]})
    world.router.sync()
    assert str(world.decide(request(host="any.test")).backends[0]) == "zone-b/demo/other:80"
    world.hub.delete(KIND, "shop")
    world.router.sync()
    assert isinstance(world.router.route(request()), NoRoute)


def test_header_affinity_sticks(world: World) -> None:
    spec = {
        "rules": [
            {
                "sessionPersistence": {"type": "Header", "sessionName": "x-user"},
                "backendRefs": [ref("zone-a", 1), ref("zone-b", 1)],
            }
        ]
    }
    world.put("sticky", spec)
    world.router.sync()
    for user in ("ann", "bob", "cyd", "dan"):
        picks = {world.decide(request(**{"X-User": user})).backends[0] for _ in range(10)}
        assert len(picks) == 1


def test_a_stored_route_that_does_not_parse_is_left_out_and_says_why(world: World) -> None:
    world.put("shop", SHOP)
    world.put("broken", {"rules": [{"backendRefs": [ref("zone-a", -1)]}]})  # not via the API
    world.router.sync()
    broken = {c["type"]: c for c in world.status("broken")["conditions"]}
    assert broken["Accepted"]["status"] == "False"
    assert broken["Accepted"]["reason"] == "Invalid"
    assert "/spec/rules/0/backendRefs/0/weight" in broken["Accepted"]["message"]
    assert world.decide(request()).route == "shop"


def test_an_ejection_ends_on_time_and_status_writes_only_changes(world: World) -> None:
    world.put("shop", SHOP)
    world.router.sync()
    written = world.hub.store.revision()
    world.router.sync()
    assert world.hub.store.revision() == written  # nothing changed, nothing written
    zone_b = Backend(cluster="zone-b", namespace="demo", service="web", port=80)
    for _ in range(3):
        world.router.report(zone_b, Outcome(kind="failed", reason="backend_failed"))
    world.router.sync()
    backends = {b["name"]: b for b in world.status("shop")["backends"]}
    assert backends["zone-b/demo/web:80"]["state"] == "Ejected"
    assert isinstance(world.router.route(request(**{"X-Canary": "1"})), NoRoute)
    world.clock.now += 30.0  # HealthSettings.base_ejection_seconds
    pinned = world.decide(request(**{"X-Canary": "1"}))
    assert [b.cluster for b in pinned.backends] == ["zone-b"]
    world.router.sync()
    backends = {b["name"]: b for b in world.status("shop")["backends"]}
    assert backends["zone-b/demo/web:80"]["state"] == "Healthy"
