"""The gateway on two replicas: ``tunnel-server run --store kubernetes --gateway-listen`` x 2.

Real processes throughout: two replicas on one namespace of the session's kube-apiserver
(each with its own gateway listener), two member clusters ``gw-a`` and ``gw-b``
(``tests.harness.member``), each with ``demo/web`` pointing at a ``backend_http`` answering
with its cluster's name, and a cluster agent in each. One MultiClusterRoute (``shop``),
applied once through replica one's API, serves through both gateways.

The agents: ``gw-a`` on replica one; ``gw-b`` on replica one first, then moved to replica two
(stopped, pointed at two, started: as a load balancer would send it after a reconnect). So
each gateway reaches one cluster through its own session and the other through the replica
holding it (peer forwarding), and replica one keeps the lease gw-b's stream last renewed there
(``gw-b`` renews every ``LEASE_SECONDS``: its ManagedCluster says so).

- Through each replica's gateway: the 90/10 weights (a loose check: each gateway has its own
  balancer) and the header match that pins to gw-b.
- The moved cluster stays served through replica one past 5 x its lease duration: one judges
  it by its holder (replica two's Lease), not by the lease left behind (``remote_leases``).
- SIGKILL of gw-a's agent under load on both gateways: every GET answered 200 (a request in
  flight is retried on gw-b, docs/gateway.md "Retries"), then all on gw-b; back after a
  restart, through both.
"""

from __future__ import annotations

import json
import secrets
import time
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import kube, member
from tests.harness.ha import Replica, agent_holders
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually
from tests.integration.gateway_route.conftest import (
    API,
    World,
    _agent,
    _member_services,
    apply_routes,
    backend_proc,
    get,
    ref,
    wait_serving,
)
from tests.integration.gateway_route.test_gateway_health import Load, both, last, report

pytestmark = [pytest.mark.kube, pytest.mark.timeout(900)]

CLUSTERS = ("gw-a", "gw-b")
LEASE_SECONDS = 2
"""gw-b's ``leaseDurationSeconds``: out after 5 x 2 s without a renewal (as the hub counts it)."""
GRACE = 5 * LEASE_SECONDS

ROUTES: dict[str, dict[str, Any]] = {
    "shop": {
        "hostnames": ["shop.test"],
        "rules": [
            {
                "matches": [{"headers": [{"name": "x-canary", "value": "1"}]}],
                "filters": [
                    {
                        "type": "RequestHeaderModifier",
                        "requestHeaderModifier": {"set": [{"name": "X-Via", "value": "gw"}]},
                    }
                ],
                "backendRefs": [ref("gw-b", "web")],
            },
            {"backendRefs": [ref("gw-a", "web", 90), ref("gw-b", "web", 10)]},
        ],
    },
}


class Pair:
    """Both replicas' worlds (one per gateway) and when gw-b's agent left replica one."""

    def __init__(self, worlds: list[World]) -> None:
        self.worlds = worlds
        self.left_one = 0.0


@pytest.fixture(scope="module")
def replica_namespace(kube_crds: kube.ControlPlane) -> Iterator[str]:
    name = f"gwr-{secrets.token_hex(4)}"
    status, answer = kube_crds.request("POST", "/api/v1/namespaces", {"metadata": {"name": name}})
    assert status == 201, answer
    yield name
    kube_crds.request("DELETE", f"/api/v1/namespaces/{name}")


def _holders(kubeconfig: Path, namespace: str) -> dict[str, str | None]:
    held = agent_holders(kubeconfig, namespace)
    return {name: held.get(name) for name in CLUSTERS}


def _renewing(world: World, name: str) -> tuple[object, int]:
    """gw-b's agent: (the lease duration the hub gave it, leases sent on this stream)."""
    cluster = world.agents[name].status()["cluster"]
    assert isinstance(cluster, dict)
    fleet = cluster["fleet"]
    return fleet["lease_seconds"], int(fleet["leases"])


def _move(pair: Pair, name: str, to: Replica) -> None:
    """Stop ``name``'s agent, point it at replica ``to``, start it again."""
    agent = pair.worlds[0].agents[name]
    agent.stop()
    pair.left_one = time.monotonic()
    identity = agent.data_dir / "identity.json"
    meta = json.loads(identity.read_text())
    identity.write_text(json.dumps({**meta, "server": to.url}))
    agent.start()


def _serves(world: World, **headers: str) -> Callable[[], str]:
    def answer() -> str:
        with world.client() as client:
            got = get(client, "shop.test", **headers)
        return f"{got.status} {got.headers.get('X-Backend', '')}"

    return answer


@pytest.fixture(scope="module")
def pair(
    kube_crds: kube.ControlPlane, replica_namespace: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    base = tmp_path_factory.mktemp("gateway-replicas")
    store = ("--store", "kubernetes", "--kubeconfig", str(kube_crds.kubeconfig))
    ports = {name: free_port() for name in ("one", "two")}
    replicas = [
        Replica(
            workdir=base / name,
            extra_args=(
                *store,
                "--namespace",
                replica_namespace,
                "--gateway-listen",
                f"127.0.0.1:{port}",
            ),
            pod_name=f"replica-{name}",
        )
        for name, port in ports.items()
    ]
    procs: list[ManagedProcess] = []
    one, two = replicas
    worlds = [World(server=one, gateway_port=ports["one"], base=base)]
    worlds.append(  # the same clusters, agents and backends, through the other gateway
        World(
            server=two,
            gateway_port=ports["two"],
            base=base,
            agents=worlds[0].agents,
            clusters=worlds[0].clusters,
            ports=worlds[0].ports,
        )
    )
    running = Pair(worlds)
    with member.member_clusters(len(CLUSTERS), base / "members", nodes=1) as clusters:
        try:
            for replica in replicas:
                replica.workdir.mkdir()
                if replica is two:  # one made the admin token; it works on every replica
                    replica.data_dir.mkdir(parents=True)
                    (replica.data_dir / "admin-token").write_text(one.admin_token)
                replica.start()
            # gw-b renews often, so that 5 of its lease durations pass within the test.
            answer = worlds[0].api(
                "PUT",
                "/api/v1/fleet/managedclusters/gw-b",
                {
                    "apiVersion": API,
                    "kind": "ManagedCluster",
                    "metadata": {"name": "gw-b"},
                    "spec": {"hubAcceptsClient": True, "leaseDurationSeconds": LEASE_SECONDS},
                },
            )
            assert answer.status in (200, 201), answer
            for name, cluster in zip(CLUSTERS, clusters, strict=True):
                proc, worlds[0].ports[name] = backend_proc(name, base)
                procs.append(proc)
                worlds[0].clusters[name] = cluster
                _member_services(cluster, {"web": (worlds[0].ports[name], True)})
                worlds[0].agents[name] = _agent(name, one, cluster, base)
            for agent in worlds[0].agents.values():
                wait_serving(agent, {"web": 1})
            apply_routes(worlds[0], ROUTES)
            # Replica one holds both, and has gw-b's leases at its own duration.
            eventually(
                lambda: _holders(kube_crds.kubeconfig, replica_namespace),
                lambda held: set(held.values()) == {"replica-one"},
                what="replica one holds both agents",
                within=60,
            )
            eventually(
                lambda: _renewing(worlds[0], "gw-b"),
                lambda seen: seen[0] == LEASE_SECONDS and seen[1] >= 2,
                what=f"gw-b renews its lease on replica one every {LEASE_SECONDS} s",
                within=60,
                ignore=(OSError, KeyError),
            )
            _move(running, "gw-b", two)
            wait_serving(worlds[0].agents["gw-b"], {"web": 1})
            eventually(
                lambda: _holders(kube_crds.kubeconfig, replica_namespace),
                lambda held: held == {"gw-a": "replica-one", "gw-b": "replica-two"},
                what="gw-b's agent held by replica two, gw-a's by one",
                within=60,
            )
            for world in worlds:  # each gateway has the route, and reaches gw-b
                eventually(
                    _serves(world, **{"X-Canary": "1"}),
                    lambda seen: seen == "200 gw-b",
                    what=f"{world.server.url}'s gateway routes shop.test to gw-b",
                    within=60,
                    ignore=(OSError,),
                )
            yield running
        finally:
            for agent in worlds[0].agents.values():
                agent.stop()
            for proc in procs:
                proc.stop()
            for replica in replicas:
                if replica.process is not None:
                    replica.process.stop()


def test_each_replicas_gateway_routes_by_weight_and_header(pair: Pair) -> None:
    """Both gateways: 90/10 over both clusters (one of them through the other replica)."""
    for world in pair.worlds:
        seen: Counter[str] = Counter()
        with world.client() as client:
            for _ in range(300):
                answer = get(client, "shop.test")
                assert answer.status == 200, answer
                seen[answer.headers["X-Backend"]] += 1
            assert 0.8 <= seen["gw-a"] / 300 <= 0.97, (world.server.url, seen)
            assert seen["gw-a"] + seen["gw-b"] == 300
            for _ in range(20):
                pinned = get(client, "shop.test", **{"X-Canary": "1"})
                assert (pinned.status, pinned.headers["X-Backend"]) == (200, "gw-b"), pinned
                sent = {k.lower(): v for k, v in pinned.body["headers"]}
                assert sent["x-via"] == "gw"  # the matched rule's header modifier


def test_a_moved_cluster_is_judged_by_its_holder_not_the_lease_left_behind(pair: Pair) -> None:
    """Replica one last had gw-b's lease before the move; past 5 lease durations, it serves.

    Fails if the gateway judged gw-b by replica one's own (stale) lease: 503
    ``no_healthy_backend`` once ``GRACE`` seconds passed since gw-b's agent left one.
    """
    one = pair.worlds[0]
    until = pair.left_one + GRACE + 3
    answers: Counter[str] = Counter()
    past = 0  # requests sent once the lease left behind had run out
    with one.client() as client:
        while past < 20:
            answer = get(client, "shop.test", **{"X-Canary": "1"})
            answers[f"{answer.status} {answer.headers.get('X-Backend', '')}"] += 1
            if answer.status != 200:
                pytest.fail(f"{answer.status} through replica one: {answer.body}")
            past += time.monotonic() > until
    assert set(answers) == {"200 gw-b"}, answers


def test_a_killed_agent_moves_traffic_through_both_gateways_and_back(
    pair: Pair, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of gw-a's agent (on replica one) under load on both gateways."""
    agent = pair.worlds[0].agents["gw-a"]
    one, two = pair.worlds
    with Load(one, "shop.test") as on_one, Load(two, "shop.test") as on_two:
        for load in (on_one, on_two):
            load.wait("both clusters answer", lambda rs: both(rs, "gw-a", "gw-b"), after=0)
        assert agent.process is not None
        fault_at = time.monotonic()
        agent.process.kill()  # SIGKILL: no goodbye on the tunnel
        for load in (on_one, on_two):
            load.wait("every request on gw-b", lambda rs: last(rs, 50, "gw-b"), after=fault_at)
        report(record_property, "agent killed, replica one", on_one.records, fault_at, "gw-a")
        report(record_property, "agent killed, replica two", on_two.records, fault_at, "gw-a")
        agent.start()
        wait_serving(agent, {"web": 1})
        back_at = time.monotonic()
        for load in (on_one, on_two):
            load.wait(
                "gw-a answers again",
                lambda rs: any(r.backend == "gw-a" for r in rs),
                after=back_at,
            )
    for load in (on_one, on_two):
        statuses = Counter(r.status for r in load.records)
        assert set(statuses) == {200}, statuses  # no client error: GETs are retried
