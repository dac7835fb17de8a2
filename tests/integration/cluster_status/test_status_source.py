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
from tests.integration.cluster_status.conftest import EXPECTED, NS, kubectl

pytestmark = pytest.mark.kube


@pytest.mark.usefixtures("populated")
async def test_counts_and_resources_from_a_real_api_server(get_json: GetJson) -> None:
    # Pages of 2: nodes and pods both take several pages (continue tokens of the real server).
    source = ClusterStatusSource(get_json=get_json, interval=10, page_size=2)
    assert await source.sample(), source.last_error
    metrics = source.metrics()
    assert metrics["version"] == kube.KUBE_VERSION
    assert {key: metrics[key] for key in EXPECTED} == EXPECTED
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
