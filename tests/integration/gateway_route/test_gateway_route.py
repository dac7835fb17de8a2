"""MultiClusterRoute objects routing real traffic: weights, matches, status, failover, 503.

Everything is a real process (``conftest.py``): the tunnel server with its default router,
two member clusters ``gw-a`` and ``gw-b``, each with its agent and its backend behind
``demo/web`` (answering with the cluster's name).
The tests run in file order: the failover test kills ``gw-a``'s agent, the ones after it rely
on that.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest

from tests.harness.waiting import eventually
from tests.integration.gateway_route.conftest import World, conditions, get

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

REQUESTS = 2000


def test_routes_are_accepted_and_an_unknown_cluster_is_named(world: World) -> None:
    shop = conditions(world.status("shop"))
    assert shop["ResolvedRefs"]["status"] == "True", shop
    lost = conditions(world.status("lost"))
    assert lost["Accepted"]["status"] == "True", lost
    assert lost["ResolvedRefs"]["status"] == "False", lost
    assert lost["ResolvedRefs"]["reason"] == "BackendNotFound"
    assert "gw-x" in lost["ResolvedRefs"]["message"]
    backends = {b["name"]: b for b in world.status("lost")["backends"]}
    assert backends["gw-x/demo/web:80"]["state"] == "Unhealthy"
    with world.client() as client:
        served = [get(client, "lost.test") for _ in range(20)]
    assert [(a.status, a.body["backend"]) for a in served] == [(200, "gw-a")] * 20


def test_weights_90_10(world: World) -> None:
    with world.client() as client:
        answers = [get(client, "shop.test") for _ in range(REQUESTS)]
    assert {a.status for a in answers} == {200}
    seen = Counter(a.body["backend"] for a in answers)
    assert set(seen) == {"gw-a", "gw-b"}
    share = seen["gw-a"] / REQUESTS
    assert abs(share - 0.9) <= 0.03, seen


def test_a_header_match_pins_to_one_cluster_with_its_modifier(world: World) -> None:
    with world.client() as client:
        answers = [get(client, "shop.test", **{"X-Canary": "1"}) for _ in range(50)]
    assert {(a.status, a.body["backend"]) for a in answers} == {(200, "gw-b")}
    sent = {name.lower(): value for name, value in answers[0].body["headers"]}
    assert sent["x-via"] == "gw"
    assert sent["x-canary"] == "1"


def test_a_path_match(world: World) -> None:
    with world.client() as client:
        answers = [get(client, "shop.test", "/hangup?on=nobody") for _ in range(50)]
    assert {(a.status, a.body["backend"]) for a in answers} == {(200, "gw-b")}


def test_a_route_applied_with_the_cli_serves(world: World, tmp_path: Path) -> None:
    manifest = tmp_path / "route.yaml"
    manifest.write_text(
        "apiVersion: fleet.edgefleet.io/v1alpha1\n"
        "kind: MultiClusterRoute\n"
        "metadata: {name: cli}\n"
        "spec:\n"
        "  hostnames: [cli.test]\n"
        "  rules:\n"
        "  - backendRefs: [{cluster: gw-b, namespace: demo, name: web, port: 80}]\n"
    )
    world.server.cli("apply", "-f", str(manifest))
    with world.client() as client:
        served = eventually(
            lambda: get(client, "cli.test"),
            lambda answer: answer.status == 200,
            what="cli.test served once the applied route is loaded",
            within=30,
        )
    assert served.body["backend"] == "gw-b"
    assert conditions(world.status("cli"))["Accepted"]["status"] == "True"
    table = world.server.cli("get", "mcr", "cli", "-o", "wide").splitlines()
    assert table[0].split()[:6] == ["NAME", "HOSTNAMES", "RULES", "ACCEPTED", "RESOLVED", "HEALTHY"]
    assert table[1].split()[:6] == ["cli", "cli.test", "1", "True", "True", "1/1"], table
    listed = json.loads(world.server.cli("get", "multiclusterroutes", "-o", "json"))
    assert {"cli", "shop", "lost"} <= {item["metadata"]["name"] for item in listed["items"]}


def test_a_killed_agent_moves_every_request_to_the_other_cluster(world: World) -> None:
    agent = world.agents["gw-a"]
    assert agent.process is not None
    agent.process.kill()  # SIGKILL: no goodbye on the tunnel
    with world.client() as client:
        answers = [get(client, "shop.test") for _ in range(300)]
    assert [a.status for a in answers] == [200] * 300
    assert Counter(a.body["backend"] for a in answers) == {"gw-b": 300}
    eventually(
        lambda: {b["name"]: b for b in world.status("shop")["backends"]},
        lambda backends: backends["gw-a/demo/web:80"].get("reasons") == ["Unreachable"],
        what="the shop route's status shows gw-a unreachable",
        within=30,
    )
    assert conditions(world.status("shop"))["Accepted"]["status"] == "True"


def test_a_route_with_every_backend_down_answers_503_with_a_reason(world: World) -> None:
    with world.client() as client:
        down = get(client, "only-a.test")
        still = get(client, "shop.test", **{"X-Canary": "1"})
    assert down.status == 503, down
    assert down.body["reason"] == "no_healthy_backend"
    assert "gw-a/demo/web:80: unhealthy: Unreachable" in down.body["detail"]
    assert down.headers.get("Retry-After") == "1"
    assert (still.status, still.body["backend"]) == (200, "gw-b")
