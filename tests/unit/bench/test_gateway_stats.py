"""The gateway benchmark's pure parts: failover time, latency summaries, metrics, nginx config."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"
if str(BENCH) not in sys.path:
    sys.path.insert(0, str(BENCH))  # scripts/bench is a folder of scripts that import each other

import gateway_stats as gs  # noqa: E402


def _steady(
    start: float, end: float, *, step: float = 0.01, latency: float = 0.002
) -> list[gs.Record]:
    count = round((end - start) / step)
    return [gs.Record(start + i * step, start + i * step + latency, ok=True) for i in range(count)]


def test_failover_ends_with_the_last_failed_request() -> None:
    records = [
        *_steady(0.0, 10.0),
        gs.Record(10.05, 10.06, ok=False),
        gs.Record(10.10, 10.35, ok=False),
        *_steady(10.4, 12.0),
    ]
    result = gs.failover(records, kill_at=10.0)
    assert result.seconds == pytest.approx(0.35)
    assert result.failed == 2
    assert result.disturbed == 2


def test_a_stalled_request_counts_like_a_failed_one() -> None:
    """Held until a retry succeeded: it succeeded, but the failover was not over before it."""
    records = [*_steady(0.0, 10.0), gs.Record(9.99, 10.8, ok=True), *_steady(10.81, 12.0)]
    result = gs.failover(records, kill_at=10.0)
    assert result.failed == 0
    assert result.disturbed == 1
    assert result.seconds == pytest.approx(0.8)
    assert result.slow_s == pytest.approx(gs.MIN_SLOW_S)
    assert result.max_latency_s == pytest.approx(0.81)


def test_no_disturbance_is_zero_seconds() -> None:
    result = gs.failover(_steady(0.0, 12.0), kill_at=10.0)
    assert result.seconds == 0.0
    assert result.disturbed == 0
    assert result.after > 100


def test_failures_to_the_end_never_settle() -> None:
    records = [
        *_steady(0.0, 10.0),
        *(gs.Record(10 + i / 10, 10.05 + i / 10, ok=False) for i in range(20)),
    ]
    result = gs.failover(records, kill_at=10.0)
    assert result.seconds is None
    assert result.failed == 20


def test_the_slow_threshold_follows_the_p99_before_the_kill() -> None:
    records = _steady(0.0, 10.0, latency=0.02)  # 20 ms each: 5 x p99 = 100 ms
    records += [gs.Record(10.0, 10.09, ok=True), *_steady(10.1, 12.0, latency=0.02)]
    result = gs.failover(records, kill_at=10.0)
    assert result.slow_s == pytest.approx(0.1)
    assert result.p99_before_s == pytest.approx(0.02)
    assert result.disturbed == 0


def test_the_slow_threshold_never_exceeds_the_goal() -> None:
    records = _steady(0.0, 10.0, latency=0.5)  # a crawling machine: 5 x p99 = 2.5 s
    records += [gs.Record(10.0, 11.2, ok=True), *_steady(11.3, 14.0, latency=0.5)]
    result = gs.failover(records, kill_at=10.0)
    assert result.slow_s == gs.MAX_SLOW_S
    assert result.disturbed == 1
    assert result.seconds == pytest.approx(1.2)


def test_latency_ms_and_added() -> None:
    summary = gs.latency_ms([0.001 * i for i in range(1, 101)])
    assert summary == {"p50_ms": 50.0, "p99_ms": 99.0, "max_ms": 100.0}
    assert gs.added_ms(0.5, 0.2) == 0.3
    assert gs.added_ms(None, 0.2) is None


def test_attempts_are_read_from_the_metrics_and_diffed() -> None:
    name = "tunnel_server_gateway_attempts"
    text = (
        f"# HELP {name}_total Attempts\n"
        f'{name}_total{{backend="gw-a/bench/web:80",outcome="answered"}} 10.0\n'
        f'{name}_total{{backend="gw-b/bench/web:80",outcome="refused"}} 2.0\n'
        f'{name}_created{{backend="gw-a/bench/web:80",outcome="answered"}} 1.7e9\n'
    )
    after = gs.attempts(text)
    assert after == {"gw-a/bench/web:80 answered": 10.0, "gw-b/bench/web:80 refused": 2.0}
    assert gs.delta(
        after, {"gw-a/bench/web:80 answered": 4.0, "gw-b/bench/web:80 refused": 2.0}
    ) == {"gw-a/bench/web:80 answered": 6}


def test_goals_are_judged_only_when_measured() -> None:
    goals = gs.goals(gateway_rps=400.0, nginx_rps=1000.0, added_p50_ms=0.8, failover_s=None)
    assert goals == {
        "gateway_rps_at_least_0.5x_nginx": False,
        "added_p50_at_most_1ms": True,
        "failover_under_1s": None,
    }


def test_the_nginx_config_stays_in_its_prefix_in_the_foreground() -> None:
    conf = gs.nginx_config(prefix="/run/bench-x", port=8081, upstream="192.0.2.2:9000", workers=1)
    assert "daemon off;" in conf
    assert "master_process on;" in conf
    assert "worker_processes 1;" in conf
    assert "listen 127.0.0.1:8081" in conf
    assert "server 192.0.2.2:9000;" in conf
    paths = [line.split()[1].rstrip(";") for line in conf.splitlines() if "/run/" in line]
    assert paths
    assert all(p.startswith("/run/bench-x/") for p in paths)
    assert conf.count("{") == conf.count("}")
