# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""A failing disk degrades the cache to pass-through, loudly, instead of crashing."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import prometheus_client
import pytest

from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.store import CacheStore


def disk_full(_store: CacheStore) -> None:
    raise sqlite3.OperationalError("database or disk is full")


async def test_a_full_disk_degrades_once_and_counts(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    registry = prometheus_client.CollectorRegistry()
    store = AsyncStore(metrics=KubeCacheMetrics(registry))
    await store.open(tmp_path / "c")
    try:
        assert await store.run("pending", lambda s: s.pending()) == {}
        await store.run("put", disk_full)
        assert store.degraded
        assert await store.run("pending", lambda s: s.pending()) is None
    finally:
        await store.close()
    assert registry.get_sample_value("edge_agent_kubecache_store_degraded") == 1
    errors = registry.get_sample_value(
        "edge_agent_kubecache_store_errors_total", {"operation": "put"}
    )
    assert errors == 1
    loud = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(loud) == 1
    assert "disk is full" in loud[0].getMessage()
