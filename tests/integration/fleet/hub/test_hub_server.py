"""The hub controller inside a real ``tunnel-server``: registration, placement, worksets over REST.

Clusters join for real (``edge-agent join`` with ``--kind cluster`` tokens); an agent process
that serves no API server holds a live tunnel session for the cut-off. ManagedClusters made by
the admin through the API stand in for clusters whose agents never renew a lease (they are
``unreachable`` from the start, which the tolerations tests need); Work statuses are written
through the admin's ``PUT .../status``, playing the agent.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import BIN, Server
from tests.harness.waiting import eventually
from tests.integration.clusters.members import ClusterAgent
from tests.integration.users.conftest import Answer, call

API = "fleet.edgefleet.io/v1alpha1"
UNREACHABLE = "fleet.edgefleet.io/unreachable"
WAIT = 30.0


@dataclass(kw_only=True)
class Hub:
    server: Server
    workdir: Path

    def call(self, method: str, path: str, body: object = None, *, patch: bool = False) -> Answer:
        headers = {"Content-Type": "application/merge-patch+json"} if patch else None
        data = None if body is None else json.dumps(body).encode()
        return call(
            self.server, method, path, token=self.server.admin_token, body=data, headers=headers
        )

    def put(self, kind: str, name: str, spec: dict[str, Any], **labels: str) -> Answer:
        plural = kind.lower() + "s"
        document = {
            "apiVersion": API,
            "kind": kind,
            "metadata": {"name": name, "labels": labels},
            "spec": spec,
        }
        answer = self.call("PUT", f"/api/v1/fleet/{plural}/{name}", document)
        assert answer.status in (200, 201), answer
        return answer

    def put_status(self, kind: str, name: str, status: dict[str, Any]) -> None:
        plural = kind.lower() + "s"
        document = {"apiVersion": API, "kind": kind, "metadata": {"name": name}, "status": status}
        answer = self.call("PUT", f"/api/v1/fleet/{plural}/{name}/status", document)
        assert answer.status == 200, answer

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        answer = self.call("GET", f"/api/v1/fleet/{kind.lower()}s/{name}")
        if answer.status == 404:
            return None
        assert answer.status == 200, answer
        return answer.body

    def names(self, kind: str) -> list[str]:
        answer = self.call("GET", f"/api/v1/fleet/{kind.lower()}s")
        assert answer.status == 200, answer
        return sorted(item["metadata"]["name"] for item in answer.body["items"])

    def record_state(self, name: str) -> str | None:
        answer = self.call("GET", f"/api/v1/clusters/{name}")
        return answer.body.get("state") if answer.status == 200 else None

    def join(self, name: str, token: str) -> subprocess.CompletedProcess[str]:
        """``edge-agent join`` that does not wait for approval (exit 7: still pending)."""
        return subprocess.run(
            [
                str(BIN / "edge-agent"),
                "join",
                "--server",
                self.server.url,
                "--token",
                token,
                "--ca-hash",
                self.server.ca_hash,
                "--name",
                name,
                "--data-dir",
                str(self.workdir / f"agent-{name}"),
                "--wait-approval",
                "0",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )

    def token(self, name: str, *, approval: bool) -> str:
        extra = ("--require-approval",) if approval else ()
        return self.server.cli(
            "token", "create", "--kind", "cluster", "--name", name, *extra
        ).strip()


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    workdir = tmp_path_factory.mktemp("hub")
    server = Server(workdir=workdir)
    server.start()
    try:
        yield Hub(server=server, workdir=workdir)
    finally:
        server.stop()


def _condition(document: dict[str, Any] | None, type_: str) -> dict[str, Any] | None:
    if document is None:
        return None
    for condition in document.get("status", {}).get("conditions", []):
        if condition["type"] == type_:
            return dict(condition)
    return None


def _status_of(hub: Hub, kind: str, name: str, type_: str) -> str | None:
    condition = _condition(hub.get(kind, name), type_)
    return None if condition is None else str(condition["status"])


# ---------------------------------------------------------------- registration


def test_double_opt_in_a_cluster_joined_with_an_approval_token_waits_for_hub_accepts_client(
    hub: Hub,
) -> None:
    token = hub.token("optin", approval=True)
    waiting = hub.join("optin", token)
    assert waiting.returncode == 7, waiting.stderr  # pending: resumable
    cluster = eventually(
        lambda: hub.get("ManagedCluster", "optin"),
        lambda doc: doc is not None and _condition(doc, "HubAcceptedManagedCluster") is not None,
        what="the hub makes a ManagedCluster for the joined cluster",
        within=WAIT,
    )
    assert cluster is not None
    assert cluster["spec"]["hubAcceptsClient"] is False
    assert _condition(cluster, "HubAcceptedManagedCluster")["status"] == "False"  # type: ignore[index]
    assert hub.record_state("optin") == "pending"

    patched = hub.call(
        "PATCH",
        "/api/v1/fleet/managedclusters/optin",
        {"spec": {"hubAcceptsClient": True}},
        patch=True,
    )
    assert patched.status == 200, patched
    eventually(
        lambda: hub.record_state("optin"),
        lambda state: state == "approved",
        what="hubAcceptsClient true approves the join",
        within=WAIT,
    )
    done = hub.join("optin", token)
    assert done.returncode == 0, done.stderr  # the certificate is issued now
    eventually(
        lambda: _status_of(hub, "ManagedCluster", "optin", "ManagedClusterJoined"),
        lambda status: status == "True",
        what="ManagedClusterJoined True once the agent holds its certificate",
        within=WAIT,
    )


def _connected(hub: Hub, name: str) -> bool:
    answer = hub.call("GET", f"/api/v1/clusters/{name}")
    return bool(answer.status == 200 and answer.body.get("connected"))


def _live_cluster(hub: Hub, name: str) -> ClusterAgent:
    agent = ClusterAgent(name=name, workdir=hub.workdir, server=hub.server, serve_cluster=False)
    agent.join()
    agent.start()
    agent.wait_connected()
    eventually(
        lambda: _status_of(hub, "ManagedCluster", name, "HubAcceptedManagedCluster"),
        lambda status: status == "True",
        what="an approved join is an accepted ManagedCluster",
        within=WAIT,
    )
    return agent


def test_hub_accepts_client_false_cuts_an_accepted_cluster_off_at_once(hub: Hub) -> None:
    agent = _live_cluster(hub, "denied")
    try:
        assert _connected(hub, "denied")
        patched = hub.call(
            "PATCH",
            "/api/v1/fleet/managedclusters/denied",
            {"spec": {"hubAcceptsClient": False}},
            patch=True,
        )
        assert patched.status == 200, patched
        eventually(
            lambda: (hub.record_state("denied"), _connected(hub, "denied")),
            lambda seen: seen == ("revoked", False),
            what="deny revokes the cluster and closes its session",
            within=WAIT,
        )
        accepted = _condition(hub.get("ManagedCluster", "denied"), "HubAcceptedManagedCluster")
        assert accepted is not None
        assert accepted["reason"] == "HubClusterAdminDenied"
    finally:
        agent.stop()


def test_deleting_the_managed_cluster_revokes_the_cluster(hub: Hub) -> None:
    agent = _live_cluster(hub, "deleted")
    try:
        gone = hub.call("DELETE", "/api/v1/fleet/managedclusters/deleted")
        assert gone.status == 200, gone
        eventually(
            lambda: (hub.record_state("deleted"), _connected(hub, "deleted")),
            lambda seen: seen == ("revoked", False),
            what="deleting the ManagedCluster revokes the cluster and closes its session",
            within=WAIT,
        )
        assert hub.get("ManagedCluster", "deleted") is None, "not made again"
    finally:
        agent.stop()


# ---------------------------------------------------------------- placement


def _decisions(hub: Hub, placement: str) -> list[str] | None:
    document = hub.get("Placement", placement)
    if document is None or "decisions" not in document.get("status", {}):
        return None
    return [d["clusterName"] for d in document["status"]["decisions"]]


def _admin_cluster(hub: Hub, name: str, **labels: str) -> None:
    """A ManagedCluster the admin made (no agent: its lease is never renewed)."""
    hub.put("ManagedCluster", name, {"hubAcceptsClient": True}, **labels)
    eventually(
        lambda: hub.get("ManagedCluster", name),
        lambda doc: (
            doc is not None and any(t["key"] == UNREACHABLE for t in doc["spec"].get("taints", []))
        ),
        what=f"{name}: never renewed, so tainted unreachable",
        within=WAIT,
    )


TOLERATE_FOREVER = [{"key": UNREACHABLE, "operator": "Exists"}]


def test_placement_decisions_follow_labels_and_say_why_not(hub: Hub) -> None:
    _admin_cluster(hub, "pl-a", env="prod", tier="web")
    _admin_cluster(hub, "pl-b", env="prod")
    _admin_cluster(hub, "pl-c", env="dev")
    hub.put(
        "Placement",
        "prod-web",
        {
            "predicates": [
                {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"env": "prod"}}}}
            ],
            "tolerations": TOLERATE_FOREVER,
        },
    )
    decided = eventually(
        lambda: _decisions(hub, "prod-web"),
        lambda names: names is not None and {"pl-a", "pl-b"} <= set(names),
        what="the prod clusters chosen",
        within=WAIT,
    )
    assert decided is not None
    assert "pl-c" not in decided
    placement = hub.get("Placement", "prod-web")
    assert placement is not None
    reasons = {n["clusterName"]: n["reason"] for n in placement["status"]["notSelected"]}
    assert "env" in reasons["pl-c"]
    untolerated = hub.put("Placement", "strict", {"predicates": []})
    assert untolerated.status in (200, 201)
    eventually(
        lambda: hub.get("Placement", "strict"),
        lambda doc: doc is not None and "notSelected" in doc.get("status", {}),
        what="a placement without tolerations scheduled",
        within=WAIT,
    )
    strict = hub.get("Placement", "strict")
    assert strict is not None
    not_chosen = {n["clusterName"]: n["reason"] for n in strict["status"]["notSelected"]}
    assert UNREACHABLE in not_chosen["pl-a"], "a never-renewed cluster is not selectable"
    assert _condition(strict, "PlacementSatisfied")["status"] == "False"  # type: ignore[index]


def test_toleration_seconds_run_out_and_the_placement_lets_the_cluster_go(hub: Hub) -> None:
    _admin_cluster(hub, "tol-a", tolerance="yes")
    hub.put(
        "Placement",
        "tolerant",
        {
            "predicates": [
                {
                    "requiredClusterSelector": {
                        "labelSelector": {"matchLabels": {"tolerance": "yes"}}
                    }
                }
            ],
            "tolerations": [{"key": UNREACHABLE, "operator": "Exists", "tolerationSeconds": 4}],
        },
    )
    # Tainted when made; chosen while the toleration lasts (4 s from timeAdded), then not:
    # the controller wakes at the expiry (no polling), so the change comes by itself.
    cluster = hub.get("ManagedCluster", "tol-a")
    assert cluster is not None
    eventually(
        lambda: _decisions(hub, "tolerant"),
        lambda names: names == [],
        what="the toleration runs out and tol-a is let go",
        within=WAIT,
    )
    placement = hub.get("Placement", "tolerant")
    assert placement is not None
    reason = {n["clusterName"]: n["reason"] for n in placement["status"]["notSelected"]}["tol-a"]
    assert "toleration" in reason or UNREACHABLE in reason


def test_allocatable_set_by_the_admin_ranks_clusters_for_resource_prioritizers(hub: Hub) -> None:
    _admin_cluster(hub, "cpu-small", rank="cpu")
    _admin_cluster(hub, "cpu-big", rank="cpu")
    hub.put_status("ManagedCluster", "cpu-small", {"allocatable": {"cpu": "2", "memory": "4Gi"}})
    hub.put_status("ManagedCluster", "cpu-big", {"allocatable": {"cpu": "64", "memory": "4Gi"}})
    hub.put(
        "Placement",
        "biggest",
        {
            "numberOfClusters": 1,
            "predicates": [
                {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"rank": "cpu"}}}}
            ],
            "tolerations": TOLERATE_FOREVER,
            "prioritizerPolicy": {
                "mode": "Exact",
                "configurations": [
                    {
                        "scoreCoordinate": {"type": "BuiltIn", "builtIn": "ResourceAllocatableCPU"},
                        "weight": 1,
                    }
                ],
            },
        },
    )
    eventually(
        lambda: _decisions(hub, "biggest"),
        lambda names: names == ["cpu-big"],
        what="the cluster with the most allocatable CPU chosen",
        within=WAIT,
    )
    small = hub.get("ManagedCluster", "cpu-small")
    assert small is not None
    assert small["status"]["allocatable"] == {"cpu": "2", "memory": "4Gi"}, (
        "without a lease the controller keeps what was set"
    )


# ---------------------------------------------------------------- worksets


DEPLOYMENT = {
    "apiVersion": "apps/v1",
    "kind": "Deployment",
    "metadata": {"name": "web", "namespace": "default"},
    "spec": {
        "replicas": 1,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "web", "image": "nginx"}]},
        },
    },
}


def _work_status(hub: Hub, work: str, *, available: bool, degraded: bool) -> None:
    document = hub.get("Work", work)
    assert document is not None
    generation = document["metadata"]["generation"]

    def condition(kind: str, *, value: bool) -> dict[str, Any]:
        return {
            "type": kind,
            "status": "True" if value else "False",
            "reason": "Reported",
            "message": "the API server refused it: exceeded quota"
            if kind == "Degraded" and value
            else "",
            "lastTransitionTime": "2026-12-03T20:00:00Z",
            "observedGeneration": generation,
        }

    hub.put_status(
        "Work",
        work,
        {
            "conditions": [
                condition("Applied", value=True),
                condition("Available", value=available),
                condition("Degraded", value=degraded),
            ],
            "observedGeneration": generation,
        },
    )


def test_a_workset_makes_works_with_overrides_and_a_progressive_rollout_halts(hub: Hub) -> None:
    for name in ("ws-a", "ws-b", "ws-c"):
        _admin_cluster(hub, name, rollout="yes")
    hub.put(
        "Placement",
        "rollout",
        {
            "predicates": [
                {"requiredClusterSelector": {"labelSelector": {"matchLabels": {"rollout": "yes"}}}}
            ],
            "tolerations": TOLERATE_FOREVER,
        },
    )
    hub.put(
        "WorkSet",
        "shop",
        {
            "placementRefs": [
                {
                    "name": "rollout",
                    "rolloutStrategy": {
                        "type": "Progressive",
                        "progressive": {"maxConcurrency": 1},
                    },
                }
            ],
            "manifestWorkTemplate": {"workload": {"manifests": [DEPLOYMENT]}},
            "overrides": [
                {
                    "clusterSelector": {"clusterNames": ["ws-a"]},
                    "resourceSelector": {"kind": "Deployment", "name": "web"},
                    "mergePatch": {"spec": {"replicas": 3}},
                }
            ],
        },
    )

    def works() -> list[str]:
        return [n for n in hub.names("Work") if n.startswith("shop.")]

    eventually(works, lambda names: names == ["shop.ws-a"], what="one at a time", within=WAIT)
    first = hub.get("Work", "shop.ws-a")
    assert first is not None
    assert first["spec"]["workload"]["manifests"][0]["spec"]["replicas"] == 3, "override"
    assert first["metadata"]["labels"]["fleet.edgefleet.io/workset"] == "shop"
    assert first["metadata"]["labels"]["fleet.edgefleet.io/cluster"] == "ws-a"
    _work_status(hub, "shop.ws-a", available=True, degraded=False)
    eventually(works, lambda names: names == ["shop.ws-a", "shop.ws-b"], what="next", within=WAIT)
    second = hub.get("Work", "shop.ws-b")
    assert second is not None
    assert second["spec"]["workload"]["manifests"][0]["spec"]["replicas"] == 1
    _work_status(hub, "shop.ws-b", available=False, degraded=True)
    halted = eventually(
        lambda: hub.get("WorkSet", "shop"),
        lambda doc: (
            doc is not None and doc.get("status", {}).get("rollout", {}).get("phase") == "Halted"
        ),
        what="the rollout halts on the degraded cluster",
        within=WAIT,
    )
    assert halted is not None
    assert "ws-b" in halted["status"]["rollout"]["message"]
    assert works() == ["shop.ws-a", "shop.ws-b"], "ws-c gets nothing while halted"

    gone = hub.call("DELETE", "/api/v1/fleet/worksets/shop")
    assert gone.status == 200, gone
    eventually(works, lambda names: names == [], what="its Works go with it", within=WAIT)
