"""The cloud's twin end-to-end histogram: agent accepted the report -> the cloud stored it."""

from __future__ import annotations

from pathlib import Path

import prometheus_client

from device_models import JsonObject
from tests.unit.twin_sync.edge_sim import EdgeSim, make_cloud
from tunnel_server.twins import CloudTwinReplica, CloudTwinsSettings, Durability
from tunnel_server.twins.models import load_models
from tunnel_server.twins.store import TwinStore

NAME = "tunnel_server_twins_end_to_end_seconds"


def buckets(registry: prometheus_client.CollectorRegistry) -> dict[str, float]:
    """Cumulative bucket counts by upper bound, plus ``count`` and ``sum``."""
    found: dict[str, float] = {}
    for family in registry.collect():
        for sample in family.samples:
            if sample.name == f"{NAME}_bucket":
                found[sample.labels["le"]] = sample.value
            elif sample.name in (f"{NAME}_count", f"{NAME}_sum"):
                found[sample.name.rsplit("_", 1)[1]] = sample.value
    return found


def cloud_at(
    folder: Path, now: list[float]
) -> tuple[CloudTwinReplica, prometheus_client.CollectorRegistry]:
    settings = CloudTwinsSettings(durability=Durability.NORMAL)
    store = TwinStore(
        folder / "twins.sqlite3",
        durability=settings.durability,
        cache_devices=settings.cache_devices,
        max_dead_letters=settings.max_dead_letters,
    )
    registry = prometheus_client.CollectorRegistry()
    cloud = CloudTwinReplica(
        store=store,
        models=load_models(None),
        settings=settings,
        clock=lambda: now[0],
        registry=registry,
    )
    return cloud, registry


def test_each_applied_change_is_timed_once_from_the_agents_time(tmp_path: Path) -> None:
    edge = EdgeSim()
    now = [0.0]
    cloud, registry = cloud_at(tmp_path, now)
    edge.onboard("r1", "relay-switch")
    patches: list[JsonObject] = [{"switchCount": n} for n in (1, 2, 3)]
    for patch in patches:
        edge.report("r1", patch)
    records = edge.take()
    changes = [r for r in records if r["kind"] == "twin-change"]
    stamps = [float(r["change"]["at"]) for r in changes]
    now[0] = stamps[-1] + 0.03  # stored 30 ms after the last report, 1-2 s after the others
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=records)
    seen = buckets(registry)
    assert seen["count"] == 3  # the onboarding record is no twin change
    assert seen["0.05"] == 1  # the last report
    assert seen["1.0"] == 1
    assert seen["2.5"] == 3  # the first two, 2.03 s and 1.03 s old
    assert abs(seen["sum"] - sum(now[0] - at for at in stamps)) < 1e-6

    # A redelivered batch changes nothing: duplicates are not stored again, nor timed.
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=records)
    assert buckets(registry)["count"] == 3

    # A cloud clock behind the agent's gives no negative time: it counts as 0.
    edge.report("r1", {"switchCount": 4})
    late = edge.take()
    now[0] = float(late[-1]["change"]["at"]) - 5.0
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=late)
    seen = buckets(registry)
    assert (seen["count"], seen["0.005"]) == (4, 1)
    cloud.store.close()


def test_without_a_registry_the_histogram_still_counts(tmp_path: Path) -> None:
    cloud = make_cloud(tmp_path)
    edge = EdgeSim()
    edge.onboard("r1", "relay-switch")
    edge.report("r1", {"switchCount": 1})
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
    [family] = cloud.end_to_end.collect()
    count = next(s.value for s in family.samples if s.name == f"{NAME}_count")
    assert count == 1
    cloud.store.close()
