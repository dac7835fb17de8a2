"""The restart-storm options of the tunnel bench: builds alternated on one fleet, storm only."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # scripts/bench is a folder of scripts that import each other

import bench_agents  # noqa: E402
import tunnel_bench  # noqa: E402

REPO = Path(__file__).resolve().parents[3]


def test_builds_alternate_on_one_fleet_and_the_cycle_repeats() -> None:
    plan = bench_agents.make_agents_plan(
        quick=False,
        counts=(3000,),
        builds=(("base", "/old"), ("new", "/new")),
        restarts=2,
    )
    assert [(mode, build and build[0]) for mode, build in plan.schedule()] == [
        ("on", "base"),
        ("on", "new"),
        ("on", "base"),
        ("on", "new"),
    ]
    assert bench_agents.server_env(("new", "/new")) == {"PYTHONPATH": "/new"}
    assert bench_agents.server_env(None) is None


def test_without_builds_each_admission_mode_restarts_once() -> None:
    plan = bench_agents.make_agents_plan(quick=True, admission=("off", "on"))
    assert plan.schedule() == [("off", None), ("on", None)]


def test_storm_runs_the_agent_rounds_only() -> None:
    args = tunnel_bench.parse_args(
        ["--storm", "--agents", "10000", "--builds", f"base={REPO},new={REPO}", "--restarts", "2"]
    )
    assert args.selected == []
    assert args.agent_counts == (10000,)
    assert args.server_builds == (("base", str(REPO)), ("new", str(REPO)))
    assert args.restarts == 2


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["--storm"], "--storm needs --agents N"),
        (["--storm", "--agents", "10", "--builds", "old"], "is not LABEL=DIR"),
        (["--storm", "--agents", "10", "--builds", "old=/nonexistent"], "no tunnel_server"),
        (["--storm", "--agents", "10", "--restarts", "0"], "at least 1"),
    ],
)
def test_storm_options_are_checked(
    argv: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit):
        tunnel_bench.parse_args(argv)
    assert message in capsys.readouterr().err


def test_storm_lines_give_each_build_its_time_and_cpu() -> None:
    rounds = [
        {
            "agents": 10000,
            "status": "measured",
            "build": build,
            "admission": "on",
            "reconnect_s": seconds,
            "reconnect_server_cpu_s": cpu,
            "reconnect_server_cpu_ms_per_agent": cpu / 10,
            "connect_failures": {"TimeoutError": 12},
            "other_cpu_pct": 20.0,
            "load_avg": [3.1, 4.2],
            "idle_after": {"server_idle_cpu_pct": 9.5},
        }
        for build, seconds, cpu in (("base", 143.4, 64.3), ("new", 70.1, 39.3))
    ]
    lines = tunnel_bench.storm_lines(rounds)
    assert lines[0].startswith("storm 10,000 base/on: back in 143.4 s, server CPU 64.3 s")
    assert "(3.93 ms/agent)" in lines[1]
    assert "server idle after 9.5 %" in lines[1]
