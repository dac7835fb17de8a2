"""What the cluster agent tells the hub about its cluster: claims and quantities."""

from __future__ import annotations

from decimal import Decimal

import pytest

from edge_agent.cluster.fleet_link import claims_of, cpu_quantity, memory_quantity, resources_of
from edge_agent.cluster.status import ClusterInventory
from fleet_model import wire


@pytest.mark.parametrize(
    ("cores", "text"),
    [(Decimal(12), "12"), (Decimal("9.5"), "9500m"), (Decimal("0.001"), "1m"), (Decimal(0), "0")],
)
def test_cpu_quantities(cores: Decimal, text: str) -> None:
    assert cpu_quantity(cores) == text


@pytest.mark.parametrize(
    ("size", "text"),
    [
        (Decimal(32 * 2**30), "32Gi"),
        (Decimal(14 * 2**30 + 512 * 2**20), "14848Mi"),
        (Decimal(1000), "1000"),
        (Decimal(2**60), "1Ei"),
        (Decimal(0), "0"),
    ],
)
def test_memory_quantities(size: Decimal, text: str) -> None:
    assert memory_quantity(size) == text


def inventory(**changes: object) -> ClusterInventory:
    values: dict[str, object] = {
        "version": "v1.36.3",
        "nodes": 3,
        "allocatable_cpu": Decimal("9.5"),
        "allocatable_memory": Decimal(14 * 2**30),
        "capacity_cpu": Decimal(12),
        "capacity_memory": Decimal(16 * 2**30),
        "region": "eu",
        "zone": "eu-a",
        "platform": "kwok",
        **changes,
    }
    return ClusterInventory(**values)  # type: ignore[arg-type]


def test_claims_and_resources_pass_the_wire() -> None:
    claims = claims_of(inventory())
    assert claims == {
        "kubernetes.version": "v1.36.3",
        "platform": "kwok",
        "nodes": "3",
        "region": "eu",
        "zone": "eu-a",
    }
    allocatable, capacity = resources_of(inventory())
    assert allocatable == {"cpu": "9500m", "memory": "14Gi"}
    assert capacity == {"cpu": "12", "memory": "16Gi"}
    hello = wire.Hello(works={}, claims=claims, allocatable=allocatable, capacity=capacity)
    assert wire.Decoder(sender="agent").feed(wire.encode(hello)) == [hello]


def test_no_region_or_zone_no_claim() -> None:
    assert "region" not in claims_of(inventory(region=None, zone=None))
    assert "zone" not in claims_of(inventory(region=None, zone=None))
