# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""A diskcache folder from an agent before issue 18 is carried over at the agent's open.

The old folder is built here with plain sqlite3 in diskcache's own schema and the way the old
store wrote values (zlib-compressed JSON, inline, string keys), so the test needs no diskcache.
"""

from __future__ import annotations

import json
import sqlite3
import zlib
from pathlib import Path

import pytest

from edge_agent.kubecache.legacy import LEGACY_FILE
from edge_agent.kubecache.store import CacheStore, Scope
from edge_agent.kubecache.table import FILE_NAME, Table
from tests.unit.kubecache.test_store import PODS, coverage, pod

_DISKCACHE_SCHEMA = (
    "CREATE TABLE Cache ( rowid INTEGER PRIMARY KEY, key BLOB, raw INTEGER, store_time REAL,"
    " expire_time REAL, access_time REAL, access_count INTEGER DEFAULT 0, tag BLOB,"
    " size INTEGER DEFAULT 0, mode INTEGER DEFAULT 0, filename TEXT, value BLOB)"
)
PICKLED = b"\x80\x04\x95\x13\x00\x00\x00\x00\x00\x00\x00}\x94\x8c\x05never\x94\x8c\x04read\x94s."
"""What diskcache's pickle mode (4) would hold: ``{"never": "read"}``, pickled (a literal)."""
PENDING = "p/kubelet/leases.v1.coordination.k8s.io/kube-node-lease/n1/"


def legacy_folder(directory: Path) -> Scope:
    """An old cache: one LIST of two pods, one at an older version, a heartbeat, a pickle.

    The pickled row is one the new store must never unpickle.
    """
    scope = Scope(component="kubelet", resource=PODS, namespace="a")
    directory.mkdir(mode=0o700)
    view = scope.key
    rows: list[tuple[str, str | None, int, bytes]] = [
        ("m/format", None, 1, json.dumps({"version": 2}).encode()),
        (view, None, 1, json.dumps(coverage(scope, 20).to_json()).encode()),
        ("o/kubelet/pods.v1.core/a/p1", "11", 1, json.dumps(pod("p1", 11)).encode()),
        ("o/kubelet/pods.v1.core/a/p2", "15", 1, json.dumps(pod("p2", 15)).encode()),
        ("h/kubelet/pods.v1.core/a/p2/12", "12", 1, json.dumps(pod("p2", 12)).encode()),
        (f"v/{view[2:]}/a/p1", "11", 1, b'"11"'),
        (f"v/{view[2:]}/a/p2", "12", 1, b'"12"'),
        (PENDING, None, 1, json.dumps({"object": {"n": 2**63 + 1}}).encode()),
        ("r/pickled", None, 4, PICKLED),
    ]
    with sqlite3.connect(directory / LEGACY_FILE) as db:
        db.execute(_DISKCACHE_SCHEMA)
        db.executemany(
            "INSERT INTO Cache (key, raw, tag, mode, value) VALUES (?, 1, ?, ?, ?)",
            [
                (key, tag, mode, zlib.compress(value) if mode == 1 else value)
                for key, tag, mode, value in rows
            ],
        )
    return scope


def test_the_agent_carries_an_old_cache_over_and_deletes_it(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    scope = legacy_folder(directory)
    store = CacheStore(directory, maintain=True)
    try:
        assert not (directory / LEGACY_FILE).exists()
        assert (directory / FILE_NAME).exists()
        # The view still answers offline, p2 at the version that view recorded.
        page = store.list_raw(scope)
        assert [json.loads(t)["metadata"]["resourceVersion"] for t in page.items] == ["11", "12"]
        assert store.view_rv(scope) == "20"
        assert store.pending() == {PENDING: {"object": {"n": 2**63 + 1}}}
        assert store.get_raw("r/pickled") is None  # skipped, never unpickled
    finally:
        store.close()
    assert "8 entries copied, 1 skipped" in caplog.text
    # Reopened: the carried-over cache is the cache now.
    again = CacheStore(directory, maintain=True)
    try:
        assert again.lookup("kubelet", PODS, "a", "p1") == (True, pod("p1", 11))
    finally:
        again.close()


def test_an_operator_open_leaves_the_old_cache_alone(tmp_path: Path) -> None:
    directory = tmp_path / "cache"
    legacy_folder(directory)
    store = CacheStore(directory)  # edge-agent cache stats while an old agent may run
    store.close()
    assert (directory / LEGACY_FILE).exists()


def test_an_unreadable_old_cache_is_dropped_and_refilled_online(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    directory = tmp_path / "cache"
    directory.mkdir(mode=0o700)
    (directory / LEGACY_FILE).write_bytes(b"not a database" * 500)
    store = CacheStore(directory, maintain=True)
    try:
        assert store.object_count() == 0
        assert not (directory / LEGACY_FILE).exists()
        scope = Scope(component="kubelet", resource=PODS, namespace="a")
        store.replace(scope, [pod("p1", 3)], coverage(scope, 3))
        assert len(store.list_raw(scope).items) == 1
    finally:
        store.close()
    assert "unreadable" in caplog.text


def test_a_failed_transaction_leaves_nothing_behind(tmp_path: Path) -> None:
    """``Table.transact`` rolls back on error, and the table takes the next one."""
    table = Table(tmp_path / FILE_NAME)
    try:

        def write_then_fail() -> None:
            with table.transact():
                table.set("r/a", {"n": 1})
                with table.transact():  # nested: joins the outer transaction
                    table.set("r/b", {"n": 2})
                raise RuntimeError

        with pytest.raises(RuntimeError):
            write_then_fail()
        assert list(table.keys()) == []
        with table.transact():
            table.set("r/c", {"n": 2**64}, rv="7")  # big integers stay exact (JSON text)
        assert (table.get("r/c"), table.rv("r/c")) == ({"n": 2**64}, "7")
    finally:
        table.close()
