"""``ClusterStatusSource.inventory()``: the fleet's claims and resources from one sample."""

from __future__ import annotations

from decimal import Decimal
from typing import Any

from edge_agent.cluster.status import ClusterInventory, ClusterStatusSource
from tests.unit.cluster.test_status_source import FakeApi


def node(
    name: str, *, cpu: str, memory: str, labels: dict[str, str], provider: str | None = None
) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {} if provider is None else {"providerID": provider},
        "status": {
            "allocatable": {"cpu": cpu, "memory": memory},
            "capacity": {"cpu": "4", "memory": "8Gi"},
        },
    }


REGION, ZONE = "topology.kubernetes.io/region", "topology.kubernetes.io/zone"


async def test_inventory_sums_nodes_and_takes_the_most_common_place() -> None:
    api = FakeApi(
        [
            node(
                "a",
                cpu="3500m",
                memory="7Gi",
                labels={REGION: "eu", ZONE: "eu-b"},
                provider="kwok://a",
            ),
            node(
                "b", cpu="4", memory="8Gi", labels={REGION: "eu", ZONE: "eu-a"}, provider="kwok://b"
            ),
            node("c", cpu="1", memory="1Gi", labels={REGION: "us", ZONE: "us-a"}),
        ],
        [],
    )
    source = ClusterStatusSource(get_json=api.get_json, interval=10)
    assert source.inventory() is None
    assert source.healthy is None
    assert await source.sample()
    assert source.inventory() == ClusterInventory(
        version="v1.36.3",
        nodes=3,
        allocatable_cpu=Decimal("8.5"),
        allocatable_memory=Decimal(16 * 2**30),
        capacity_cpu=Decimal(12),
        capacity_memory=Decimal(24 * 2**30),
        region="eu",
        zone="eu-a",  # one node each: the smaller value wins, the same every time
        platform="kwok",
    )
    assert source.healthy is True


async def test_a_cluster_without_labels_or_providers() -> None:
    api = FakeApi([node("a", cpu="1", memory="1Gi", labels={})], [])
    source = ClusterStatusSource(get_json=api.get_json, interval=10)
    assert await source.sample()
    inventory = source.inventory()
    assert inventory is not None
    assert (inventory.region, inventory.zone, inventory.platform) == (None, None, "other")
