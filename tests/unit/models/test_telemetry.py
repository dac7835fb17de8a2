"""Telemetry history: numeric leaves per minute, bounded, surviving a restart, pruned."""

from __future__ import annotations

import math
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_server.twins.telemetry import TelemetryHistory, TelemetrySettings, numeric_leaves

KEY = ("edge-1", "th-1")
T0 = 1_800_000_000.0  # a minute boundary


class Clock:
    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_samples_of_a_minute_become_one_point(tmp_path: Path) -> None:
    clock = Clock(T0 + 59)
    history = TelemetryHistory(tmp_path / "t.db", settings=TelemetrySettings(), clock=clock)
    for second, value in [(1, 20.0), (30, 22.0), (50, 21.0)]:
        history.observe(KEY, {"temperature": value, "mode": "heat", "on": True}, T0 + second)
    history.observe(KEY, {"temperature": 30}, T0 + 61)  # the next minute
    points = history.points(KEY, "temperature", since=T0 - 3600, until=T0 + 120)
    assert [(p.minute, p.samples) for p in points] == [(int(T0), 3), (int(T0) + 60, 1)]
    first = points[0]
    assert (first.mean, first.minimum, first.maximum, first.last) == (21.0, 20.0, 22.0, 21.0)
    assert history.properties(KEY) == ["temperature"]  # strings and bools are no series
    history.close()


def test_nested_members_are_dotted_and_history_survives_a_restart(tmp_path: Path) -> None:
    clock = Clock(T0)
    history = TelemetryHistory(tmp_path / "t.db", settings=TelemetrySettings(), clock=clock)
    history.observe(KEY, {"schedule": {"comfort": 21.5, "enabled": True}}, T0)
    history.close()
    again = TelemetryHistory(tmp_path / "t.db", settings=TelemetrySettings(), clock=clock)
    assert again.has_series(KEY, "schedule.comfort")
    again.observe(KEY, {"schedule": {"comfort": 22.5}}, T0 + 10)
    (point,) = again.points(KEY, "schedule.comfort", since=T0 - 60, until=T0 + 60)
    assert (point.samples, point.mean, point.last) == (2, 22.0, 22.5)
    again.close()


def test_times_are_clamped_old_samples_dropped_and_series_bounded(tmp_path: Path) -> None:
    clock = Clock(T0)
    bounded = TelemetrySettings(max_series=2, retention=3600.0)
    history = TelemetryHistory(tmp_path / "t.db", settings=bounded, clock=clock)
    history.observe(KEY, {"a": 1}, T0 + 86_400)  # a clock far ahead: lands now
    history.observe(KEY, {"b": 1}, T0 - 7200)  # older than the retention: dropped
    history.observe(KEY, {"c": 1, "d": 2}, T0)  # only one more series fits
    assert history.series_count == 2
    (point,) = history.points(KEY, "a", since=T0 - 60, until=T0 + 60)
    assert point.minute == int(T0)
    assert history.points(KEY, "b", since=0, until=T0 * 2) == []
    clock.now = T0 + 7200
    assert history.prune(clock.now) == 2
    assert history.series_count == 0
    history.close()


@settings(max_examples=50)
@given(
    st.recursive(
        st.none() | st.booleans() | st.floats() | st.integers() | st.text(max_size=4),
        lambda inner: st.dictionaries(
            st.from_regex(r"[a-z]{1,4}", fullmatch=True), inner, max_size=5
        ),
        max_leaves=40,
    ).filter(lambda v: isinstance(v, dict))
)
def test_numeric_leaves_are_finite_numbers_only_and_bounded(values: dict[str, object]) -> None:
    leaves = list(numeric_leaves(values, max_depth=3, limit=7))
    assert len(leaves) <= 7
    for path, number in leaves:
        assert isinstance(number, float)
        assert math.isfinite(number)
        assert path.count(".") < 3
