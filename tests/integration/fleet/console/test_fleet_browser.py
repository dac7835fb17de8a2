"""The console's Fleet pages in headless Chromium, against a real ``tunnel-server``.

Fleet objects are made through the REST API as an operator would (PUT documents) and their
statuses are set as the hub would (PUT …/status as admin: the hub controller is another part,
tested on its own). Each page shows them: managed clusters with their labels, conditions,
taints, claims and acceptance; a placement's decisions by group and, for every cluster not
chosen, the reason; a workset's rollout phase and progress, per cluster and per resource with
status feedback. A status that changes while a page is open shows without a reload.
Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, expect

from tests.harness.daemons import Server
from tests.integration.console.conftest import WAIT, Api, console_page

MS = WAIT * 1000
API = "fleet.edgefleet.io/v1alpha1"
T0 = "2026-12-03T20:00:00Z"


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


def test_managed_clusters(page: Page, api: Api, shots: Path) -> None:
    page.click('#nav a[href="#/fleet"]')
    table = page.locator("#managedclusters")
    east = table.locator('tr[data-fleet-name="east"]')
    expect(east).to_contain_text("accepted", timeout=MS)
    expect(east.locator('[data-condition="Available"]')).to_have_attribute("data-value", "True")
    expect(east).to_contain_text("region=eu")
    expect(east).to_contain_text("nodes=3")
    west = table.locator('tr[data-fleet-name="west"]')
    expect(west.locator('[data-condition="Available"]')).to_have_attribute("data-value", "Unknown")
    expect(west.locator('[data-taint="fleet.edgefleet.io/unreachable"]')).to_contain_text(
        "NoSelect"
    )
    lab = table.locator('tr[data-fleet-name="lab"]')
    expect(lab).to_contain_text("not accepted")
    page.screenshot(path=shots / "fleet-clusters.png", full_page=True)

    # Live: the hub marks west available again; the open page follows without a reload.
    put_status(
        api,
        "managedclusters",
        "west",
        {"conditions": [condition("Available", "True", "ManagedClusterAvailable")]},
    )
    expect(west.locator('[data-condition="Available"]')).to_have_attribute(
        "data-value", "True", timeout=MS
    )

    east.locator("a").click()
    detail = page.locator("#fleet-cluster")
    expect(
        detail.locator('#cluster-conditions tr[data-condition="ManagedClusterJoined"]')
    ).to_contain_text("True", timeout=MS)
    expect(detail.locator('#cluster-claims tr[data-claim="kubernetes.version"]')).to_contain_text(
        "v1.36.3"
    )
    expect(detail.locator('[data-fact="Allocatable"]')).to_contain_text("cpu 12")
    page.screenshot(path=shots / "fleet-cluster-east.png", full_page=True)

    # The double opt-in on the page, as `clusters accept` (an admin).
    page.goto("/#/fleet/managedclusters/lab")
    page.locator("#fleet-accept").click()
    expect(page.locator("#fleet-result")).to_contain_text("Accepted", timeout=MS)
    expect(page.locator("#fleet-deny")).to_be_visible(timeout=MS)
    status, stored, _ = api.call("GET", "/api/v1/fleet/managedclusters/lab")
    assert status == 200, stored
    assert stored["spec"]["hubAcceptsClient"] is True


def test_placement_decisions_and_reasons(page: Page, shots: Path) -> None:
    page.goto("/#/fleet/placements")
    row = page.locator('#placements tr[data-fleet-name="web"]')
    expect(row.locator('[data-condition="PlacementSatisfied"]')).to_have_attribute(
        "data-value", "True", timeout=MS
    )
    expect(row).to_contain_text("east")
    row.locator("a").click()
    detail = page.locator("#fleet-placement")
    group = detail.locator('.group[data-group="0"]')
    expect(group).to_contain_text("canary", timeout=MS)
    expect(group.locator('tr[data-cluster="east"]')).to_contain_text("100")
    not_selected = detail.locator("#not-selected")
    expect(not_selected.locator('tr[data-cluster="west"]')).to_contain_text("not tolerated")
    expect(not_selected.locator('tr[data-cluster="lab"]')).to_contain_text(
        "hubAcceptsClient is false"
    )
    page.screenshot(path=shots / "fleet-placement-web.png", full_page=True)


def test_workset_rollout_and_resources(page: Page, api: Api, shots: Path) -> None:
    page.goto("/#/fleet/worksets")
    row = page.locator('#worksets tr[data-fleet-name="web"]')
    expect(row).to_have_attribute("data-phase", "Progressing", timeout=MS)
    expect(row.locator(".progress")).to_have_attribute("data-done", "1")
    expect(row.locator(".progress")).to_have_attribute("data-total", "2")
    row.locator("a").click()
    detail = page.locator("#fleet-workset")
    east = detail.locator('#workset-clusters tr[data-cluster="east"]')
    expect(east.locator("[data-rollout]")).to_have_attribute(
        "data-rollout", "Succeeded", timeout=MS
    )
    expect(east.locator('[data-condition="Available"]')).to_have_attribute("data-value", "True")
    west = detail.locator('#workset-clusters tr[data-cluster="west"]')
    expect(west.locator("[data-rollout]")).to_have_attribute("data-rollout", "Progressing")
    resource = detail.locator('#workset-resources tr[data-resource="Deployment default/web"]')
    expect(resource).to_contain_text("readyReplicas=3")
    expect(resource).to_contain_text("replicas=3")
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
    expect(detail.locator('.head [data-phase="Succeeded"]')).to_be_visible(timeout=MS)
    expect(west.locator("[data-rollout]")).to_have_attribute("data-rollout", "Succeeded")
    page.screenshot(path=shots / "fleet-workset-web-done.png", full_page=True)
