"""StatusHistory: merging reports, the lease, per-minute history, persistence."""

from __future__ import annotations

from pathlib import Path

import pytest

from tunnel_server.status.history import StatusHistory, StatusSettings

T0 = 1_800_000_000.0  # a minute boundary


@pytest.fixture
def history(tmp_path: Path) -> StatusHistory:
    return StatusHistory.open(tmp_path, settings=StatusSettings(), now=T0)


def test_full_then_delta_then_removed(history: StatusHistory) -> None:
    history.report("n1", kind="full", metrics={"cpu.percent": 1.0, "a.b": "x"}, now=T0)
    history.report("n1", kind="delta", metrics={"cpu.percent": 2.0}, removed=["a.b"], now=T0 + 1)
    live = history.live("n1")
    assert live is not None
    assert live.metrics == {"cpu.percent": 2.0}
    history.report("n1", kind="full", metrics={"z": 1}, now=T0 + 2)
    assert live.metrics == {"z": 1}, "a full report replaces everything"


def test_lease_is_a_multiple_of_the_stated_interval(history: StatusHistory) -> None:
    changed: list[str] = []
    history.add_listener(changed.append)
    history.report("n1", kind="full", metrics={}, interval=10.0, now=T0)
    assert history.expire(T0 + 29.9) == []
    assert history.expire(T0 + 30.0) == ["n1"]
    live = history.live("n1")
    assert live is not None
    assert not live.online
    assert "no report for 30 s" in (live.offline_reason or "")
    assert changed == ["n1", "n1"]
    history.report("n1", kind="delta", metrics={}, interval=10.0, now=T0 + 31)
    assert live.online


def test_lease_has_a_floor(history: StatusHistory) -> None:
    history.report("n1", kind="full", metrics={}, interval=0.1, now=T0)
    assert history.expire(T0 + 4.9) == []
    assert history.expire(T0 + 5.0) == ["n1"]


def test_disconnect_marks_offline_unless_a_newer_stream_took_over(
    history: StatusHistory,
) -> None:
    old, new = object(), object()
    history.report("n1", kind="full", metrics={}, now=T0, source=old)
    history.report("n1", kind="full", metrics={}, now=T0 + 1, source=new)
    history.disconnected("n1", now=T0 + 2, reason="gone", source=old)
    live = history.live("n1")
    assert live is not None
    assert live.online, "the late end of a replaced stream changes nothing"
    history.disconnected("n1", now=T0 + 3, reason="tunnel session closed", source=new)
    assert not live.online
    assert live.offline_reason == "tunnel session closed"


def test_history_is_a_mean_per_minute(history: StatusHistory) -> None:
    for second, cpu in ((0, 10.0), (20, 20.0), (40, 30.0)):
        history.report("n1", kind="full", metrics={"cpu.percent": cpu}, now=T0 + second)
        if second == 20:
            history.flush()  # a flush in the middle of a minute merges, it does not overwrite
    history.report("n1", kind="full", metrics={"cpu.percent": 50.0, "disk.percent": 5}, now=T0 + 60)
    points = history.history("n1", since=T0, until=T0 + 120)
    assert [p.minute for p in points] == [int(T0), int(T0) + 60]
    assert points[0].samples == 3
    assert points[0].values["cpu"] == pytest.approx(20.0)
    assert points[0].values["disk"] is None
    assert points[1].values["disk"] == 5.0


def test_prune_keeps_the_retention(history: StatusHistory) -> None:
    for minute in range(5):
        history.report("n1", kind="full", metrics={"cpu.percent": 1}, now=T0 + 60 * minute)
    history.flush()
    retention = history.settings.history_retention
    assert history.prune(T0 + retention + 120) == 2
    assert len(history.history("n1", since=0, until=T0 + 10**6)) == 3


def test_state_survives_a_restart(tmp_path: Path) -> None:
    first = StatusHistory.open(tmp_path, settings=StatusSettings(), now=T0)
    first.report("n1", kind="full", metrics={"cpu.percent": 3.0}, interval=10, now=T0)
    first.report("n2", kind="full", metrics={}, interval=10, now=T0 - 100)
    first.close()
    second = StatusHistory.open(tmp_path, settings=StatusSettings(), now=T0 + 5)
    n1, n2 = second.live("n1"), second.live("n2")
    assert n1 is not None
    assert n2 is not None
    assert n1.online, "its lease still runs"
    assert n1.metrics == {"cpu.percent": 3.0}
    assert not n2.online
    assert second.expire(T0 + 30) == ["n1"]


def test_keys_per_node_are_bounded(tmp_path: Path) -> None:
    history = StatusHistory.open(tmp_path, settings=StatusSettings(max_keys=10), now=T0)
    history.report("n1", kind="full", metrics={f"k.{i}": i for i in range(10)}, now=T0)
    history.report("n1", kind="delta", metrics={f"x.{i}": i for i in range(10)}, now=T0 + 1)
    live = history.live("n1")
    assert live is not None
    assert len(live.metrics) == 10
