"""The fleet rollout benchmark's pure parts.

Its documents are valid, its status is read the hub's way, its simulated agents' status counts
as applied, and goals are judged only at scale.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # scripts/bench is a folder of scripts that import each other

import agents_load  # noqa: E402
import fleet_bench  # noqa: E402
import fleet_report  # noqa: E402
import fleet_rollout as fr  # noqa: E402
import fleet_sim  # noqa: E402
from bench_procs import BenchError  # noqa: E402
from bench_stats import replace_section  # noqa: E402

from fleet_model import wire  # noqa: E402
from fleet_model.documents import validate_document  # noqa: E402
from fleet_model.workset import WorkState  # noqa: E402

NOW = 1_800_000_000.0


def test_the_placement_and_the_workset_are_valid_documents() -> None:
    placement = validate_document(fr.document("Placement", fr.PLACEMENT, fr.placement_spec()))
    workset = validate_document(
        fr.document("WorkSet", fr.WORKSET, fr.workset_spec(fr.PLACEMENT)), kind="WorkSet"
    )
    assert placement.kind == "Placement"
    assert workset.spec["placementRefs"][0]["rolloutStrategy"] == {"type": "All"}
    manifest = workset.spec["manifestWorkTemplate"]["workload"]["manifests"][0]
    assert manifest["kind"] == "Deployment"


def _work(generation: int, version: str = "7") -> dict[str, Any]:
    return {
        "apiVersion": fr.API,
        "kind": "Work",
        "metadata": {"name": "bench-web.load-00001", "generation": generation,
                     "resourceVersion": version},
        "spec": {"clusterName": "load-00001", "workload": {"manifests": []}},
    }  # fmt: skip


def test_a_simulated_agents_status_is_applied_and_available_at_the_works_generation() -> None:
    status = fleet_sim.applied_status(_work(3), now=NOW)
    state = WorkState.from_status(status, generation=3, current=True, updated_at=NOW)
    assert (state.applied, state.available, state.observed, state.degraded) == (
        True,
        True,
        True,
        False,
    )
    # The hub would not count it for a newer generation: the status names the one it saw.
    newer = WorkState.from_status(status, generation=4, current=True, updated_at=NOW)
    assert not newer.observed


def test_the_simulated_status_goes_on_the_wire_as_the_agent_sends_it() -> None:
    message = wire.Status(
        work="bench-web.load-00001",
        resource_version=7,
        status=fleet_sim.applied_status(_work(1), now=NOW),
    )
    decoded = wire.Decoder(sender="agent").feed(wire.encode(message))
    assert decoded == [message]


@pytest.mark.parametrize("generation", [None, 0, -1, True, "1"])
def test_a_work_without_a_usable_generation_is_refused(generation: object) -> None:
    work = _work(1)
    work["metadata"]["generation"] = generation
    with pytest.raises(ValueError, match="generation"):
        fleet_sim.applied_status(work, now=NOW)


def test_summary_count_reads_only_a_summary_of_the_expected_total() -> None:
    doc = {"status": {"summary": {"total": 100, "applied": 99, "available": 98}}}
    assert fr.summary_count(doc, "applied", 100) == 99
    assert fr.summary_count(doc, "available", 100) == 98
    assert fr.summary_count(doc, "applied", 1000) is None  # not all chosen yet
    assert fr.summary_count({"status": {}}, "applied", 100) is None
    assert fr.summary_count(None, "applied", 100) is None
    assert (
        fr.summary_count({"status": {"summary": {"total": 1, "applied": True}}}, "applied", 1)
        is None
    )


def test_selected_counts_the_placements_choice() -> None:
    assert fr.selected({"status": {"numberOfSelectedClusters": 42}}) == 42
    assert fr.selected({"status": {}}) == 0
    assert fr.selected({}) == 0
    assert fr.selected(None) == 0


def test_rss_is_scaled_to_1000_clusters() -> None:
    mib = 1 << 20
    assert fr.rss_per_1000_mib(60 * mib, 80 * mib, 100) == 200.0
    assert fr.rss_per_1000_mib(60 * mib, 160 * mib, 1000) == 100.0
    assert fr.rss_per_1000_mib(60 * mib, 59 * mib, 1000) == -1.0  # reported as measured
    with pytest.raises(ValueError, match="positive"):
        fr.rss_per_1000_mib(0, 1, 0)


def test_the_sim_plan_bounds_its_size_and_grows_its_timeouts() -> None:
    small, large = fr.make_sim_plan(clusters=100), fr.make_sim_plan(clusters=1000)
    assert large.rollout_timeout_s > small.rollout_timeout_s
    assert large.join_timeout_s > small.join_timeout_s
    for bad in (0, 10_001):
        with pytest.raises(ValueError, match="within"):
            fr.make_sim_plan(clusters=bad)


def test_goals_are_judged_only_at_1000_clusters() -> None:
    quick = {"placement_1000_clusters_ms": 300.0, "rollout_sim_clusters": 100,
             "rollout_sim_s": 1.4, "hub_rss_mib_per_1000_clusters": 750.0}  # fmt: skip
    assert fleet_bench.goals_met(quick) == {
        "100 placements over 1,000 clusters < 1 s": True,
        "goal size reached (1,000 simulated clusters)": False,
    }
    full = quick | {"rollout_sim_clusters": 1000, "rollout_sim_s": 31.0}
    assert fleet_bench.goals_met(full) == {
        "100 placements over 1,000 clusters < 1 s": True,
        "rollout to 1,000 simulated clusters < 30 s": False,
        "hub memory < 200 MiB per 1,000 clusters": False,
    }
    assert fleet_bench.goals_met({}) == {}


def test_a_failed_part_lists_its_figures_with_the_reason() -> None:
    figures: dict[str, Any] = {}
    not_measured: dict[str, str] = {}

    def fails() -> dict[str, Any]:
        raise BenchError("only 10 of 1000 sessions came up\nlog tail")

    fleet_bench._measured_or_reason(figures, not_measured, fleet_bench.SIM_KEYS, fails)
    assert figures == {}
    assert not_measured == dict.fromkeys(fleet_bench.SIM_KEYS, "only 10 of 1000 sessions came up")

    def partial() -> dict[str, Any]:
        return {"rollout_real_clusters": 3}

    fleet_bench._measured_or_reason(figures, not_measured, fleet_bench.REAL_KEYS, partial)
    assert figures == {"rollout_real_clusters": 3}
    assert "rollout_real_s" in not_measured


def test_the_load_process_takes_fleet_only_with_cluster_tokens() -> None:
    base = ["--server", "https://127.0.0.1:1", "--server-data-dir", "/x", "--count", "3",
            "--workdir", "/y"]  # fmt: skip
    args = agents_load.parse_args([*base, "--kind", "cluster", "--fleet"])
    assert (args.kind, args.fleet) == ("cluster", True)
    assert agents_load.parse_args(base).kind == "node"
    with pytest.raises(SystemExit):
        agents_load.parse_args([*base, "--fleet"])


META = {"date": "2026-12-03 23:06 UTC", "command": "scripts/bench/fleet --out x",
        "elapsed_s": 200.0, "cpus": 2, "ram_gib": 23.5, "kernel": "6.1", "python": "3.11.7",
        "load_before": 0.8, "load_after": 1.9}  # fmt: skip


def test_the_section_shows_each_figure_beside_its_goal_or_why_it_is_missing() -> None:
    figures = {
        "placement_1000_clusters_ms": 393.4,
        "rollout_sim_clusters": 1000,
        "rollout_sim_s": 12.345,
        "hub_rss_mib_per_1000_clusters": 512.0,
        "rollout_real_clusters": 3,
        "rollout_sim_hub_cpu_s": 20.5,
        "hub_idle_cpu_pct": 35.0,
        "hub_rss_before_MiB": 64.0,
        "hub_rss_connected_MiB": 8.25,
        "hub_rss_after_MiB": 576.0,
        "goals_met": {"hub memory < 200 MiB per 1,000 clusters": False},
        "not_measured": {"rollout_real_s": "kube-apiserver | missing"},
    }
    text = fleet_report.markdown(figures, META)
    rows = {line.split(" | ")[0]: line for line in text.splitlines() if line.startswith("| ")}
    assert "| 1,000 | < 1,000 |" not in text
    assert "| 393.4 | ms | < 1,000 |" in rows["| 100 placements scheduled over 1,000 clusters "
                                            "(pure scheduler, median)"]  # fmt: skip
    sim = rows["| one WorkSet to 1,000 simulated clusters, PUT to all Applied"]
    assert "| 12.3 | s | < 30 for 1,000" in sim  # one decimal from 10 up, two below
    real = rows["| one WorkSet to 3 real member clusters, PUT to all Available"]
    assert "not measured: kube-apiserver / missing" in real  # a pipe would break the table
    assert "hub memory < 200 MiB per 1,000 clusters: NOT met" in text
    assert "works applied 576.0" in text
    assert "all connected (leases, ManagedClusters) 8.25" in text
    assert "hub 20.5 s, load process - s" in text
    assert "35.0 % of one core" in text
    assert text.count("\n| ") == len(fleet_report.ROWS) + 1  # the header and one row each


def test_the_section_replaces_only_its_own_markers() -> None:
    document = (
        "# Benchmarks\n\nintro\n\n<!-- bench:console:start -->\nold\n<!-- bench:console:end -->\n"
    )
    once = replace_section(
        document, "## Hub-managed fleet\nA", fleet_report.START, fleet_report.END
    )
    twice = replace_section(once, "## Hub-managed fleet\nB", fleet_report.START, fleet_report.END)
    assert "old" in twice
    assert "\nA\n" not in twice
    assert twice.count(fleet_report.START) == 1
    assert "\nB\n" in twice
