"""``FleetRouter`` on a real fleet store and session registry; a fixed clock, no network.

The agents' sessions are registry entries without a connection (the router only asks whether
one is there); the node store is a stand-in answering ``revision`` and ``get_node``.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import prometheus_client
import pytest

from fleet_model.gateway import BalancerSettings, ReadyEndpoints
from fleet_model.gateway.route import HealthCheck
from tunnel_server.fleet.gateway import (
    Backend,
    Decision,
    FleetRouter,
    FleetRouterSettings,
    NoRoute,
    Outcome,
    RequestInfo,
)
from tunnel_server.fleet.gateway.checks import CheckOutcome
from tunnel_server.fleet.gateway.server import GatewayMetrics
from tunnel_server.fleet.hub.hub import FleetHub, FleetSettings
from tunnel_server.fleet.hub.leases import Lease
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


CHECKED = {
    "healthCheck": {
        "path": "/healthz",
        "intervalSeconds": 1,
        "timeoutSeconds": 1,
        "unhealthyThreshold": 2,
        "healthyThreshold": 2,
    },
    "rules": [{"backendRefs": [ref("zone-a", 1), ref("zone-b", 1)]}],
}


class Checker:
    """Scripted outcomes per cluster; records what was available at each check.

    Each check moves the fake clock one interval on, so the next check is due at once.
    """

    def __init__(self, clock: Clock) -> None:
        self.clock = clock
        self.router: FleetRouter | None = None
        self.script: dict[str, list[CheckOutcome]] = {}
        self.calls: list[tuple[str, str, frozenset[str]]] = []
        self.done = asyncio.Event()

    async def __call__(self, backend: Backend, check: HealthCheck) -> CheckOutcome:
        assert self.router is not None
        available = frozenset(key.split("/")[0] for key in self.router._board.available())
        self.calls.append((backend.cluster, check.path, available))
        if len(self.calls) >= 14:
            self.done.set()
        self.clock.now += 1.0
        await asyncio.sleep(0)
        queue = self.script.get(backend.cluster) or [CheckOutcome(ok=True, detail="200")]
        return queue.pop(0) if len(queue) > 1 else queue[0]


async def test_active_checks_take_a_backend_out_and_back(tmp_path: Path) -> None:
    world = World(tmp_path)
    connect(world.sessions, "zone-a")
    connect(world.sessions, "zone-b")
    checker = Checker(world.clock)
    world.router = checker.router = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        settings=FleetRouterSettings(balancer=BalancerSettings(slow_start_seconds=0)),
        clock=world.clock,
        checker=checker,
    )
    ok = CheckOutcome(ok=True, detail="status 200", endpoints=True)
    failing = CheckOutcome(ok=False, detail="status 500", endpoints=True)
    none_ready = CheckOutcome(ok=False, detail="no ready endpoints", endpoints=False)
    checker.script["zone-a"] = [failing, failing, ok]
    checker.script["zone-b"] = [none_ready, none_ready, none_ready, ok]
    world.put("shop", CHECKED)
    world.router.sync()
    try:
        async with asyncio.TaskGroup() as group:
            task = group.create_task(world.router.run(), name="test.router")
            async with asyncio.timeout(10):
                await checker.done.wait()
            task.cancel()
        world.router.sync()
        status = {b["name"]: b for b in world.status("shop")["backends"]}
    finally:
        world.hub.store.close()
    assert status["zone-b/demo/web:80"]["state"] == "Healthy"
    seen = [(cluster, set(available)) for cluster, _, available in checker.calls]
    assert {path for _, path, _ in checker.calls} == {"/healthz"}
    # Checks alternate a, b; what each found available is what the ones before it did:
    # b out at its first "no ready endpoints" (not after the threshold of 2), a out after
    # its second failure, a back after two passes, b back after two passes.
    assert seen[:10] == [
        ("zone-a", {"zone-a", "zone-b"}),
        ("zone-b", {"zone-a", "zone-b"}),
        ("zone-a", {"zone-a"}),
        ("zone-b", {"zone-a"}),
        ("zone-a", set()),
        ("zone-b", set()),
        ("zone-a", set()),
        ("zone-b", set()),
        ("zone-a", {"zone-a"}),
        ("zone-b", {"zone-a"}),
    ]
    assert seen[10:12] == [("zone-a", {"zone-a", "zone-b"}), ("zone-b", {"zone-a", "zone-b"})]


def test_routes_without_checks_are_not_checked_and_a_dropped_check_clears(world: World) -> None:
    world.put("shop", CHECKED)
    world.router.sync()
    key = "zone-a/demo/web:80"
    world.router._board.observe(key, ReadyEndpoints(count=0), now=world.clock.now)
    assert key not in world.router._board.available()
    world.put("shop", {"rules": CHECKED["rules"]})  # the healthCheck is removed
    world.router.sync()
    assert key in world.router._board.available()
    assert world.router._plans == {}


def test_cookie_sessions_mirrors_and_retry_codes_reach_the_decision(world: World) -> None:
    mirror = {"cluster": "zone-b", "namespace": "demo", "name": "canary", "port": 80}
    spec = {
        "rules": [
            {
                "sessionPersistence": {"type": "Cookie", "sessionName": "sid"},
                "filters": [
                    {
                        "type": "RequestMirror",
                        "requestMirror": {"backendRef": mirror, "percent": 25},
                    },
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {"add": [{"name": "X-Gw", "value": "1"}]},
                    },
                ],
                "retry": {"attempts": 1, "codes": [500, 503], "backoff": "50ms"},
                "backendRefs": [ref("zone-a", 1), ref("zone-b", 1)],
            }
        ]
    }
    world.put("sticky", spec)
    world.router.sync()
    fresh = world.decide(request())
    assert fresh.set_cookie is not None
    assert fresh.set_cookie.startswith("sid=")
    token = fresh.set_cookie.split(";")[0].split("=", 1)[1]
    # The token handed out is the key the first request was balanced by.
    again = [world.decide(request(Cookie=f"sid={token}")) for _ in range(20)]
    assert {d.backends[0] for d in again} == {fresh.backends[0]}
    assert {d.set_cookie for d in again} == {None}
    assert fresh.retry_codes == frozenset({500, 503})
    assert fresh.backoff == 0.05
    assert fresh.response_modifier.add == (("X-Gw", "1"),)
    mirrored = [world.decide(request(Cookie="sid=x")).mirrors for _ in range(98)]
    copies = [m for m in [fresh.mirrors, *(d.mirrors for d in again), *mirrored] if m]
    assert len(copies) == 119 * 25 // 100  # exactly 25 of every 100 decisions
    assert {str(b) for m in copies for b in m} == {"zone-b/demo/canary:80"}


def test_status_figures_are_written_at_most_every_10_s_and_only_on_change(tmp_path: Path) -> None:
    world = World(tmp_path)
    connect(world.sessions, "zone-a")
    connect(world.sessions, "zone-b")
    registry = prometheus_client.CollectorRegistry()
    metrics = GatewayMetrics(registry)
    world.router = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        clock=world.clock,
        metrics=metrics,
    )
    try:
        world.put("shop", SHOP)
        world.router.sync()
        key = "zone-a/demo/web:80"

        def figures() -> dict[str, Any]:
            backends = {b["name"]: b for b in world.status("shop")["backends"]}
            return {k: v for k, v in backends[key].items() if k not in ("state", "health")}

        assert figures() == {"name": key, "requests": 0, "errors": 0}
        for n in range(10):
            code = "5xx" if n == 0 else "2xx"
            metrics.answered("shop", key, code, 0.004, world.clock.now)
        written = world.hub.store.revision()
        world.clock.now += 5
        world.router.sync()
        assert world.hub.store.revision() == written  # not yet: figures wait 10 s
        world.clock.now += 5
        world.router.sync()
        assert figures() == {
            "name": key,
            "requests": 10,
            "errors": 1,
            "latencyP50Ms": 4.0,
            "latencyP99Ms": 4.0,
        }
        written = world.hub.store.revision()
        world.clock.now += 10
        world.router.sync()
        assert world.hub.store.revision() == written  # the same figures: nothing written
        world.hub.delete(KIND, "shop")
        world.router.sync()
        assert 'route="shop"' not in prometheus_client.generate_latest(registry).decode()
    finally:
        world.hub.store.close()


def test_a_cluster_whose_lease_ran_out_is_unreachable_at_once(world: World) -> None:
    world.put("shop", SHOP)
    world.hub.put(
        "ManagedCluster",
        "zone-b",
        labels={},
        annotations={},
        spec={"hubAcceptsClient": True, "leaseDurationSeconds": 60},
        now=time.time(),
    )
    world.nodes.version += 1  # the router reads lease durations with the node records
    world.router.sync()
    fresh, stale = time.time() - 10, time.time() - 55  # zone-a: 10 s lease, out after 50 s
    world.hub.leases["zone-a"] = Lease(renewed_at=fresh, apiserver_healthy=True)
    world.hub.leases["zone-b"] = Lease(renewed_at=stale, apiserver_healthy=True)  # 60 s: in
    seen = Counter(b.cluster for _ in range(100) for b in world.decide(request()).backends[:1])
    assert seen == {"zone-a": 90, "zone-b": 10}

    world.hub.leases["zone-a"] = Lease(renewed_at=stale, apiserver_healthy=True)
    for _ in range(20):  # the session is still there; the lease says the agent is not
        assert [b.cluster for b in world.decide(request()).backends] == ["zone-b"]
    world.router.sync()
    backends = {b["name"]: b for b in world.status("shop")["backends"]}
    assert backends["zone-a/demo/web:80"]["reasons"] == ["Unreachable"]

    world.hub.leases["zone-a"] = Lease(renewed_at=time.time(), apiserver_healthy=True)
    assert "zone-a" in {b.cluster for _ in range(20) for b in world.decide(request()).backends}
    del world.hub.leases["zone-b"]  # no lease at all (no fleet stream): the session decides
    assert "zone-b" in {b.cluster for _ in range(20) for b in world.decide(request()).backends}


def _lease(ready: dict[str, int] | None) -> Lease:
    return Lease(renewed_at=time.time(), apiserver_healthy=True, ready_endpoints=ready)


def _backends(world: World) -> dict[str, dict[str, Any]]:
    world.router.sync()
    return {b["name"]: b for b in world.status("shop")["backends"]}


def test_a_reported_count_of_0_moves_traffic_at_once_and_back_with_slow_start(
    tmp_path: Path,
) -> None:
    world = World(tmp_path)
    slow = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        settings=FleetRouterSettings(balancer=BalancerSettings(slow_start_seconds=30)),
        clock=world.clock,
    )
    world.router = slow
    connect(world.sessions, "zone-a")
    connect(world.sessions, "zone-b")
    world.put("shop", SHOP)
    world.router.sync()
    # No report (an older agent): unknown, served as before; no count in the status.
    world.hub.leases["zone-a"] = _lease(None)
    seen = Counter(world.decide(request()).backends[0].cluster for _ in range(100))
    assert seen == {"zone-a": 90, "zone-b": 10}
    assert "readyEndpoints" not in _backends(world)["zone-a/demo/web:80"]

    # The agent reports 0: the very next request goes elsewhere (no sync, no failed request).
    world.hub.leases["zone-a"] = _lease({"demo/web:80": 0, "demo/other:80": 3})
    for _ in range(20):
        assert [b.cluster for b in world.decide(request()).backends] == ["zone-b"]
    backends = _backends(world)
    assert backends["zone-a/demo/web:80"]["readyEndpoints"] == 0
    assert backends["zone-a/demo/web:80"]["reasons"] == ["NoReadyEndpoints"]
    assert backends["zone-b/demo/web:80"]["state"] == "Healthy"

    # A renewal without counts keeps them (an extra lease of an older agent changes nothing).
    world.hub.leases["zone-a"] = Lease(
        renewed_at=time.time(),
        apiserver_healthy=True,
        ready_endpoints=world.hub.leases["zone-a"].ready_endpoints,
    )
    assert {world.decide(request()).backends[0].cluster for _ in range(20)} == {"zone-b"}

    # Ready again: back, with slow start (a small share at first, the full 90 % later).
    world.hub.leases["zone-a"] = _lease({"demo/web:80": 2})
    first = Counter(world.decide(request()).backends[0].cluster for _ in range(1000))
    assert 0 < first["zone-a"] < 600  # a tenth of its weight: 9 against zone-b's 10
    assert _backends(world)["zone-a/demo/web:80"]["readyEndpoints"] == 2
    world.clock.now += 60
    later = Counter(world.decide(request()).backends[0].cluster for _ in range(1000))
    assert 850 <= later["zone-a"] <= 950

    # Reported 0, then the report drops the Service (or a new stream's hello drops all):
    # unknown again, so what the report said does not stay.
    world.hub.leases["zone-a"] = _lease({"demo/web:80": 0})
    assert {world.decide(request()).backends[0].cluster for _ in range(20)} == {"zone-b"}
    world.hub.leases["zone-a"] = _lease({})
    assert "zone-a" in {world.decide(request()).backends[0].cluster for _ in range(50)}
    assert "readyEndpoints" not in _backends(world)["zone-a/demo/web:80"]
    world.hub.store.close()


def test_a_route_change_tells_new_backends_the_counts_already_reported(world: World) -> None:
    world.hub.leases["zone-a"] = _lease({"demo/web:80": 0})
    world.put("shop", SHOP)
    world.router.sync()
    assert {world.decide(request()).backends[0].cluster for _ in range(20)} == {"zone-b"}
    world.hub.delete(KIND, "shop")
    world.router.sync()
    world.put("shop", SHOP)  # the same backend again, on a fresh board
    world.router.sync()
    assert {world.decide(request()).backends[0].cluster for _ in range(20)} == {"zone-b"}
    assert _backends(world)["zone-a/demo/web:80"]["readyEndpoints"] == 0


def first_clusters(router: FleetRouter, times: int) -> Counter[str]:
    """The first backend's cluster of ``times`` decisions."""
    seen: Counter[str] = Counter()
    for _ in range(times):
        decision = router.route(request())
        assert isinstance(decision, Decision), decision
        seen[decision.backends[0].cluster] += 1
    return seen


def test_a_cluster_another_replica_holds_is_reachable_through_it(world: World) -> None:
    """Peer forwarding: without a session here, ``connected`` (the Lease holders) decides."""
    elsewhere = {"zone-a"}
    router = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        settings=FleetRouterSettings(balancer=BalancerSettings(slow_start_seconds=0)),
        clock=world.clock,
        connected=lambda cluster: cluster in elsewhere,
    )
    world.put("shop", SHOP)
    router.sync()
    world.router.sync()
    session = world.sessions.get("zone-a")
    assert session is not None
    world.sessions.remove(session)
    seen = first_clusters(router, 100)
    assert seen["zone-a"] > 50, seen  # still served (90 %), through the replica holding it
    # Without ``connected`` (SQLite, one process) the same cluster is unreachable.
    assert set(first_clusters(world.router, 20)) == {"zone-b"}
    elsewhere.clear()  # no replica holds it any more
    assert set(first_clusters(router, 20)) == {"zone-b"}


def test_a_cluster_another_replica_holds_is_judged_by_its_holder_not_a_stale_lease(
    world: World,
) -> None:
    """The agent moved to another replica: a lease left here is no word on it.

    The last one its stream renewed here (ready count 0 then); the holder's Lease is, as the
    leader counts it (``remote_leases``). Fails if the router reads this replica's own leases
    for it.
    """
    elsewhere: set[str] = set()
    router = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        settings=FleetRouterSettings(balancer=BalancerSettings(slow_start_seconds=0)),
        clock=world.clock,
        connected=lambda cluster: cluster in elsewhere,
    )
    world.put("shop", SHOP)
    router.sync()
    long_ago = time.time() - 3600  # far past 5 x the default 10 s lease
    world.hub.leases["zone-a"] = Lease(
        renewed_at=long_ago, apiserver_healthy=True, ready_endpoints={"demo/web:80": 0}
    )
    # While the session is here, this lease is the agent's word: out (ran out, and 0 ready).
    assert set(first_clusters(router, 20)) == {"zone-b"}
    router.sync()
    status = {b["name"]: b for b in world.status("shop")["backends"]}
    assert status["zone-a/demo/web:80"]["readyEndpoints"] == 0

    # The agent moves: its session here closes, another live replica holds it now.
    session = world.sessions.get("zone-a")
    assert session is not None
    world.sessions.remove(session)
    elsewhere.add("zone-a")
    seen = first_clusters(router, 200)
    assert 160 <= seen["zone-a"] <= 195, seen  # its whole 90 %, through the holder
    router.sync()
    status = {b["name"]: b for b in world.status("shop")["backends"]}
    assert status["zone-a/demo/web:80"]["state"] == "Healthy", status
    assert "readyEndpoints" not in status["zone-a/demo/web:80"]  # unknown here

    # Back on this replica: its own stream's lease speaks again (the stale one, here).
    connect(world.sessions, "zone-a")
    assert set(first_clusters(router, 20)) == {"zone-b"}
    world.hub.leases["zone-a"] = Lease(renewed_at=time.time(), apiserver_healthy=True)
    assert "zone-a" in set(first_clusters(router, 50))


async def test_with_replicas_only_the_leader_writes_the_status(world: World) -> None:
    """``writes_status=False`` (a replica): no status until ``lead`` runs, none after it ends."""
    router = FleetRouter(
        hub=world.hub,
        sessions=world.sessions,
        nodes=cast("Store", world.nodes),
        clock=world.clock,
        writes_status=False,
    )
    world.put("shop", SHOP)
    router.sync()
    assert isinstance(router.route(request()), Decision)  # it routes all the same
    assert world.status("shop") == {}
    async with asyncio.TaskGroup() as group:
        leading = group.create_task(router.lead(), name="test.lead")
        await asyncio.sleep(0)  # lead() starts
        router.sync()
        assert conditions_of(world.status("shop"))["Accepted"] == "True"
        leading.cancel()
    session = world.sessions.get("zone-a")
    assert session is not None
    world.sessions.remove(session)
    router.sync()  # a change it would write as the leader
    backends = {b["name"]: b for b in world.status("shop")["backends"]}
    assert backends["zone-a/demo/web:80"]["state"] == "Healthy"


def conditions_of(status: dict[str, Any]) -> dict[str, str]:
    return {c["type"]: c["status"] for c in status.get("conditions", [])}


def test_matches_are_remembered_for_plain_hosts_only_and_forgotten_on_a_route_change(
    world: World,
) -> None:
    """A host no route matches by header: one parse per (method, host, path, query)."""
    world.put(
        "plain", {"hostnames": ["plain.test"], "rules": [{"backendRefs": [ref("zone-a", 1)]}]}
    )
    world.put("shop", SHOP)
    world.router.sync()
    assert [b.cluster for b in world.decide(request("plain.test")).backends] == ["zone-a"]
    remembered = dict(world.router._matches)
    assert list(remembered) == [("GET", "plain.test", "/", "")]
    # shop.test has a header match: never remembered, so the header still decides.
    for _ in range(3):
        assert {b.cluster for b in world.decide(request()).backends} <= {"zone-a", "zone-b"}
        pinned = world.decide(request(**{"X-Canary": "1"}))
        assert [b.cluster for b in pinned.backends] == ["zone-b"]
    assert list(world.router._matches) == [("GET", "plain.test", "/", "")]
    # A new spec: a new table, nothing remembered from the old one.
    world.put(
        "plain", {"hostnames": ["plain.test"], "rules": [{"backendRefs": [ref("zone-b", 1)]}]}
    )
    world.router.sync()
    assert [b.cluster for b in world.decide(request("plain.test")).backends] == ["zone-b"]
    gone = world.router.route(request("other.test"))
    assert isinstance(gone, NoRoute)
    assert gone.status == 404
    assert world.router.route(request("other.test")) == gone  # a remembered miss: still 404
