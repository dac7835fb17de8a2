"""A member cluster of our own (kine + kube-apiserver) and a ``GetJson`` onto it.

Its own control plane, not the session's shared one: nodes are cluster-wide and other tests
create pods in the shared one, so the counts here would not be ours.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import yaml

from edge_agent.cluster.status import GetJson
from tests.harness import kube

NS = "status-test"
EXPECTED = {
    "nodes.total": 3,
    "nodes.ready": 2,
    "cpu.allocatable_cores": 9.5,
    "memory.allocatable_bytes": 14 * 2**30,
    "pods.running": 4,
    "pods.pending": 4,
    "pods.succeeded": 1,
    "pods.failed": 1,
    "pods.unknown": 0,
    # Not terminated: web-0,1,2 (running), web-5..8 (pending) = 7 x 100m, plus mixed 1050m.
    "cpu.requested_cores": 1.75,
    "memory.requested_bytes": (7 * 64 + 144) * 2**20,
}
"""What ``populated`` makes the member report."""


def camel(key: str) -> str:
    """A ``cluster.*`` metric key as the API's cluster field: ``nodes.total`` -> ``nodesTotal``."""
    first, *rest = key.replace(".", "_").split("_")
    return first + "".join(part.title() for part in rest)


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    plane = kube.start("member", tmp_path_factory.mktemp("member"))
    try:
        yield plane
    finally:
        plane.stop()


@pytest.fixture(scope="module")
def populated(member: kube.ControlPlane) -> kube.ControlPlane:
    kubectl(member, "create", "namespace", NS)
    apply(
        member,
        [
            fake_node("n1", ready=True, cpu="4", memory="8Gi"),
            fake_node("n2", ready=True, cpu="3500m", memory="4Gi"),
            fake_node("n3", ready=False, cpu="2", memory="2048Mi"),
        ],
    )
    pods = [fake_pod(f"web-{i}", NS, requests={"cpu": "100m", "memory": "64Mi"}) for i in range(9)]
    # Effective requests: max(app 200m + sidecar 50m, init 1 + sidecar 50m) = 1050m;
    # memory max(128Mi + 16Mi, 32Mi + 16Mi) = 144Mi.
    pods.append(
        fake_pod(
            "mixed",
            NS,
            requests={"cpu": "200m", "memory": "128Mi"},
            init={"cpu": "1", "memory": "32Mi"},
            sidecar={"cpu": "50m", "memory": "16Mi"},
        )
    )
    apply(member, pods)
    set_phase(member, NS, ["web-0", "web-1", "web-2", "mixed"], "Running")
    set_phase(member, NS, ["web-3"], "Succeeded")
    set_phase(member, NS, ["web-4"], "Failed")
    return member


@pytest.fixture
async def get_json(member: kube.ControlPlane) -> AsyncIterator[GetJson]:
    """GET with the plane's admin token; JSON decoded, a 2xx text body (``ok``) as text."""
    timeout = aiohttp.ClientTimeout(total=10)
    connector = aiohttp.TCPConnector(ssl=member.ssl_context())
    async with aiohttp.ClientSession(timeout=timeout, connector=connector) as session:

        async def get(path: str) -> Any:
            headers = {"Authorization": f"Bearer {member.token}", "Accept": "application/json"}
            async with session.get(member.url + path, headers=headers) as answer:
                answer.raise_for_status()
                body = await answer.read()
            try:
                return json.loads(body)
            except ValueError:
                return body.decode(errors="replace")

        yield get


def kubectl(plane: kube.ControlPlane, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), f"--kubeconfig={plane.kubeconfig}", *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def apply(plane: kube.ControlPlane, objects: list[dict[str, Any]]) -> None:
    kubectl(
        plane,
        "apply",
        "-f",
        "-",
        stdin=yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": objects}),
    )


def fake_node(name: str, *, ready: bool, cpu: str, memory: str) -> dict[str, Any]:
    """A Node as a kubelet registers it (status in the create: nodes keep it)."""
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {"name": name},
        "status": {
            "capacity": {"cpu": cpu, "memory": memory, "pods": "110"},
            "allocatable": {"cpu": cpu, "memory": memory, "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True" if ready else "False",
                    "reason": "Test",
                    "lastHeartbeatTime": "2026-01-01T00:00:00Z",
                    "lastTransitionTime": "2026-01-01T00:00:00Z",
                }
            ],
        },
    }


def fake_pod(
    name: str,
    namespace: str,
    *,
    requests: dict[str, str],
    init: dict[str, str] | None = None,
    sidecar: dict[str, str] | None = None,
) -> dict[str, Any]:
    def container(cname: str, wanted: dict[str, str]) -> dict[str, Any]:
        return {"name": cname, "image": "registry.invalid/x:1", "resources": {"requests": wanted}}

    spec: dict[str, Any] = {"containers": [container("app", requests)]}
    inits = []
    if sidecar is not None:
        inits.append({**container("sidecar", sidecar), "restartPolicy": "Always"})
    if init is not None:
        inits.append(container("init", init))
    if inits:
        spec["initContainers"] = inits
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def set_phase(plane: kube.ControlPlane, namespace: str, names: list[str], phase: str) -> None:
    for name in names:
        kubectl(
            plane,
            "patch",
            "pod",
            name,
            f"--namespace={namespace}",
            "--subresource=status",
            "--type=merge",
            "-p",
            json.dumps({"status": {"phase": phase}}),
        )
