"""The fleet benchmark's section of docs/benchmarks.md, rendered from one run's JSON (pure)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

START, END = "<!-- bench:fleet:start -->", "<!-- bench:fleet:end -->"

ROWS: tuple[tuple[str, str, str, str], ...] = (
    # key, what, unit, goal or baseline (issue 14 and its anchors)
    (
        "placement_1000_clusters_ms",
        "100 placements scheduled over 1,000 clusters (pure scheduler, median)",
        "ms",
        "< 1,000",
    ),
    (
        "controller_first_pass_1000_clusters_ms",
        "hub controller's first pass: 1,000 clusters, 100 placements, real stores",
        "ms",
        "-",
    ),
    (
        "controller_full_pass_1000_clusters_ms",
        "full pass again, nothing changed (median)",
        "ms",
        "-",
    ),
    (
        "controller_label_pass_1000_clusters_ms",
        "pass after one cluster's labels changed (median)",
        "ms",
        "-",
    ),
    ("controller_lease_pass_ms", "pass after 100 lease renewals (median)", "ms", "-"),
    (
        "sim_placement_s",
        "a Placement over {rollout_sim_clusters} connected simulated clusters, PUT to all chosen",
        "s",
        "-",
    ),
    (
        "rollout_sim_s",
        "one WorkSet to {rollout_sim_clusters} simulated clusters, PUT to all Applied",
        "s",
        "< 30 for 1,000 (Karmada #3108: ~15 min for 1,000 workflows)",
    ),
    (
        "hub_rss_mib_per_1000_clusters",
        "hub RSS growth per 1,000 clusters (connected, works applied)",
        "MiB",
        "< 200 (ACM: 3,500 clusters on a 3-node hub)",
    ),
    (
        "rollout_real_s",
        "one WorkSet to {rollout_real_clusters} real member clusters, PUT to all Available",
        "s",
        "-",
    ),
)


def _cell(value: object) -> str:
    if isinstance(value, bool) or value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.1f}" if abs(value) >= 10 else f"{value:,.2f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def markdown(figures: Mapping[str, Any], meta: Mapping[str, Any]) -> str:
    """The section: how to run, the run, one row per figure beside its goal (or why not)."""
    missing: Mapping[str, str] = figures.get("not_measured") or {}
    lines = [
        "## Hub-managed fleet",
        "",
        (
            "`scripts/bench/fleet --quick` (100 simulated clusters, no real members; last stdout "
            "line one JSON object) or `scripts/bench/fleet --out docs/benchmarks.md` (1,000 "
            "simulated clusters and the three real members; rewrites this section)."
        ),
        "",
        (
            f"Run {meta['date']} with `{meta['command']}` ({meta['elapsed_s']:.0f} s). Machine: "
            f"{meta['cpus']} CPUs, {meta['ram_gib']} GiB RAM, Linux {meta['kernel']}, Python "
            f"{meta['python']}; load average {meta['load_before']} before, {meta['load_after']} "
            "after (the machine is shared). Simulated clusters are one separate load process "
            "(`agents_load.py --kind cluster --fleet`): each a joined cluster identity with a real "
            "mTLS WebSocket tunnel session to a real `tunnel-server run` and the real `fleet` "
            "stream (hello, leases, an Applied+Available status for each Work); they run no member "
            "cluster. Real members: `tests/harness/fleet.py` (kine + kube-apiserver + "
            "kube-scheduler + kube-controller-manager + kwok each, real cluster-mode `edge-agent`)."
        ),
        "",
        "| figure | measured | unit | goal / baseline |",
        "|---|--:|---|---|",
    ]
    for key, what, unit, goal in ROWS:
        label = what.format(
            rollout_sim_clusters=_cell(figures.get("rollout_sim_clusters", "N")),
            rollout_real_clusters=_cell(figures.get("rollout_real_clusters", "the")),
        )
        if key in figures:
            measured = _cell(figures[key])
        else:
            measured = "not measured: " + missing.get(key, "no figure").replace("|", "/")
        lines.append(f"| {label} | {measured} | {unit} | {goal} |")
    stages = [
        ("before the clusters joined", "hub_rss_before_MiB"),
        ("all connected (leases, ManagedClusters)", "hub_rss_connected_MiB"),
        ("placement chose all", "hub_rss_placed_MiB"),
        ("works applied", "hub_rss_after_MiB"),
    ]
    if any(key in figures for _, key in stages):
        lines += [
            "",
            f"Hub RSS (MiB) at each stage of the {_cell(figures.get('rollout_sim_clusters'))}"
            "-cluster run: "
            + "; ".join(f"{text} {_cell(figures.get(key))}" for text, key in stages)
            + ".",
        ]
    if "rollout_sim_hub_cpu_s" in figures:
        hub_cpu = _cell(figures["rollout_sim_hub_cpu_s"])
        load_cpu = _cell(figures.get("rollout_sim_load_cpu_s"))
        idle = _cell(figures.get("hub_idle_cpu_pct"))
        lines += [
            "",
            (
                f"CPU during the simulated rollout: hub {hub_cpu} s, load process {load_cpu} s; "
                f"hub while idle, every cluster renewing its lease (10 s): {idle} % of one core."
            ),
        ]
    met = figures.get("goals_met") or {}
    if met:
        lines += [
            "",
            "Goals: "
            + "; ".join(f"{text}: {'met' if ok else 'NOT met'}" for text, ok in met.items())
            + ".",
        ]
    return "\n".join(lines) + "\n"
