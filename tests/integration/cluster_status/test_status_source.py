"""``ClusterStatusSource`` against a real kube-apiserver: counts, paging, and an outage.

Nodes are created as a kubelet registers them (capacity, allocatable and the Ready condition
in the object); pods stay Pending without a scheduler, and their phase is set through the
status subresource, as a kubelet would.
"""

from __future__ import annotations

import asyncio

import pytest

from edge_agent.cluster.status import ClusterStatusSource, GetJson
from tests.harness import kube
from tests.integration.cluster_status.conftest import (
    apply,
    fake_node,
    fake_pod,
    kubectl,
    set_phase,
)

pytestmark = pytest.mark.kube

NS = "status-test"


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


@pytest.mark.usefixtures("populated")
async def test_counts_and_resources_from_a_real_api_server(get_json: GetJson) -> None:
    # Pages of 2: nodes and pods both take several pages (continue tokens of the real server).
    source = ClusterStatusSource(get_json=get_json, interval=10, page_size=2)
    assert await source.sample(), source.last_error
    metrics = source.metrics()
    assert metrics["version"] == kube.KUBE_VERSION
    assert metrics["nodes.total"] == 3
    assert metrics["nodes.ready"] == 2
    assert metrics["cpu.allocatable_cores"] == 9.5
    assert metrics["memory.allocatable_bytes"] == 14 * 2**30
    assert metrics["pods.running"] == 4
    assert metrics["pods.pending"] == 4
    assert metrics["pods.succeeded"] == 1
    assert metrics["pods.failed"] == 1
    assert metrics["pods.unknown"] == 0
    # Not terminated: web-0,1,2 (running), web-5..8 (pending) = 7 x 100m, plus mixed 1050m.
    assert metrics["cpu.requested_cores"] == 1.75
    assert metrics["memory.requested_bytes"] == (7 * 64 + 144) * 2**20
    assert metrics["apiserver.healthy"] is True
    assert isinstance(metrics["apiserver.latency_ms"], float)
    assert isinstance(metrics["updated_at"], float)


async def test_an_api_server_outage_keeps_the_last_values(
    populated: kube.ControlPlane, get_json: GetJson
) -> None:
    source = ClusterStatusSource(get_json=get_json, interval=10, timeout=10)
    assert await source.sample(), source.last_error
    good = source.metrics()
    populated.stop_apiserver()
    try:
        assert not await source.sample()
        assert source.metrics() == {**good, "apiserver.healthy": False}
        assert source.last_error is not None
    finally:
        populated.start_apiserver()
        await asyncio.to_thread(populated.wait_ready)
    kubectl(populated, "delete", "pod", "web-8", f"--namespace={NS}", "--wait=false")
    # Unscheduled pods are deleted at once (no kubelet to wait for).
    assert await source.sample(), source.last_error
    assert source.metrics()["apiserver.healthy"] is True
    assert source.metrics()["pods.pending"] == good["pods.pending"] - 1  # type: ignore[operator]
