"""5,000 pods in a real API server: the sample is right and pages keep the agent's memory small.

The peak of Python allocations during one sample (tracemalloc) with pages of 500 against the
same sample in one page: folding page by page must hold a fraction of what the whole list
costs. The figures are printed (``-s``); the assertion compares the two runs, not a clock.
"""

from __future__ import annotations

import asyncio
import time
import tracemalloc

import pytest

from edge_agent.cluster.status import PAGE_SIZE, ClusterStatusSource, GetJson
from tests.harness import kube, kube_bulk
from tests.integration.cluster_status.conftest import kubectl

pytestmark = pytest.mark.kube

PODS = 5000
NAMESPACE = "bulk"


@pytest.fixture(scope="module")
def bulk(member: kube.ControlPlane) -> kube.ControlPlane:
    kubectl(member, "create", "namespace", NAMESPACE)
    asyncio.run(
        kube_bulk.create_pods(
            url=member.url,
            token=member.token,
            ssl_context=member.ssl_context(),
            namespace=NAMESPACE,
            count=PODS,
        )
    )
    return member


async def peak_of_one_sample(source: ClusterStatusSource) -> tuple[int, float]:
    tracemalloc.start()
    try:
        started = time.monotonic()
        assert await source.sample(), source.last_error
        elapsed = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return peak, elapsed


@pytest.mark.timeout(600)
@pytest.mark.usefixtures("bulk")
async def test_five_thousand_pods_in_pages(get_json: GetJson) -> None:
    paged = ClusterStatusSource(get_json=get_json, interval=10)
    whole = ClusterStatusSource(get_json=get_json, interval=10, page_size=PODS * 2)
    paged_peak, paged_seconds = await peak_of_one_sample(paged)
    whole_peak, whole_seconds = await peak_of_one_sample(whole)
    metrics = paged.metrics()
    assert metrics["pods.pending"] == PODS
    assert metrics["cpu.requested_cores"] == PODS * 0.01  # 10m each
    assert metrics["memory.requested_bytes"] == PODS * 16 * 2**20
    assert whole.metrics() == {
        **metrics,
        "apiserver.latency_ms": whole.metrics()["apiserver.latency_ms"],
        "updated_at": whole.metrics()["updated_at"],
    }
    started = time.monotonic()
    assert await paged.sample()
    untraced = time.monotonic() - started
    print(  # noqa: T201 - the figures of the report
        f"\n{PODS} pods: one sample {untraced:.2f} s;"
        f" pages of {PAGE_SIZE}: peak {paged_peak / 2**20:.1f} MiB,"
        f" {paged_seconds:.2f} s; one page: peak {whole_peak / 2**20:.1f} MiB,"
        f" {whole_seconds:.2f} s (under tracemalloc)"
    )
    assert paged_peak * 3 < whole_peak, (paged_peak, whole_peak)
