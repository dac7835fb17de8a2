"""A pod's effective requests, as Kubernetes' scheduler counts them (``PodRequests``).

The cases are those of k8s.io/component-helpers/resource/helpers_test.go and the sidecar KEP
(753, "Exposing Pod Resource requirements").
"""

from __future__ import annotations

from decimal import Decimal
from typing import Any

import pytest

from edge_agent.cluster.status import pod_requests


def c(
    cpu: str | None = None, memory: str | None = None, *, sidecar: bool = False
) -> dict[str, Any]:
    requests = {k: v for k, v in (("cpu", cpu), ("memory", memory)) if v is not None}
    container: dict[str, Any] = {"name": "x", "resources": {"requests": requests}}
    if sidecar:
        container["restartPolicy"] = "Always"
    return container


def pod(
    containers: list[dict[str, Any]],
    init: list[dict[str, Any]] | None = None,
    **spec: Any,
) -> dict[str, Any]:
    return {"spec": {"containers": containers, "initContainers": init or [], **spec}}


def requests(p: dict[str, Any]) -> dict[str, Decimal]:
    return pod_requests(p)


def test_app_containers_add_up() -> None:
    assert requests(pod([c("100m", "64Mi"), c("250m", "1Gi")])) == {
        "cpu": Decimal("0.35"),
        "memory": Decimal(64 * 2**20 + 2**30),
    }


def test_the_largest_init_container_wins_when_it_is_larger() -> None:
    assert requests(pod([c("1", "1Gi")], [c("2", "512Mi"), c("500m", "2Gi")])) == {
        "cpu": Decimal(2),
        "memory": Decimal(2 * 2**30),
    }


def test_sidecars_run_beside_the_app_and_before_later_init_containers() -> None:
    # KEP 753: sidecar 1 cpu, then init 2 cpu (runs beside the sidecar: 3), app 1 cpu.
    # Init peak = 1 + 2 = 3; app phase = 1 (app) + 1 (sidecar) = 2; the pod needs 3.
    assert requests(pod([c("1")], [c("1", sidecar=True), c("2")]))["cpu"] == Decimal(3)
    # An init container before the sidecar does not run beside it: max(2, 1 + 1) = 2.
    assert requests(pod([c("1")], [c("2"), c("1", sidecar=True)]))["cpu"] == Decimal(2)
    # Sidecars only: they add to the app containers.
    assert requests(pod([c("1")], [c("500m", sidecar=True)]))["cpu"] == Decimal("1.5")


def test_overhead_is_added_and_pod_level_requests_replace_the_aggregate() -> None:
    with_overhead = pod([c("1", "1Gi")], overhead={"cpu": "250m", "memory": "120Mi"})
    assert requests(with_overhead) == {
        "cpu": Decimal("1.25"),
        "memory": Decimal(2**30 + 120 * 2**20),
    }
    pod_level = pod([c("1", "1Gi"), c("1")], resources={"requests": {"cpu": "3"}})
    assert requests(pod_level) == {"cpu": Decimal(3), "memory": Decimal(2**30)}


def test_missing_and_malformed_parts_count_as_nothing() -> None:
    assert requests({}) == {}
    assert requests({"spec": {"containers": [{"name": "a"}, "junk", {"resources": None}]}}) == {}
    bad: list[str] = []
    assert pod_requests(pod([c("lots", "1Gi")]), bad) == {"memory": Decimal(2**30)}
    assert len(bad) == 1
    assert "lots" in bad[0]


@pytest.mark.parametrize("phase", ["Succeeded", "Failed"])
def test_phases_are_what_the_source_filters_on(phase: str) -> None:
    # pod_requests itself does not look at the phase; the tally skips terminated pods
    # (checked against the real API server in tests/integration/cluster_status).
    terminated = pod([c("1")])
    terminated["status"] = {"phase": phase}
    assert requests(terminated)["cpu"] == Decimal(1)
