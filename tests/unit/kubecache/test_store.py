# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The disk store: resourceVersion order, atomic LIST replacement, coverage, reopening."""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.kubecache.keys import Resource
from edge_agent.kubecache.listing import decode_continue, render_list
from edge_agent.kubecache.ops import cache_purge, cache_stats, cache_verify
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.store import CacheStore, Coverage, Scope
from edge_agent.kubecache.writethrough import _LIST_HEAD
from fleet_model.labels import parse_label_selector

PODS = Resource(group="", version="v1", resource="pods")


def pod(name: str, rv: int, namespace: str = "a", **labels: str) -> dict[str, Any]:
    return {
        "kind": "Pod",
        "apiVersion": "v1",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(rv),
            "labels": labels,
        },
        "spec": {"nodeName": "n1"},
    }


def coverage(scope: Scope, rv: int) -> Coverage:
    return Coverage(
        scope_key=scope.key,
        namespace=scope.namespace,
        labels=str(scope.labels),
        fields=str(scope.fields),
        rv=str(rv),
        list_kind="PodList",
        api_version="v1",
        items_have_kind=False,
    )


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    opened = CacheStore(tmp_path / "cache")
    yield opened
    opened.close()


def test_writes_are_ordered_by_resource_version(store: CacheStore) -> None:
    assert store.put("kubelet", PODS, pod("p", 5))
    assert not store.put("kubelet", PODS, pod("p", 4))
    assert not store.put("kubelet", PODS, pod("p", 5))
    assert store.put("kubelet", PODS, pod("p", 6))
    assert not store.delete("kubelet", PODS, "a", "p", rv="5")
    assert store.get("kubelet", PODS, "a", "p") == pod("p", 6)
    assert store.delete("kubelet", PODS, "a", "p", rv="7")
    assert store.get("kubelet", PODS, "a", "p") is None


def test_components_are_kept_apart(store: CacheStore) -> None:
    store.put("kubelet", PODS, pod("p", 5))
    assert store.get("kube-proxy", PODS, "a", "p") is None


def test_a_list_replaces_its_set_and_reports_changes(store: CacheStore) -> None:
    scope = Scope(component="kubelet", resource=PODS, namespace="a")
    store.replace(scope, [pod("p1", 1), pod("p2", 2), pod("old", 3)], coverage(scope, 3))
    store.put("kubelet", PODS, pod("elsewhere", 4, namespace="b"))
    changes = store.replace(scope, [pod("p1", 1), pod("p2", 5), pod("p3", 6)], coverage(scope, 6))
    assert sorted((c.type, c.obj["metadata"]["name"]) for c in changes) == [
        ("ADDED", "p3"),
        ("DELETED", "old"),
        ("MODIFIED", "p2"),
    ]
    names = [o["metadata"]["name"] for o in store.objects(scope)]
    assert names == ["p1", "p2", "p3"]
    assert store.get("kubelet", PODS, "b", "elsewhere") is not None


def test_a_newer_object_from_a_watch_survives_an_older_list(store: CacheStore) -> None:
    scope = Scope(component="kubelet", resource=PODS, namespace="a")
    store.put("kubelet", PODS, pod("fresh", 9))
    store.replace(scope, [pod("p1", 1)], coverage(scope, 5))
    assert store.get("kubelet", PODS, "a", "fresh") is not None


def test_coverage_answers_narrower_queries_only(store: CacheStore) -> None:
    listed = Scope(component="kubelet", resource=PODS, labels=parse_label_selector("app=web"))
    store.replace(listed, [pod("p1", 1, app="web")], coverage(listed, 1))
    narrower = Scope(
        component="kubelet",
        resource=PODS,
        namespace="a",
        labels=parse_label_selector("app=web,tier"),
        fields=parse_field_selector("spec.nodeName=n1"),
    )
    broader = Scope(component="kubelet", resource=PODS, namespace="a")
    assert store.coverage_for(narrower) is not None
    assert store.coverage_for(broader) is None


def test_everything_survives_reopening(tmp_path: Path) -> None:
    scope = Scope(component="kubelet", resource=PODS)
    first = CacheStore(tmp_path / "c")
    first.replace(scope, [pod("p1", 1), pod("p2", 2, namespace="b")], coverage(scope, 2))
    first.set_pending("p/kubelet/x", {"object": {"a": 1}})
    first.close()
    second = CacheStore(tmp_path / "c")
    try:
        assert [o["metadata"]["name"] for o in second.objects(scope)] == ["p1", "p2"]
        assert second.coverage_for(scope) is not None
        assert second.pending() == {"p/kubelet/x": {"object": {"a": 1}}}
    finally:
        second.close()


def test_paging_renders_api_server_order_and_tokens(store: CacheStore) -> None:
    scope = Scope(component="kubelet", resource=PODS)
    items = [pod("z", 1, namespace="a"), pod("y", 2, namespace="a-b"), pod("x", 3, namespace="b")]
    store.replace(scope, items, coverage(scope, 3))
    objects = store.objects(scope)
    assert [o["metadata"]["namespace"] for o in objects] == ["a-b", "a", "b"]  # "-" < "/"
    first = render_list(scope, coverage(scope, 3), objects, limit=2, start="")
    assert first["metadata"]["remainingItemCount"] == 1
    assert "kind" not in first["items"][0]
    start, _ = decode_continue(first["metadata"]["continue"])
    rest = render_list(scope, coverage(scope, 3), objects, limit=2, start=start)
    assert [o["metadata"]["name"] for o in rest["items"]] == ["x"]
    assert "continue" not in rest["metadata"]


def test_ops_stats_verify_purge(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    scope = Scope(component="kubelet", resource=PODS)
    opened = CacheStore(directory)
    opened.replace(scope, [pod("p1", 1)], coverage(scope, 1))
    opened.put("kube-proxy", PODS, pod("p1", 1))
    opened.close()
    stats = cache_stats(directory)
    assert stats["objects"] == 2
    assert stats["by_component_resource"] == {
        "kube-proxy/pods.v1.core": 1,
        "kubelet/pods.v1.core": 1,
    }
    assert cache_verify(directory).ok
    # The object, the view that recorded it (a single-object view) and its member entry.
    assert cache_purge(directory, component="kube-proxy") == 3
    assert cache_stats(directory)["objects"] == 1
    cache_purge(directory)
    assert not directory.exists()


def test_verify_reports_a_corrupt_file(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    directory.mkdir()
    (directory / "objects.db").write_bytes(b"garbage" * 1000)
    report = cache_verify(directory)
    assert not report.ok
    assert "cannot open" in report.problems[0]


def test_a_misfiled_entry_is_reported(tmp_path: Path) -> None:
    directory = tmp_path / "c"
    opened = CacheStore(directory)
    opened.put("kubelet", PODS, pod("p1", 1))
    opened.close()
    with sqlite3.connect(directory / "objects.db") as db:
        db.execute("UPDATE entries SET key = 'o/kubelet/pods.v1.core/a/other' WHERE key LIKE 'o/%'")
    report = cache_verify(directory)
    assert report.problems == ["o/kubelet/pods.v1.core/a/other: holds a/p1"]


def test_a_list_at_the_views_version_is_known_to_change_nothing(store: CacheStore) -> None:
    """``holds_list``: the write-through skips decoding a re-list its view already holds."""
    scope = Scope(component="kubelet", resource=PODS, namespace="a")
    assert not store.holds_list(scope, "20")  # no view yet: the LIST must be stored
    store.replace(scope, [pod("p1", 11)], coverage(scope, 20))
    assert store.holds_list(scope, "20")  # the same snapshot again
    assert store.holds_list(scope, "19")  # an older one is ignored anyway (rule 1)
    assert not store.holds_list(scope, "21")
    assert not store.holds_list(scope, "")
    other = Scope(component="kubelet", resource=PODS, namespace="b")
    assert not store.holds_list(other, "20")  # another view's version says nothing here


def test_the_write_through_recognises_only_a_whole_list_head() -> None:
    whole = b'{"kind":"PodList","apiVersion":"v1","metadata":{"resourceVersion":"1234"},"items":['
    match = _LIST_HEAD.match(whole + b"]}", 0, 512)
    assert match is not None
    assert match[1] == b"1234"
    paged = whole.replace(b'"1234"}', b'"1234","continue":"abc"}')
    assert _LIST_HEAD.match(paged, 0, 512) is None
    custom = b'{"apiVersion":"x.io/v1","items":[],"kind":"WidgetList","metadata":{}}'
    assert _LIST_HEAD.match(custom, 0, 512) is None
