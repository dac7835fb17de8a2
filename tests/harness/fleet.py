"""A hub-managed fleet for end-to-end tests: one tunnel server and three real member clusters.

Each member is a whole cluster from ``tests.harness.member`` (kine + kube-apiserver +
kube-scheduler + kube-controller-manager + kwok nodes), with a cluster-mode ``edge-agent``
process joined with a cluster token (auto-approved: the token is the admin's yes, so its
ManagedCluster is accepted by the hub controller). The agent's ServiceAccount may write
anything in its member (the works under test are the fleet's, not the agent's RBAC).

``Fleet`` offers what the tests do as an admin: REST calls on ``/api/v1/fleet``, kubectl
straight to a member (what really happened there), and stopping / starting one agent.
"""

from __future__ import annotations

import contextlib
import json
import urllib.error
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness import member as member_harness
from tests.harness.daemons import Server
from tests.harness.member import MemberCluster
from tests.harness.waiting import eventually
from tests.integration.clusters.members import (
    NAMESPACE,
    SERVICE_ACCOUNT,
    ClusterAgent,
    prepare_member,
    run_kubectl,
)

API = "fleet.edgefleet.io/v1alpha1"
MEMBERS = ("east", "west", "north")
"""The clusters' names (their ManagedClusters are labelled ``fleet-e2e/name=<name>``)."""
READY_WITHIN = 60.0

WORKS_RBAC = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "edgefleet:agent-works"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects:
- {{kind: ServiceAccount, name: {SERVICE_ACCOUNT}, namespace: {NAMESPACE}}}
"""


@dataclass(kw_only=True)
class FleetMember:
    name: str
    cluster: MemberCluster
    agent: ClusterAgent

    def kubectl(self, *args: str, check: bool = True) -> Any:
        return run_kubectl(self.cluster.kubeconfig, *args, check=check)

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any] | None:
        done = self.kubectl("get", kind, name, "-n", namespace, "-o", "json", check=False)
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        return dict(json.loads(done.stdout))


@dataclass(kw_only=True)
class Fleet:
    server: Server
    members: dict[str, FleetMember] = field(default_factory=dict)

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        if data is not None:
            content = "application/merge-patch+json" if method == "PATCH" else "application/json"
            headers["Content-Type"] = content
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.server.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own server
                request, timeout=15, context=self.server.ssl_context()
            ) as answer:
                raw = answer.read()
                return int(answer.status), json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            with error:
                raw = error.read()
                return error.code, json.loads(raw) if raw else None

    def put(
        self, kind: str, name: str, spec: Mapping[str, Any], labels: Mapping[str, str] | None = None
    ) -> dict[str, Any]:
        document = {
            "apiVersion": API,
            "kind": kind,
            "metadata": {"name": name, "labels": dict(labels or {})},
            "spec": dict(spec),
        }
        status, answer = self.request("PUT", f"/api/v1/fleet/{kind.lower()}s/{name}", document)
        assert status in (200, 201), (status, answer)
        return dict(answer)

    def get(self, kind: str, name: str) -> dict[str, Any] | None:
        status, answer = self.request("GET", f"/api/v1/fleet/{kind.lower()}s/{name}")
        if status == 404:
            return None
        assert status == 200, (status, answer)
        return dict(answer)

    def delete(self, kind: str, name: str) -> None:
        status, answer = self.request("DELETE", f"/api/v1/fleet/{kind.lower()}s/{name}")
        assert status in (200, 404), (status, answer)

    def works(self, workset: str) -> dict[str, dict[str, Any]]:
        status, answer = self.request(
            "GET", f"/api/v1/fleet/works?labelSelector=fleet.edgefleet.io/workset%3D{workset}"
        )
        assert status == 200, (status, answer)
        return {item["metadata"]["name"]: item for item in answer["items"]}

    def cluster_condition(self, name: str, type_: str) -> str | None:
        document = self.get("ManagedCluster", name)
        for condition in (document or {}).get("status", {}).get("conditions", []):
            if condition["type"] == type_:
                return str(condition["status"])
        return None

    def label_clusters(
        self, labels: Mapping[str, Mapping[str, str]], *, lease_seconds: int
    ) -> None:
        """Labels and ``leaseDurationSeconds`` on each member's ManagedCluster (by merge patch)."""
        for name, extra in labels.items():
            status, answer = self.request(
                "PATCH",
                f"/api/v1/fleet/managedclusters/{name}",
                {
                    "metadata": {"labels": {"fleet-e2e/name": name, **extra}},
                    "spec": {"leaseDurationSeconds": lease_seconds},
                },
            )
            assert status == 200, (status, answer)


def _start_agent(server: Server, member: MemberCluster, name: str, base: Path) -> ClusterAgent:
    run_kubectl(member.kubeconfig, "apply", "-f", "-", stdin=WORKS_RBAC)
    agent = ClusterAgent(
        name=name,
        workdir=base,
        server=server,
        plane=member.plane,
        agent_token=prepare_member(member.plane),
        interval=1.0,
    )
    agent.join()
    agent.start()
    agent.wait_ready()
    agent.wait_connected()
    return agent


@contextlib.contextmanager
def running_fleet(base: Path, *, lease_seconds: int = 1) -> Iterator[Fleet]:
    """The server, three members and their agents; every ManagedCluster Available."""
    server = Server(workdir=base)
    with member_harness.member_clusters(len(MEMBERS), base, nodes=2) as clusters:
        fleet = Fleet(server=server)
        try:
            server.start()
            for name, cluster in zip(MEMBERS, clusters, strict=True):
                agent = _start_agent(server, cluster, name, base)
                fleet.members[name] = FleetMember(name=name, cluster=cluster, agent=agent)
            for name in MEMBERS:
                eventually(
                    lambda name=name: fleet.get("ManagedCluster", name),  # type: ignore[misc]
                    lambda doc: doc is not None,
                    what=f"the hub registers {name}",
                    within=READY_WITHIN,
                )
            fleet.label_clusters({name: {} for name in MEMBERS}, lease_seconds=lease_seconds)
            for name in MEMBERS:
                eventually(
                    lambda name=name: fleet.cluster_condition(name, "Available"),  # type: ignore[misc]
                    lambda status: status == "True",
                    what=f"{name} Available (its agent renews its lease)",
                    within=READY_WITHIN,
                )
            yield fleet
        finally:
            for member in fleet.members.values():
                member.agent.stop()
            server.stop()
