"""The pure parts of the idle-agent rounds: plan, goals, backoff, report rendering."""

from __future__ import annotations

import random
import sys
from pathlib import Path
from typing import Any

import pytest

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # scripts/bench is a folder of scripts that import each other

import agents_load  # noqa: E402
import bench_agents  # noqa: E402
import bench_stats as st  # noqa: E402


def _round(agents: int, **overrides: Any) -> dict[str, Any]:
    figures: dict[str, Any] = {
        "agents": agents,
        "status": "measured",
        "sessions_held": agents,
        "server_rss_before_MiB": 60.0,
        "server_rss_after_MiB": 210.0,
        "rss_per_agent_KB": 40.0,
        "server_idle_cpu_pct": 1.5,
        "load_rss_MiB": 100.0,
        "load_rss_per_agent_KB": 90.0,
        "load_idle_cpu_pct": 2.0,
        "tokens_s": 0.1,
        "join_s": 2.0,
        "connect_s": 3.0,
        "restart_ready_s": 0.9,
        "reconnect_s": 12.5,
        "reconnect_after_ready_s": 11.6,
        "reconnected": agents,
        "reconnect_server_cpu_s": 2.0,
        "reconnect_load_cpu_s": 2.5,
        "connect_failures": {"ClientConnectorError": 1234},
    }
    return figures | overrides


def test_quick_plan_is_small_and_full_plan_covers_the_goal_size() -> None:
    quick = bench_agents.make_agents_plan(quick=True)
    full = bench_agents.make_agents_plan(quick=False)
    assert max(quick.counts) <= 1000
    assert quick.backoff_cap < full.backoff_cap == 60.0
    assert {5000, 10000} <= set(full.counts)
    assert bench_agents.make_agents_plan(quick=True, counts=(7,)).counts == (7,)


def test_goals_are_judged_at_the_largest_measured_round() -> None:
    rounds = [_round(5000), _round(10000, rss_per_agent_KB=60.0, reconnect_s=None)]
    goals = bench_agents.agent_goals(rounds)
    assert goals == {
        "10,000 idle agents at < 50 KB RSS each": False,
        "all 10,000 reconnected within 60 s of a server restart": False,
    }


def test_goals_say_when_the_goal_size_was_not_reached() -> None:
    goals = bench_agents.agent_goals([_round(500), {"agents": 10000, "status": "failed"}])
    assert goals["500 idle agents at < 50 KB RSS each"] is True
    assert goals["all 500 reconnected within 60 s of a server restart"] is True
    assert goals["goal size reached (10,000 agents)"] is False
    assert bench_agents.agent_goals([{"agents": 1, "status": "failed"}]) == {}


@pytest.mark.parametrize("attempts", [0, 1, 3, 10, 40])
def test_backoff_is_full_jitter_under_a_capped_ceiling(attempts: int) -> None:
    rng = random.Random(1)  # noqa: S311 - jitter, not cryptography
    delays = [agents_load.backoff_delay(attempts, 1.0, 60.0, rng) for _ in range(500)]
    ceiling = min(60.0, 2.0**attempts)
    assert all(0.0 <= d <= ceiling for d in delays)
    assert max(delays) > 0.8 * ceiling  # spread over the whole range, not clustered
    assert min(delays) < 0.2 * ceiling


def test_agents_markdown_has_a_column_per_round_and_reasons_for_failures() -> None:
    rounds = [_round(5000), {"agents": 10000, "status": "failed", "reason": "fd limit"}]
    plan = {"settle_s": 5.0, "idle_s": 35.0, "backoff_base": 1.0, "backoff_cap": 60.0}
    text = "\n".join(st.agents_markdown(rounds, plan))
    assert "| Figure | 5,000 agents | 10,000 agents |" in text
    assert "| **server RSS per agent (KiB)** | 40.0 | - |" in text
    assert (
        "| sessions held by the server (its `tunnel_server_sessions` gauge) | 5,000 | failed |"
        in text
    )
    assert "| reconnected within the time limit | 5000 of 5000 | - |" in text
    assert "1,234 ClientConnectorError" in text
    assert "- 10,000 agents: failed — fd limit" in text
    assert "cap 60.0 s" in text
    assert st.agents_markdown([], plan) == []


def test_render_markdown_includes_the_agent_table() -> None:
    report: dict[str, Any] = {
        "date": "2026-01-01 00:00 UTC",
        "command": "scripts/bench/tunnel --quick",
        "mode": "quick",
        "seconds": 50.0,
        "machine": {"nproc": 2, "cpu_model": "cpu", "mem_gib": 1.0, "kernel": "6"},
        "versions": {"Python": "3.11"},
        "paths": {},
        "agents": [_round(500)],
        "agents_plan": {"settle_s": 1.0, "idle_s": 3.0, "backoff_base": 1.0, "backoff_cap": 10.0},
        "goals": {"500 idle agents at < 50 KB RSS each": True},
    }
    text = st.render_markdown(report, "- how")
    assert "### Idle agents on one server process" in text
    assert text.index("Idle agents") < text.index("Goals of issue 3") < text.index("How measured")


def test_agents_summary_lines() -> None:
    lines = st.agents_summary([_round(500), {"agents": 9, "status": "failed", "reason": "x"}])
    assert lines[0].startswith("agents 500: held 500, 40.0 KiB RSS/agent")
    assert lines[1] == "agents 9: failed: x"
