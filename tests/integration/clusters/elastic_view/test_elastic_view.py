"""A registered cluster's NodePools and ResourcePolicies in the REST API, the CLI and the console.

A real ``tunnel-server``, a real member kube-apiserver and a real cluster-mode ``edge-agent``
(``tests/integration/clusters/members.py``: impersonation RBAC as the install manifest's, the
cloud roles bound to cluster-admin, edit and view). The elastic CRDs are applied with the real
kubectl; the objects' status is written through the member's API (the status subresource) by
the agent's own pure functions (``pool_status_document``, ``policy_status``), as the agent
writes it. Then ``GET /api/v1/clusters/east/nodepools|resourcepolicies``,
``tunnel-server get nodepools --cluster east`` and the console's cluster page read them through
the tunnel, as the caller: the member's RBAC refuses a viewer until it grants the kinds.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from fleet_model.elastic.autoscaler import PoolStatus, pool_status_document
from fleet_model.elastic.nodepool import parse_node_pool
from fleet_model.elastic.policy import parse_resource_policy
from fleet_model.elastic.units import policy_status
from tests.harness import kube
from tests.harness.daemons import BIN, Server
from tests.harness.waiting import eventually
from tests.integration.clusters.members import ClusterAgent, Member, register
from tests.integration.console.conftest import Api, console_page

pytestmark = [pytest.mark.kube, pytest.mark.timeout(480)]

REPO = Path(__file__).resolve().parents[4]
CRDS = REPO / "packaging" / "kubernetes" / "elastic" / "40-elastic-crds.yaml"
CLUSTER = "east"
API_VERSION = "elastic.edgefleet.io/v1alpha1"
NOW = 1_800_000_000.0
LIVE = 20_000
"""ms: a guard against hangs while the console follows a change (its cluster page polls every
5 s and fetches again on each of the agent's reports)."""

POOLS: dict[str, dict[str, Any]] = {
    "cloud": {"priority": 10, "max": 4, "provider": {"kwok": {}}},
    "burst": {
        "priority": 5,
        "min": 1,
        "max": 10,
        "provider": {"command": {"path": "/usr/local/bin/grow", "timeoutSeconds": 60}},
    },
    "spot": {"priority": 1, "max": 2, "provider": {"kwok": {}}},
}
POOL_STATUS = {  # name: (nodes, creating, failure) as the autoscaler would report them
    "cloud": (3, 1, ""),
    "burst": (1, 0, "exit 3: quota exceeded"),
    "spot": (0, 0, ""),
}
POLICIES: dict[tuple[str, str], list[dict[str, Any]]] = {
    ("shop", "web"): [
        {"name": "local", "nodeSelector": {"tier": "local"}, "max": 4},
        {"name": "cloud", "nodeSelector": {"tier": "cloud"}, "max": 4},
        {"name": "virtual", "nodeSelector": {"tier": "virtual"}},
    ],
    ("lab", "batch"): [
        {"name": "local", "nodeSelector": {"tier": "local"}},
        {"name": "cloud", "nodeSelector": {"tier": "cloud"}, "max": 2},
    ],
}
NODES = {
    "n-local": {"tier": "local"},
    "n-cloud": {"tier": "cloud"},
    "n-virtual": {"tier": "virtual"},
}
PLACED = {  # pods per node of each policy's namespace
    "shop": {"n-local": 4, "n-cloud": 4, "n-virtual": 2},
    "lab": {"n-local": 1, "n-cloud": 2},
}
VIEWER_GRANT = """
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRole
metadata: {name: "edgefleet:elastic-view"}
rules:
- apiGroups: [elastic.edgefleet.io]
  resources: [nodepools, resourcepolicies]
  verbs: [get, list, watch]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {name: "edgefleet:elastic-view"}
roleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: "edgefleet:elastic-view"}
subjects:
- {apiGroup: rbac.authorization.k8s.io, kind: Group, name: "edgefleet:viewer"}
"""


# ---------------------------------------------------------------- the member's objects


def pool_doc(name: str) -> dict[str, Any]:
    spec = {"node": {"capacity": {"cpu": "2", "memory": "4Gi", "pods": 20}}, **POOLS[name]}
    return {"apiVersion": API_VERSION, "kind": "NodePool", "metadata": {"name": name}, "spec": spec}


def pool_status(name: str, *, nodes: int | None = None) -> dict[str, Any]:
    count, creating, failure = POOL_STATUS[name]
    status = PoolStatus(
        name=name,
        nodes=count if nodes is None else nodes,
        creating=creating,
        removing=0,
        backoff_until=NOW + 30 if failure else None,
        last_error=failure,
    )
    return pool_status_document(parse_node_pool(pool_doc(name)), status, now=NOW)


def policy_doc(namespace: str, name: str) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ResourcePolicy",
        "metadata": {"namespace": namespace, "name": name},
        "spec": {"selector": {"matchLabels": {"app": name}}, "units": POLICIES[namespace, name]},
    }


def policy_status_of(stored: dict[str, Any]) -> dict[str, Any]:
    """What the agent would write for the stored policy, its pods placed as ``PLACED`` says."""
    namespace, name = stored["metadata"]["namespace"], stored["metadata"]["name"]
    pods = [
        {
            "metadata": {
                "namespace": namespace,
                "name": f"{name}-{node}-{i}",
                "labels": {"app": name},
            },
            "spec": {"nodeName": node},
            "status": {"phase": "Running"},
        }
        for node, count in PLACED[namespace].items()
        for i in range(count)
    ]
    return policy_status(parse_resource_policy(stored), pods, NODES, now=NOW)


def write_status(member: Member, resource: str, status: dict[str, Any], *ns: str) -> None:
    """The status subresource, written as the agent writes it (straight to the member)."""
    member.direct(
        "patch",
        resource,
        *ns,
        "--subresource=status",
        "--type=merge",
        "-p",
        json.dumps({"status": status}),
    )


def install_elastic(member: Member) -> None:
    member.direct("apply", "-f", str(CRDS))
    for plural in ("nodepools", "resourcepolicies"):
        member.direct(
            "wait",
            "--for=condition=Established",
            f"crd/{plural}.elastic.edgefleet.io",
            "--timeout=120s",
        )
    # Established comes a moment before discovery lists the kinds; kubectl needs the latter.
    eventually(
        lambda: member.direct("get", "nodepools,resourcepolicies", "-A", check=False),
        lambda done: done.returncode == 0,
        what="the elastic kinds in discovery",
        within=60.0,
        every=0.5,
    )
    objects = [pool_doc(name) for name in POOLS]
    for namespace in sorted({ns for ns, _ in POLICIES}):
        member.direct("create", "namespace", namespace)
    objects += [policy_doc(ns, name) for ns, name in POLICIES]
    member.direct(
        "apply", "-f", "-", stdin=json.dumps({"apiVersion": "v1", "kind": "List", "items": objects})
    )
    for name in POOLS:
        write_status(member, f"nodepool/{name}", pool_status(name))
    for namespace, name in POLICIES:
        stored = json.loads(
            member.direct("get", "resourcepolicy", name, "-n", namespace, "-o", "json").stdout
        )
        write_status(member, f"resourcepolicy/{name}", policy_status_of(stored), "-n", namespace)


# ---------------------------------------------------------------- the system


@dataclass
class ElasticSystem:
    server: Server
    member: Member
    api: Api
    before_install: tuple[int, dict[str, Any]]
    """``GET .../nodepools`` as the admin, before the CRDs were applied in the member."""


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ElasticSystem]:
    base = tmp_path_factory.mktemp("elastic-view")
    plane = kube.launch("member-east", base / "member-east")
    server = Server(workdir=base)
    member: Member | None = None
    try:
        server.start()
        plane.wait_ready()
        member = register(server, plane, CLUSTER, base)
        api = Api(server=server, token=server.admin_token)
        status, body, _ = api.call("GET", f"/api/v1/clusters/{CLUSTER}/nodepools")
        install_elastic(member)
        yield ElasticSystem(server=server, member=member, api=api, before_install=(status, body))
    finally:
        if member is not None:
            member.agent.stop()
        server.stop()
        plane.stop()


@pytest.fixture(scope="module")
def viewer(system: ElasticSystem) -> str:
    """A cloud user with role viewer: ``edgefleet:viewer`` in the member."""
    created = system.server.cli("users", "create", "watcher", "--role", "viewer")
    return created.strip().splitlines()[-1]


def names(body: dict[str, Any]) -> list[str]:
    return [item["name"] for item in body["items"]]


# ---------------------------------------------------------------- REST


def test_not_installed_is_a_404_that_says_so(system: ElasticSystem) -> None:
    status, body = system.before_install
    assert (status, body["reason"]) == (404, "elastic_not_installed"), body
    assert "40-elastic-crds.yaml" in body["detail"]
    assert f"cluster {CLUSTER}" in body["detail"]
    assert "404 page not found" in body["detail"]  # the member's own words


def test_node_pools_with_their_usage(system: ElasticSystem) -> None:
    body = system.api.get(f"/api/v1/clusters/{CLUSTER}/nodepools")
    assert names(body) == ["burst", "cloud", "spot"]  # the member's order: by name
    assert body["metadata"]["continue"] is None
    pools = {item["name"]: item for item in body["items"]}
    cloud = pools["cloud"]
    assert {k: cloud[k] for k in ("priority", "min", "max", "provider", "nodes", "creating")} == {
        "priority": 10,
        "min": 0,
        "max": 4,
        "provider": "kwok",
        "nodes": 3,
        "creating": 1,
    }
    assert cloud["nodeCapacity"] == {"cpu": "2", "memory": "4Gi", "pods": "20"}
    conditions = {c["type"]: c for c in cloud["conditions"]}
    assert conditions["AtMax"]["status"] == "True"  # 3 nodes + 1 on its way, of 4
    assert conditions["ProviderReady"]["status"] == "True"
    burst = {c["type"]: c for c in pools["burst"]["conditions"]}["ProviderReady"]
    assert (burst["status"], burst["reason"]) == ("False", "BackingOff")
    assert "exit 3: quota exceeded" in burst["message"]
    assert pools["burst"]["provider"] == "command"
    assert pools["burst"]["createdAt"] is not None


def test_resource_policies_in_every_namespace_or_one(system: ElasticSystem) -> None:
    body = system.api.get(f"/api/v1/clusters/{CLUSTER}/resourcepolicies")
    assert [(i["namespace"], i["name"]) for i in body["items"]] == [
        ("lab", "batch"),
        ("shop", "web"),
    ]
    web = body["items"][1]
    assert web["units"] == [
        {"name": "local", "max": 4, "pods": 4},
        {"name": "cloud", "max": 4, "pods": 4},
        {"name": "virtual", "max": None, "pods": 2},
    ]
    assert (web["waiting"], web["outside"], web["groups"]) == (0, 0, 1)
    assert web["observedGeneration"] == web["generation"] == 1
    assert {c["type"]: c["status"] for c in web["conditions"]}["Accepted"] == "True"
    shop = system.api.get(f"/api/v1/clusters/{CLUSTER}/resourcepolicies?namespace=shop")
    assert [(i["namespace"], i["name"]) for i in shop["items"]] == [("shop", "web")]
    empty = system.api.get(f"/api/v1/clusters/{CLUSTER}/resourcepolicies?namespace=nowhere")
    assert empty == {"items": [], "metadata": {"continue": None}}


def test_pages_are_the_members_passed_through_and_bound_to_their_query(
    system: ElasticSystem,
) -> None:
    base = f"/api/v1/clusters/{CLUSTER}/nodepools"
    first = system.api.get(base + "?limit=2")
    assert names(first) == ["burst", "cloud"]
    token = first["metadata"]["continue"]
    assert token
    assert first["metadata"]["remainingItemCount"] == 1
    second = system.api.get(f"{base}?limit=2&continue={token}")
    assert names(second) == ["spot"]
    assert second["metadata"]["continue"] is None
    # The token is ours, bound to its query (the limit may change from page to page):
    # another path, other parameters or a mangled token are refused before anything reaches
    # the member.
    last = system.api.get(f"{base}?limit=5&continue={token}")
    assert names(last) == ["spot"]
    for other in (
        f"/api/v1/clusters/{CLUSTER}/resourcepolicies?limit=2&continue={token}",
        f"{base}?limit=2&continue={token[:-2]}",
    ):
        status, body, _ = system.api.call("GET", other)
        assert (status, body["reason"]) == (400, "bad_continue"), other
    policies = f"/api/v1/clusters/{CLUSTER}/resourcepolicies"
    page = system.api.get(policies + "?limit=1")
    status, body, _ = system.api.call(
        "GET", f"{policies}?limit=1&namespace=shop&continue={page['metadata']['continue']}"
    )
    assert (status, body["reason"]) == (400, "bad_continue")


def test_the_members_rbac_decides_what_a_viewer_sees(system: ElasticSystem, viewer: str) -> None:
    path = f"/api/v1/clusters/{CLUSTER}/nodepools"
    status, body, _ = system.api.call("GET", path, token=viewer)
    # The member binds edgefleet:viewer to `view`, which does not cover custom resources.
    assert (status, body["reason"]) == (403, "member_forbidden"), body
    assert 'User "edgefleet:viewer" cannot list resource "nodepools"' in body["detail"]
    status, body, _ = system.api.call("GET", path, token=system.server.admin_token)
    assert status == 200, body  # the admin is cluster-admin there: not the agent's rights
    system.member.direct("apply", "-f", "-", stdin=VIEWER_GRANT)
    try:
        granted = eventually(
            lambda: system.api.call("GET", path, token=viewer),
            lambda answer: answer[0] == 200,
            what="the viewer's list once the member grants it",
            within=30.0,
            every=0.2,
        )
        assert names(granted[1]) == ["burst", "cloud", "spot"]
    finally:
        system.member.direct("delete", "-f", "-", stdin=VIEWER_GRANT)


def test_an_offline_cluster_is_a_503_until_its_agent_is_back(system: ElasticSystem) -> None:
    path = f"/api/v1/clusters/{CLUSTER}/resourcepolicies"
    agent = system.member.agent
    agent.stop()
    try:
        status, body, _ = eventually(
            lambda: system.api.call("GET", path),
            lambda answer: answer[0] != 200,
            what="the cluster seen offline",
            within=30.0,
            every=0.1,
        )
        assert (status, body["reason"]) == (503, "cluster_offline"), body
        assert f"cluster {CLUSTER} is offline" in body["detail"]
    finally:
        agent.start()
        agent.wait_connected()
    back = eventually(
        lambda: system.api.call("GET", path),
        lambda answer: answer[0] == 200,
        what="the cluster back online",
        within=30.0,
        every=0.1,
    )
    assert len(back[1]["items"]) == 2


def test_a_cluster_whose_agent_offers_no_api_server_has_nothing_to_show(
    system: ElasticSystem, tmp_path: Path
) -> None:
    plain = ClusterAgent(name="plain", workdir=tmp_path, server=system.server, serve_cluster=False)
    plain.join()
    plain.start()
    try:
        plain.wait_connected()
        status, body, _ = system.api.call("GET", "/api/v1/clusters/plain/nodepools")
        assert (status, body["reason"]) == (404, "apiserver_not_served"), body
        assert "[cluster] section" in body["detail"]
    finally:
        plain.stop()


# ---------------------------------------------------------------- CLI


def cli(
    system: ElasticSystem, *args: str, token: str | None = None
) -> subprocess.CompletedProcess[str]:
    server = system.server
    return subprocess.run(
        [
            str(BIN / "tunnel-server"),
            *args,
            "--server",
            server.url,
            "--token",
            token or server.admin_token,
            "--ca-file",
            str(server.data_dir / "ca.crt"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def test_cli_get_nodepools_and_resourcepolicies(system: ElasticSystem, viewer: str) -> None:
    done = cli(system, "get", "nodepools", "--cluster", CLUSTER)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert lines[0].split() == [
        "NAME", "PRIORITY", "MIN", "MAX", "NODES", "CREATING", "PROVIDER", "PROVIDER-READY", "AGE",
    ]  # fmt: skip
    rows = {line.split()[0]: line.split() for line in lines[1:]}
    assert rows["cloud"][:8] == ["cloud", "10", "0", "4", "3", "1", "kwok", "True"]
    assert rows["burst"][:8] == ["burst", "5", "1", "10", "1", "0", "command", "False"]
    assert set(rows) == set(POOLS)

    done = cli(system, "get", "rp", "--cluster", CLUSTER, "-n", "shop")
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[1].split()[:5] == [
        "shop", "web", "local=4/4,cloud=4/4,virtual=2", "0", "True",
    ]  # fmt: skip
    assert len(done.stdout.splitlines()) == 2

    done = cli(system, "get", "nodepools", "cloud", "--cluster", CLUSTER, "-o", "json")
    assert done.returncode == 0, done.stderr
    assert [item["name"] for item in json.loads(done.stdout)["items"]] == ["cloud"]

    # What the member refuses is the CLI's exit 4, with the member's words.
    done = cli(system, "get", "nodepools", "--cluster", CLUSTER, token=viewer)
    assert done.returncode == 4, done.stderr
    assert "member_forbidden" in done.stderr
    assert "edgefleet:viewer" in done.stderr
    done = cli(system, "get", "nodepools", "--cluster", "nowhere")
    assert done.returncode == 5, done.stderr
    assert "cluster_not_found" in done.stderr
    done = cli(system, "get", "nodepools")
    assert done.returncode == 2, done.stderr
    assert "--cluster" in done.stderr


# ---------------------------------------------------------------- console


@pytest.fixture
def page(browser: Browser, system: ElasticSystem) -> Iterator[Page]:
    # A fetch the agent's going away races (503) is shown in the page, and logged by Chromium.
    with console_page(
        browser, base_url=system.server.url, height=900, ignored=lambda e: "status of 503" in e
    ) as opened:
        yield opened


def test_console_cluster_page_shows_pools_and_policies_live(
    page: Page, system: ElasticSystem, shots: Path
) -> None:
    page.goto("/")
    page.fill("#token", system.server.admin_token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live")
    page.goto(f"/#/clusters/{CLUSTER}")
    expect(page.locator("#cluster h1")).to_have_text(CLUSTER)
    cloud = page.locator('#nodepools tr[data-pool="cloud"]')
    expect(cloud.locator('td[data-label="Nodes"]')).to_have_text("3 / 4", timeout=LIVE)
    expect(cloud.locator('td[data-label="Priority"]')).to_have_text("10")
    expect(cloud.locator('td[data-label="Provider"]')).to_have_text("kwok")
    expect(page.locator("#nodepools tbody tr")).to_have_count(3)
    burst = page.locator('#nodepools tr[data-pool="burst"] [data-condition="ProviderReady"]')
    expect(burst).to_have_attribute("data-status", "False")
    expect(burst).to_have_attribute(
        "title", "BackingOff: exit 3: quota exceeded; next try 2027-01-15T08:00:30Z"
    )
    web = page.locator('#policies tr[data-policy="shop/web"]')
    expect(web.locator('[data-unit="local"]')).to_have_text("local 4 / 4")
    expect(web.locator('[data-unit="virtual"]')).to_have_text("virtual 2")
    expect(web.locator('td[data-label="Pods per unit"]')).to_have_text(
        "local 4 / 4 · cloud 4 / 4 · virtual 2"
    )
    expect(page.locator("#policies tbody tr")).to_have_count(2)
    page.screenshot(path=shots / "cluster-elastic.png", full_page=True)

    # The agent reports a new node in the pool: the page follows without a reload.
    page.evaluate("window.__marker = 'same page'")
    write_status(system.member, "nodepool/cloud", pool_status("cloud", nodes=4))
    expect(cloud.locator('td[data-label="Nodes"]')).to_have_text("4 / 4", timeout=LIVE)
    assert page.evaluate("window.__marker") == "same page", "updated live, without a reload"

    # The agent goes away: the sections say the cluster is not connected, and come back.
    system.member.agent.stop()
    try:
        expect(page.locator('#cluster-nodepools [data-reason="cluster_offline"]')).to_be_visible(
            timeout=LIVE
        )
    finally:
        system.member.agent.start()
        system.member.agent.wait_connected()
    expect(cloud.locator('td[data-label="Nodes"]')).to_have_text("4 / 4", timeout=LIVE)
    assert page.evaluate("window.__marker") == "same page"
    write_status(system.member, "nodepool/cloud", pool_status("cloud"))  # as the others expect


def test_console_shows_the_members_refusal_to_a_viewer(
    browser: Browser, system: ElasticSystem, viewer: str
) -> None:
    with console_page(
        browser, base_url=system.server.url, height=900, ignored=lambda e: "status of 403" in e
    ) as page:
        page.goto("/")
        page.fill("#token", viewer)
        page.click("#signin-button")
        expect(page.locator("#live")).to_have_text("live")
        page.goto(f"/#/clusters/{CLUSTER}")
        problem = page.locator("#elastic-nodepools-problem")
        expect(problem).to_have_attribute("data-reason", "member_forbidden", timeout=LIVE)
        expect(problem).to_contain_text('cannot list resource "nodepools"')
