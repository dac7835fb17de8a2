"""The placement benchmark piece measures real, valid work (a small fleet, so it runs fast)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from fleet_model.cluster import cluster_view
from fleet_model.documents import API_VERSION, validate_document

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"


def _load(name: str) -> ModuleType:
    """scripts/bench is a folder of scripts, not a package: load the module by path."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


bench = _load("fleet_placement")


def test_the_benchmark_fleet_is_made_of_valid_managed_clusters() -> None:
    for document in bench.cluster_documents(50):
        validate_document({"apiVersion": API_VERSION, "kind": "ManagedCluster", **document})


def test_a_pass_places_every_placement_the_same_way_twice() -> None:
    clusters = [cluster_view(d) for d in bench.cluster_documents(200)]
    specs = bench.placement_specs(20)
    sets = bench.cluster_sets()
    first = bench.one_pass(specs, clusters, sets, [[] for _ in specs])
    assert len(first) == 20
    assert any(first), "the benchmark must place something, or it measures nothing"
    assert bench.one_pass(specs, clusters, sets, first) == bench.one_pass(
        specs, clusters, sets, first
    )
