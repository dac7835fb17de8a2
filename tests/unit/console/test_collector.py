"""The agent's collector on this very machine: the keys the cloud relies on, extra sources."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path

from edge_agent.node_status import NodeStatusCollector


def test_sample_has_the_vitals(tmp_path: Path) -> None:
    ticks = iter([100.0, 110.0])
    collector = NodeStatusCollector(
        data_dir=tmp_path, disk_path=Path("/"), rtt=lambda: 0.0123, clock=lambda: next(ticks)
    )
    first = collector.sample()
    for key in (
        "cpu.percent",
        "cpu.count",
        "load.1",
        "memory.total",
        "memory.percent",
        "disk.percent",
        "disk.total",
        "boot.time",
        "os.name",
        "os.release",
        "agent.version",
    ):
        assert key in first, key
    assert first["tunnel.rtt_ms"] == 12.3
    assert "net.rx_bps" not in first, "rates need two samples"
    second = collector.sample()
    assert isinstance(second["net.rx_bps"], int)
    assert "cert.not_after" not in first, "not joined: no certificate to report"


def test_extra_sources_are_flattened_and_isolated(tmp_path: Path) -> None:
    def broken() -> Mapping[str, object]:
        raise RuntimeError("cache offline")

    collector = NodeStatusCollector(
        data_dir=tmp_path,
        disk_path=Path("/"),
        extra_sources={
            "cache": lambda: {"Hits": 3, "ratio": 0.5, "deep": {"a": {"b": "c"}}, "list": [1]},
            "broken": broken,
        },
    )
    sample = collector.sample()
    assert sample["cache.hits"] == 3
    assert sample["cache.ratio"] == 0.5
    assert sample["cache.deep.a.b"] == "c"
    assert "cache.list" not in sample
    assert not any(key.startswith("broken.") for key in sample)


def test_missing_disk_is_reported_not_raised(tmp_path: Path) -> None:
    collector = NodeStatusCollector(data_dir=tmp_path, disk_path=tmp_path / "gone")
    sample = collector.sample()
    assert sample["disk.path"] == str(tmp_path / "gone")
    assert "disk.percent" not in sample
