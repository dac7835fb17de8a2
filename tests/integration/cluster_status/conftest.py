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


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[kube.ControlPlane]:
    plane = kube.start("member", tmp_path_factory.mktemp("member"))
    try:
        yield plane
    finally:
        plane.stop()


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
