"""One tunnel server, one member cluster (kwok nodes) and its cluster agent, for the module.

Certificates live 20 s (the agent renews after two thirds, every ~13 s), so every test here
also runs across certificate renewals; the ManagedCluster asks for a lease every second.
"""

from __future__ import annotations

import json
import re
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from edge_agent.identity import Identity
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

CLUSTER = "fleet-a"
REGION, ZONE = "eu-west", "eu-west-1"
CERT_LIFETIME = "20s"

# The applier writes what works name: in these tests, anything (the agent's own RBAC for
# works is the applier's documentation; here the stream is under test).
WORKS_RBAC = f"""
apiVersion: rbac.authorization.k8s.io/v1
kind: ClusterRoleBinding
metadata: {{name: "edgefleet:agent-works"}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: cluster-admin}}
subjects:
- {{kind: ServiceAccount, name: {SERVICE_ACCOUNT}, namespace: {NAMESPACE}}}
"""


@dataclass
class Hub:
    server: Server
    member: MemberCluster
    agent: ClusterAgent

    def request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        """One REST call as the admin: (status, decoded JSON body or None)."""
        data = None if body is None else json.dumps(body).encode()
        headers = {"Authorization": f"Bearer {self.server.admin_token}"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        request = urllib.request.Request(  # noqa: S310 - our own server
            self.server.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(  # noqa: S310 - our own server
                request, timeout=10, context=self.server.ssl_context()
            ) as answer:
                raw = answer.read()
                return int(answer.status), json.loads(raw) if raw else None
        except urllib.error.HTTPError as error:
            with error:
                raw = error.read()
                return error.code, json.loads(raw) if raw else None

    def put_work(self, name: str, manifests: list[dict[str, Any]], **spec: Any) -> dict[str, Any]:
        document = {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "Work",
            "metadata": {"name": name},
            "spec": {"clusterName": CLUSTER, "workload": {"manifests": manifests}, **spec},
        }
        status, answer = self.request("PUT", f"/api/v1/fleet/works/{name}", document)
        assert status in (200, 201), (status, answer)
        return dict(answer)

    def work(self, name: str) -> dict[str, Any] | None:
        status, answer = self.request("GET", f"/api/v1/fleet/works/{name}")
        if status == 404:
            return None
        assert status == 200, (status, answer)
        return dict(answer)

    def metrics(self) -> str:
        _, body = self.server.get("/metrics")
        return body.decode()

    def metric(self, name: str, **labels: str) -> float:
        """One sample of /metrics (0 when the series does not exist yet)."""
        wanted = name + (
            "{" + ",".join(f'{k}="{v}"' for k, v in sorted(labels.items())) + "}" if labels else ""
        )
        for line in self.metrics().splitlines():
            if line.startswith(wanted + " "):
                return float(line.split()[1])
        return 0.0

    def member_object(
        self, kind: str, name: str, namespace: str = "default"
    ) -> dict[str, Any] | None:
        done = run_kubectl(
            self.member.kubeconfig, "get", kind, name, "-n", namespace, "-o", "json", check=False
        )
        if done.returncode != 0:
            assert "NotFound" in done.stderr, done.stderr
            return None
        return dict(json.loads(done.stdout))

    def agent_fleet(self) -> dict[str, Any]:
        cluster = self.agent.status()["cluster"]
        assert isinstance(cluster, dict)
        return dict(cluster["fleet"])


def config_map(name: str, **data: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": name, "namespace": "default"},
        "data": dict(data),
    }


def accept(hub: Hub, *, lease_seconds: int = 1) -> None:
    """The admin's half of the double opt-in (the controller may have made the object)."""
    status, answer = hub.request("GET", f"/api/v1/fleet/managedclusters/{CLUSTER}")
    current = answer if status == 200 else {"metadata": {"name": CLUSTER}, "spec": {}}
    document = {
        "apiVersion": "fleet.edgefleet.io/v1alpha1",
        "kind": "ManagedCluster",
        "metadata": {"name": CLUSTER, "labels": current["metadata"].get("labels", {})},
        "spec": {
            **current.get("spec", {}),
            "hubAcceptsClient": True,
            "leaseDurationSeconds": lease_seconds,
        },
    }
    status, answer = hub.request("PUT", f"/api/v1/fleet/managedclusters/{CLUSTER}", document)
    assert status in (200, 201), (status, answer)


def serial(agent: ClusterAgent) -> str:
    """The serial of the agent's current certificate, from its data folder."""
    return str(Identity.load(agent.data_dir).certificate.serial_number)


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    base = tmp_path_factory.mktemp("fleet-stream")
    labels = {"topology.kubernetes.io/region": REGION, "topology.kubernetes.io/zone": ZONE}
    with member_harness.running_member(
        CLUSTER, base / "member", nodes=2, node_labels=labels
    ) as member:
        run_kubectl(member.kubeconfig, "apply", "-f", "-", stdin=WORKS_RBAC)
        server = Server(workdir=base, extra_args=("--client-cert-lifetime", CERT_LIFETIME))
        agent = ClusterAgent(
            name=CLUSTER,
            workdir=base,
            server=server,
            plane=member.plane,
            agent_token=prepare_member(member.plane),
            interval=1.0,
            tunnel_options={"renew_check_interval": 0.5},
        )
        try:
            server.start()
            agent.join()
            agent.start()
            agent.wait_ready()
            agent.wait_connected()
            hub = Hub(server=server, member=member, agent=agent)
            accept(hub)
            eventually(
                lambda: hub.agent_fleet()["lease_seconds"],
                lambda seconds: seconds == 1,
                what="the agent took the ManagedCluster's lease period",
                within=30,
            )
            yield hub
        finally:
            agent.stop()
            server.stop()


_LOG_LINE = re.compile(r"Traceback|unhandled|Task exception")


def no_tracebacks(path: Path) -> list[str]:
    return [line for line in path.read_text().splitlines() if _LOG_LINE.search(line)]
