# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Offline LIST from stored JSON texts: one range read, API server order, paging, selectors."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from edge_agent.kubecache.keys import Resource
from edge_agent.kubecache.listing import decode_continue, list_head, render_raw_list
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.store import (
    CacheStore,
    Scope,
    SnapshotChangedError,
    SnapshotExpiredError,
)
from fleet_model.labels import parse_label_selector
from tests.unit.kubecache.test_store import PODS, coverage, pod

NODES = Resource(group="", version="v1", resource="nodes")


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CacheStore]:
    opened = CacheStore(tmp_path / "cache")
    yield opened
    opened.close()


def names(page_items: list[bytes]) -> list[str]:
    return [json.loads(text)["metadata"]["name"] for text in page_items]


def fill(store: CacheStore) -> None:
    everything = Scope(component="kubelet", resource=PODS)
    items = [
        pod(name, 10 + i, namespace=ns, app=app)
        for i, (ns, name, app) in enumerate(
            [("b", "p1", "x"), ("a", "p2", "y"), ("a", "p10", "x"), ("ab", "p0", "x")]
        )
    ]
    store.replace(everything, items, coverage(everything, 20))
    store.put("other", PODS, pod("p9", 1, namespace="a"))


def test_one_range_read_in_api_server_order(store: CacheStore) -> None:
    fill(store)
    everything = store.list_raw(Scope(component="kubelet", resource=PODS))
    assert names(everything.items) == ["p10", "p2", "p0", "p1"]  # a/p10 a/p2 ab/p0 b/p1
    in_a = store.list_raw(Scope(component="kubelet", resource=PODS, namespace="a"))
    assert names(in_a.items) == ["p10", "p2"]  # not ab/, not another component's p9


def test_pages_count_what_is_left_and_continue_where_they_stopped(store: CacheStore) -> None:
    fill(store)
    scope = Scope(component="kubelet", resource=PODS)
    first = store.list_raw(scope, limit=3)
    assert (names(first.items), first.more, first.remaining) == (["p10", "p2", "p0"], True, 1)
    body = json.loads(render_raw_list(coverage(scope, 20), first))
    assert body["metadata"]["remainingItemCount"] == 1
    start, _ = decode_continue(body["metadata"]["continue"])
    rest = store.list_raw(scope, start=start, limit=3)
    assert (names(rest.items), rest.more) == (["p1"], False)


def test_selectors_decode_only_candidates_and_still_match_exactly(store: CacheStore) -> None:
    fill(store)
    labels = parse_label_selector("app=x", max_length=100)
    scope = Scope(component="kubelet", resource=PODS, labels=labels)
    assert names(store.list_raw(scope).items) == ["p10", "p0", "p1"]
    negated = parse_field_selector("metadata.namespace!=a", max_length=100)
    scope = Scope(component="kubelet", resource=PODS, fields=negated)
    assert names(store.list_raw(scope).items) == ["p0", "p1"]
    page = store.list_raw(Scope(component="kubelet", resource=PODS, labels=labels), limit=1)
    assert (names(page.items), page.more, page.remaining) == (["p10"], True, -1)


def test_rendered_list_drops_item_kind_for_built_ins_and_keeps_it_otherwise(
    store: CacheStore,
) -> None:
    fill(store)
    scope = Scope(component="kubelet", resource=PODS, namespace="a")
    page = store.list_raw(scope)
    built_in: dict[str, Any] = json.loads(render_raw_list(coverage(scope, 20), page))
    assert list(built_in) == ["kind", "apiVersion", "metadata", "items"]
    assert built_in["metadata"] == {"resourceVersion": "20"}
    assert all("kind" not in item for item in built_in["items"])
    assert built_in["items"][0]["metadata"]["name"] == "p10"
    kept = dataclasses.replace(coverage(scope, 20), items_have_kind=True)
    custom = json.loads(render_raw_list(kept, page))
    assert all(item["kind"] == "Pod" for item in custom["items"])


def test_cluster_scoped_objects_list_by_name(store: CacheStore) -> None:
    scope = Scope(component="kubelet", resource=NODES)
    nodes = [
        {"kind": "Node", "apiVersion": "v1", "metadata": {"name": n, "resourceVersion": "3"}}
        for n in ("n2", "n1")
    ]
    store.replace(scope, nodes, coverage(scope, 3))
    page = store.list_raw(scope, limit=1)
    assert (names(page.items), page.last_key) == (["n1"], "n1")


def test_a_continued_page_of_cluster_scoped_objects_starts_after_the_last(
    store: CacheStore,
) -> None:
    """The scan seeks to the continue key; cluster-scoped keys carry ``_/`` before the name."""
    scope = Scope(component="kubelet", resource=NODES)
    nodes = [
        {"kind": "Node", "apiVersion": "v1", "metadata": {"name": n, "resourceVersion": "3"}}
        for n in ("n3", "a1", "n1", "z9")
    ]
    store.replace(scope, nodes, coverage(scope, 3))
    first = store.list_raw(scope, limit=2)
    assert (names(first.items), first.more, first.remaining) == (["a1", "n1"], True, 2)
    rest = store.list_raw(scope, start=first.last_key + "\x00")
    assert (names(rest.items), rest.more) == (["n3", "z9"], False)


def streamed(store: CacheStore, scope: Scope, *, start: str = "", max_bytes: int) -> bytes:
    """An unpaged LIST as ``offline.py`` streams it: head, chunks, ``]}``."""
    reader = store.open_list(scope, start=start)
    assert reader is not None
    head, strip = list_head(reader.coverage)
    chunks: list[list[bytes]] = []
    while chunk := store.read_list(reader, max_bytes):
        chunks.append(chunk)
    assert store.read_list(reader, max_bytes) == []  # stays at its end
    if max_bytes == 1:
        assert all(len(chunk) == 1 for chunk in chunks)  # one item per chunk: really chunked
    items = b",".join(strip(text) for chunk in chunks for text in chunk)
    return head + items + b"]}"


@pytest.mark.parametrize("max_bytes", [1, 300, 1 << 20])
def test_a_streamed_list_is_the_whole_page_byte_for_byte(store: CacheStore, max_bytes: int) -> None:
    fill(store)
    # a/p2 changes after the LIST: the view still records its older version (kept in h/).
    store.put("kubelet", PODS, pod("p2", 25, namespace="a", app="z"))
    app_x = parse_label_selector("app=x", max_length=100)
    not_a = parse_field_selector("metadata.namespace!=a", max_length=100)
    cases = [
        (Scope(component="kubelet", resource=PODS), ""),
        (Scope(component="kubelet", resource=PODS, namespace="a"), ""),
        (Scope(component="kubelet", resource=PODS, labels=app_x), ""),
        (Scope(component="kubelet", resource=PODS, fields=not_a), ""),
        (Scope(component="kubelet", resource=PODS), "a/p2\x00"),
    ]
    for scope, start in cases:
        found = store.snapshot(scope, start=start)
        assert found is not None
        whole = render_raw_list(*found)
        assert streamed(store, scope, start=start, max_bytes=max_bytes) == whole, scope
    everything = json.loads(streamed(store, cases[0][0], max_bytes=max_bytes))
    assert [i["metadata"]["name"] for i in everything["items"]] == ["p10", "p2", "p0", "p1"]
    assert everything["items"][1]["metadata"]["resourceVersion"] == "11"  # the view's version


def test_a_streamed_list_stops_if_its_view_changes_before_the_end(store: CacheStore) -> None:
    fill(store)
    scope = Scope(component="kubelet", resource=PODS)
    reader = store.open_list(scope)
    assert reader is not None
    assert names(store.read_list(reader, 1)) == ["p10"]
    store.replace(scope, [pod("p1", 30, namespace="b")], coverage(scope, 30))
    with pytest.raises(SnapshotChangedError):
        store.read_list(reader, 1)
    assert names(store.list_raw(scope).items) == ["p1"]  # a new read sees the new snapshot


def test_a_streamed_continued_list_of_another_snapshot_is_expired(store: CacheStore) -> None:
    fill(store)
    scope = Scope(component="kubelet", resource=PODS)
    store.replace(scope, [pod("p1", 30, namespace="b")], coverage(scope, 30))
    with pytest.raises(SnapshotExpiredError):
        store.open_list(scope, start="a/p2\x00", at="20")
