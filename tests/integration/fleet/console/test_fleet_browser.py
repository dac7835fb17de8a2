"""The console's Fleet pages in headless Chromium, against a real ``tunnel-server``.

Fleet objects are made through the REST API as an operator would (PUT documents) and given
statuses as the hub would (PUT …/status as admin). Each page must show what the API holds:
managed clusters with their labels, conditions, taints, claims and acceptance; a placement's
decisions by group and, for every cluster not chosen, the reason; a workset's rollout phase and
progress, per cluster and per resource with status feedback. The checks compare the page with
the API's documents at that moment (the hub controller, when it runs in the server, rewrites
statuses from what it sees; the page must follow whatever is stored), and a status that changes
while a page is open shows without a reload. Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness.daemons import Server
from tests.harness.waiting import eventually
from tests.integration.console.conftest import WAIT, Api, console_page

MS = WAIT * 1000
API = "fleet.edgefleet.io/v1alpha1"
T0 = "2026-12-03T20:00:00Z"
NONE = "\u2013"
"""What the console shows for a value that is not there."""


def resource_id(meta: dict[str, Any]) -> str:
    """How the console names a resource: ``Deployment default/web``."""
    kind = meta.get("kind") or meta.get("resource") or "?"
    namespace = meta.get("namespace")
    return f"{kind} {namespace + '/' if namespace else ''}{meta.get('name') or ''}"


def condition(kind: str, status: str, reason: str, message: str = "") -> dict[str, Any]:
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": T0,
        "observedGeneration": 1,
    }


@pytest.fixture(scope="module")
def fleet_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    server = Server(workdir=tmp_path_factory.mktemp("fleet-console"))
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="module")
def api(fleet_server: Server) -> Api:
    return Api(server=fleet_server, token=fleet_server.admin_token)


def put(api: Api, plural: str, document: dict[str, Any]) -> None:
    name = document["metadata"]["name"]
    status, body, _ = api.call(
        "PUT", f"/api/v1/fleet/{plural}/{name}", body=json.dumps(document).encode()
    )
    assert status in (200, 201), body


def put_status(api: Api, plural: str, name: str, status_doc: dict[str, Any]) -> None:
    status, body, _ = api.call(
        "PUT",
        f"/api/v1/fleet/{plural}/{name}/status",
        body=json.dumps({"status": status_doc}).encode(),
    )
    assert status == 200, body


def doc(kind: str, name: str, spec: dict[str, Any], **labels: str) -> dict[str, Any]:
    return {
        "apiVersion": API,
        "kind": kind,
        "metadata": {"name": name, "labels": labels},
        "spec": spec,
    }


@pytest.fixture(scope="module")
def fleet_objects(api: Api) -> Server:
    """The server, with the objects every page shows."""
    put(
        api,
        "managedclusters",
        doc("ManagedCluster", "east", {"hubAcceptsClient": True}, env="prod", region="eu"),
    )
    put(
        api,
        "managedclusters",
        doc(
            "ManagedCluster",
            "west",
            {
                "hubAcceptsClient": True,
                "taints": [
                    {
                        "key": "fleet.edgefleet.io/unreachable",
                        "effect": "NoSelect",
                        "timeAdded": T0,
                    }
                ],
            },
            env="prod",
            region="us",
        ),
    )
    put(
        api, "managedclusters", doc("ManagedCluster", "lab", {"hubAcceptsClient": False}, env="dev")
    )
    claims = [
        {"name": "kubernetes.version", "value": "v1.36.3"},
        {"name": "nodes", "value": "3"},
        {"name": "region", "value": "eu"},
    ]
    put_status(
        api,
        "managedclusters",
        "east",
        {
            "conditions": [
                condition("HubAcceptedManagedCluster", "True", "HubClusterAdminAccepted"),
                condition("ManagedClusterJoined", "True", "ManagedClusterJoined"),
                condition("Available", "True", "ManagedClusterAvailable", "lease renewed"),
            ],
            "clusterClaims": claims,
            "allocatable": {"cpu": "12", "memory": "32Gi"},
            "version": {"kubernetes": "v1.36.3"},
            "lease": {"renewTime": T0, "durationSeconds": 10},
        },
    )
    put_status(
        api,
        "managedclusters",
        "west",
        {
            "conditions": [
                condition(
                    "Available", "Unknown", "ManagedClusterLeaseUpdateStopped", "no lease in 50 s"
                )
            ]
        },
    )
    put(api, "placements", doc("Placement", "web", {"numberOfClusters": 1}))
    put_status(
        api,
        "placements",
        "web",
        {
            "numberOfSelectedClusters": 1,
            "decisions": [
                {"clusterName": "east", "score": 100, "groupIndex": 0, "groupName": "canary"}
            ],
            "decisionGroups": [
                {"decisionGroupIndex": 0, "decisionGroupName": "canary", "clusters": ["east"]}
            ],
            "notSelected": [
                {
                    "clusterName": "west",
                    "reason": "tainted fleet.edgefleet.io/unreachable (NoSelect) and not tolerated",
                },
                {"clusterName": "lab", "reason": "hubAcceptsClient is false"},
            ],
            "conditions": [condition("PlacementSatisfied", "True", "AllDecisionsScheduled")],
        },
    )
    template = {
        "workload": {
            "manifests": [
                {
                    "apiVersion": "apps/v1",
                    "kind": "Deployment",
                    "metadata": {"name": "web", "namespace": "default"},
                }
            ]
        }
    }
    put(
        api,
        "worksets",
        doc(
            "WorkSet",
            "web",
            {
                "placementRefs": [{"name": "web", "rolloutStrategy": {"type": "Progressive"}}],
                "manifestWorkTemplate": template,
            },
        ),
    )
    put_status(
        api,
        "worksets",
        "web",
        {
            "summary": {"total": 2, "applied": 2, "available": 1, "degraded": 0, "progressing": 1},
            "rollout": {
                "phase": "Progressing",
                "message": "1 of 2 clusters succeeded",
                "clusters": [
                    {"cluster": "east", "status": "Succeeded", "since": T0},
                    {"cluster": "west", "status": "Progressing", "since": T0},
                ],
            },
            "conditions": [condition("ManifestworkApplied", "True", "AsExpected")],
        },
    )
    work = doc(
        "Work",
        "web.east",
        {"clusterName": "east", **template},
        **{"fleet.edgefleet.io/workset": "web", "fleet.edgefleet.io/cluster": "east"},
    )
    put(api, "works", work)
    put_status(
        api,
        "works",
        "web.east",
        {
            "conditions": [
                condition("Applied", "True", "AppliedManifestWorkComplete"),
                condition("Available", "True", "ResourcesAvailable"),
                condition("Degraded", "False", "AsExpected"),
            ],
            "resourceStatus": {
                "manifests": [
                    {
                        "resourceMeta": {
                            "ordinal": 0,
                            "group": "apps",
                            "version": "v1",
                            "kind": "Deployment",
                            "resource": "deployments",
                            "namespace": "default",
                            "name": "web",
                        },
                        "conditions": [
                            condition("Applied", "True", "AppliedManifestComplete"),
                            condition("Available", "True", "ResourceAvailable"),
                        ],
                        "statusFeedback": {
                            "values": [
                                {
                                    "name": "readyReplicas",
                                    "fieldValue": {"type": "Integer", "integer": 3},
                                },
                                {
                                    "name": "replicas",
                                    "fieldValue": {"type": "Integer", "integer": 3},
                                },
                            ]
                        },
                    }
                ]
            },
        },
    )
    return api.server


@pytest.fixture
def page(browser: Browser, fleet_objects: Server) -> Iterator[Page]:
    with console_page(
        browser, base_url=fleet_objects.url, height=1000, ignored=lambda _e: False
    ) as opened:
        opened.goto("/")
        opened.fill("#token", fleet_objects.admin_token)
        opened.click("#signin-button")
        expect(opened.locator("#live")).to_have_text("live", timeout=MS)
        yield opened


def fleet_get(api: Api, path: str) -> dict[str, Any]:
    status, body, _ = api.call("GET", "/api/v1/fleet/" + path)
    assert status == 200, (path, body)
    return body


def condition_of(document: dict[str, Any], kind: str) -> str:
    for entry in document.get("status", {}).get("conditions", []):
        if entry.get("type") == kind:
            return str(entry.get("status"))
    return NONE


def page_matches_api(
    page: Page, script: str, selector: str, expected: Callable[[], object], what: str
) -> None:
    """Wait until the page's rows (``script`` over ``selector``) equal what the API holds."""

    def both() -> tuple[object, object]:
        return page.eval_on_selector_all(selector, script), expected()

    eventually(both, lambda pair: pair[0] == pair[1], what=what, within=WAIT, every=0.2)


CLUSTER_ROWS = """rows => rows.map((r) => ({
  name: r.dataset.fleetName,
  accepted: r.querySelector('td[data-label="Accepted"] [data-value]').dataset.value,
  available: r.querySelector('[data-condition="Available"]').dataset.value,
  taints: [...r.querySelectorAll('[data-taint]')].map((t) => t.dataset.taint),
  labels: [...r.querySelectorAll('[data-label-key]')].map((l) => l.textContent),
}))"""


def cluster_rows(api: Api) -> list[dict[str, Any]]:
    return [
        {
            "name": c["metadata"]["name"],
            "accepted": "true" if c["spec"].get("hubAcceptsClient") is True else "false",
            "available": condition_of(c, "Available"),
            "taints": [t["key"] for t in c["spec"].get("taints") or []],
            "labels": [f"{k}={v}" for k, v in sorted((c["metadata"].get("labels") or {}).items())],
        }
        for c in fleet_get(api, "managedclusters")["items"]
    ]


def test_managed_clusters(page: Page, api: Api, shots: Path) -> None:
    page.click('#nav a[href="#/fleet"]')
    expect(page.locator('#managedclusters tr[data-fleet-name="lab"]')).to_be_visible(timeout=MS)
    page_matches_api(
        page,
        CLUSTER_ROWS,
        "#managedclusters tr[data-fleet-name]",
        lambda: cluster_rows(api),
        "the managed clusters page showing what the API holds",
    )
    page.screenshot(path=shots / "fleet-clusters.png", full_page=True)

    # Live: a new status of west shows without a reload.
    available = condition("Available", "False", "ManagedClusterAPIServerUnhealthy")
    put_status(api, "managedclusters", "west", {"conditions": [available]})
    page_matches_api(
        page,
        CLUSTER_ROWS,
        "#managedclusters tr[data-fleet-name]",
        lambda: cluster_rows(api),
        "the managed clusters page following a status change",
    )

    page.locator('#managedclusters tr[data-fleet-name="east"] a').click()
    expect(page.locator("#fleet-cluster")).to_be_visible(timeout=MS)

    def east() -> dict[str, Any]:
        document = fleet_get(api, "managedclusters/east")
        status = document.get("status", {})
        return {
            "conditions": [[c["type"], c["status"]] for c in status.get("conditions", [])],
            "claims": [[c["name"], c["value"]] for c in status.get("clusterClaims", [])],
        }

    page_matches_api(
        page,
        """els => els.map((box) => ({
          conditions: [...box.querySelectorAll('#cluster-conditions tr[data-condition]')].map(
            (r) => [r.dataset.condition, r.querySelector('[data-value]').dataset.value]),
          claims: [...box.querySelectorAll('#cluster-claims tr[data-claim]')].map(
            (r) => [r.dataset.claim, r.querySelector('td[data-label="Value"]').textContent]),
        }))[0]""",
        "#fleet-cluster",
        east,
        "east's page showing its conditions and claims",
    )
    page.screenshot(path=shots / "fleet-cluster-east.png", full_page=True)

    # The double opt-in on the page, as `clusters accept` (an admin).
    page.goto("/#/fleet/managedclusters/lab")
    page.locator("#fleet-accept").click()
    expect(page.locator("#fleet-result")).to_contain_text("Accepted", timeout=MS)
    expect(page.locator("#fleet-deny")).to_be_visible(timeout=MS)
    assert fleet_get(api, "managedclusters/lab")["spec"]["hubAcceptsClient"] is True


def test_placement_decisions_and_reasons(page: Page, api: Api, shots: Path) -> None:
    page.goto("/#/fleet/placements")
    expect(page.locator('#placements tr[data-fleet-name="web"]')).to_be_visible(timeout=MS)
    page.locator('#placements tr[data-fleet-name="web"] a').click()
    expect(page.locator("#fleet-placement")).to_be_visible(timeout=MS)

    def placement() -> dict[str, Any]:
        status = fleet_get(api, "placements/web").get("status", {})
        return {
            "groups": [[g["decisionGroupIndex"], g["clusters"]] for g in status["decisionGroups"]],
            "notSelected": [[n["clusterName"], n["reason"]] for n in status["notSelected"]],
        }

    page_matches_api(
        page,
        """els => els.map((box) => ({
          groups: [...box.querySelectorAll('.group')].map((g) => [Number(g.dataset.group),
            [...g.querySelectorAll('tr[data-cluster]')].map((r) => r.dataset.cluster)]),
          notSelected: [...box.querySelectorAll('#not-selected tr[data-cluster]')].map(
            (r) => [r.dataset.cluster, r.querySelector('td[data-label="Reason"]').textContent]),
        }))[0]""",
        "#fleet-placement",
        placement,
        "the placement's page showing its decision groups and every reason",
    )
    # Every known cluster is either chosen or listed with its reason.
    shown = placement()
    chosen = {name for _, names in shown["groups"] for name in names}
    assert chosen | {name for name, _ in shown["notSelected"]} == {"east", "west", "lab"}
    page.screenshot(path=shots / "fleet-placement-web.png", full_page=True)


WORKSET_PAGE = """els => els.map((box) => ({
  phase: box.querySelector('.head [data-phase]').dataset.phase,
  clusters: [...box.querySelectorAll('#workset-clusters tr[data-cluster]')].map(
    (r) => [r.dataset.cluster, r.querySelector('[data-rollout]').dataset.rollout]),
  resources: [...box.querySelectorAll('#workset-resources tr[data-resource]')].map(
    (r) => [r.dataset.cluster, r.dataset.resource,
            r.querySelector('td[data-label="Status feedback"]').textContent]),
}))[0]"""


def workset_page(api: Api) -> dict[str, Any]:
    rollout = fleet_get(api, "worksets/web").get("status", {}).get("rollout", {})
    works = fleet_get(api, "works?labelSelector=fleet.edgefleet.io/workset=web")["items"]
    clusters = [[c["cluster"], c["status"]] for c in rollout.get("clusters", [])]
    for work in works:
        if work["spec"]["clusterName"] not in {name for name, _ in clusters}:
            clusters.append([work["spec"]["clusterName"], ""])
    resources = []
    for work in works:
        manifests = work.get("status", {}).get("resourceStatus", {}).get("manifests", [])
        for manifest in manifests:
            meta = manifest["resourceMeta"]
            values = manifest.get("statusFeedback", {}).get("values", [])
            feedback = ", ".join(
                f"{v['name']}={next(iter(x for k, x in v['fieldValue'].items() if k != 'type'))}"
                for v in values
            )
            resources.append(
                [
                    work["spec"]["clusterName"],
                    resource_id(meta),
                    feedback or NONE,
                ]
            )
    return {"phase": rollout.get("phase", ""), "clusters": clusters, "resources": resources}


def test_workset_rollout_and_resources(page: Page, api: Api, shots: Path) -> None:
    page.goto("/#/fleet/worksets")
    row = page.locator('#worksets tr[data-fleet-name="web"]')
    expect(row).to_be_visible(timeout=MS)
    rollout = fleet_get(api, "worksets/web")["status"]["rollout"]
    succeeded = [c for c in rollout["clusters"] if c["status"] == "Succeeded"]
    expect(row).to_have_attribute("data-phase", rollout["phase"], timeout=MS)
    expect(row.locator(".progress")).to_have_attribute("data-done", str(len(succeeded)))
    row.locator("a").click()
    expect(page.locator("#fleet-workset")).to_be_visible(timeout=MS)
    page_matches_api(
        page,
        WORKSET_PAGE,
        "#fleet-workset",
        lambda: workset_page(api),
        "the workset's page showing its rollout, clusters and resources with feedback",
    )
    page.screenshot(path=shots / "fleet-workset-web.png", full_page=True)

    # Live: the rollout finishes while the page is open.
    put_status(
        api,
        "worksets",
        "web",
        {
            "summary": {"total": 2, "applied": 2, "available": 2, "degraded": 0, "progressing": 0},
            "rollout": {
                "phase": "Succeeded",
                "message": "",
                "clusters": [
                    {"cluster": "east", "status": "Succeeded", "since": T0},
                    {"cluster": "west", "status": "Succeeded", "since": T0},
                ],
            },
        },
    )
    page_matches_api(
        page,
        WORKSET_PAGE,
        "#fleet-workset",
        lambda: workset_page(api),
        "the workset's page following its rollout",
    )
    page.screenshot(path=shots / "fleet-workset-web-done.png", full_page=True)


ROUTE_SPEC = {
    "hostnames": ["shop.example.com"],
    "rules": [
        {
            "matches": [{"headers": [{"name": "X-Canary", "value": "1"}]}],
            "backendRefs": [{"cluster": "west", "namespace": "shop", "name": "web", "port": 80}],
        },
        {
            "backendRefs": [
                {"cluster": "east", "namespace": "shop", "name": "web", "port": 80, "weight": 90},
                {"cluster": "west", "namespace": "shop", "name": "web", "port": 80, "weight": 10},
            ]
        },
    ],
}
ROUTE_BACKENDS = """els => els.map((box) => [
  ...box.querySelectorAll('#route-backends tr[data-backend]')].map((r) => [
    r.dataset.backend, r.querySelector('[data-state]').dataset.state,
    ...['Requests', 'Errors', 'p50 ms', 'p99 ms'].map(
      (label) => r.querySelector(`td[data-label="${label}"]`).textContent)]))[0]"""


def route_backends(api: Api) -> list[list[str]]:
    """What the route's page must show per backend, from the stored status."""
    return [
        [
            b["name"],
            b["state"],
            *(
                str(b[key]) if key in b else NONE
                for key in ("requests", "errors", "latencyP50Ms", "latencyP99Ms")
            ),
        ]
        for b in fleet_get(api, "multiclusterroutes/shop")["status"]["backends"]
    ]


def test_gateway_route_with_backend_health_and_figures(page: Page, api: Api, shots: Path) -> None:
    """A MultiClusterRoute (issue 16): list, then its page with health and figures per backend.

    This server runs no gateway listener, so nothing rewrites the status put here as the
    gateway's router would write it.
    """
    put(api, "multiclusterroutes", doc("MultiClusterRoute", "shop", ROUTE_SPEC))
    east, west = "east/shop/web:80", "west/shop/web:80"
    put_status(
        api,
        "multiclusterroutes",
        "shop",
        {
            "observedGeneration": 1,
            "conditions": [
                condition("Accepted", "True", "Accepted", "the gateway serves this route"),
                condition("ResolvedRefs", "True", "ResolvedRefs", "every backend names a cluster"),
            ],
            "backends": [
                {"name": east, "state": "Healthy", "health": "healthy", "requests": 1800,
                 "errors": 2, "latencyP50Ms": 1.4, "latencyP99Ms": 9.5},
                {"name": west, "state": "Unhealthy", "health": "unhealthy: Unreachable",
                 "reasons": ["Unreachable"], "requests": 200, "errors": 7},
            ],
        },
    )  # fmt: skip
    page.goto("/#/fleet/multiclusterroutes")
    row = page.locator('#multiclusterroutes tr[data-fleet-name="shop"]')
    expect(row).to_be_visible(timeout=MS)
    expect(row.locator('td[data-label="Healthy backends"]')).to_have_attribute("data-healthy", "1")
    expect(row.locator('td[data-label="Requests"]')).to_have_text("2000")
    expect(row.locator('td[data-label="Errors"]')).to_have_text("9")
    expect(row.locator('[data-condition="Accepted"]')).to_have_attribute("data-value", "True")
    row.locator("a").click()
    expect(page.locator("#fleet-route")).to_be_visible(timeout=MS)
    page_matches_api(
        page, ROUTE_BACKENDS, "#fleet-route", lambda: route_backends(api),
        "the route's page showing each backend's health and figures",
    )  # fmt: skip
    why = page.locator(f'#route-backends tr[data-backend="{west}"] td[data-label="Why"]')
    expect(why).to_have_text("unhealthy: Unreachable")
    rules = page.locator("#route-rules tr[data-rule]")
    expect(rules).to_have_count(2)
    expect(rules.nth(0)).to_contain_text("header X-Canary = 1")
    expect(rules.nth(1)).to_contain_text(f"{east} (90), {west} (10)")
    page.screenshot(path=shots / "fleet-route-shop.png", full_page=True)

    # Live: the unreachable cluster comes back while the page is open.
    put_status(
        api,
        "multiclusterroutes",
        "shop",
        {
            "observedGeneration": 1,
            "conditions": [
                condition("Accepted", "True", "Accepted", "the gateway serves this route"),
                condition("ResolvedRefs", "True", "ResolvedRefs", "every backend names a cluster"),
            ],
            "backends": [
                {"name": east, "state": "Healthy", "health": "healthy", "requests": 1900},
                {"name": west, "state": "Healthy", "health": "healthy", "requests": 230},
            ],
        },
    )
    page_matches_api(
        page, ROUTE_BACKENDS, "#fleet-route", lambda: route_backends(api),
        "the route's page following its backends' recovery",
    )  # fmt: skip
