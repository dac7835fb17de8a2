# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Operator functions behind ``edge-agent cache stats|verify|purge`` (blocking, no asyncio).

They open the cache folder directly. SQLite's WAL lets ``stats`` and ``verify`` run while
the agent runs; ``purge`` of the whole cache should run with the agent stopped (it deletes
the folder, which also clears a cache too corrupt to open).
"""

from __future__ import annotations

import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edge_agent.kubecache.keys import parse_object_key
from edge_agent.kubecache.store import CacheStore, Coverage, StoreFormatError, meta_of

_OPEN_ERRORS = (sqlite3.Error, OSError, StoreFormatError)


def cache_stats(directory: Path) -> dict[str, Any]:
    """Counts per component and resource, complete lists, pending heartbeats, bytes used."""
    store = CacheStore(directory)
    try:
        return {
            "directory": str(directory),
            "objects": store.object_count(),
            "by_component_resource": store.index_summary(),
            "complete_lists": [
                {
                    "key": c.scope_key,
                    "namespace": c.namespace,
                    "labels": c.labels,
                    "fields": c.fields,
                    "rv": c.rv,
                }
                for c in store.coverage_summary()
            ],
            "pending_heartbeats": store.pending_count(),
            "service_account_tokens": store.token_count(),
            "bytes": store.volume(),
        }
    finally:
        store.close()


@dataclass(kw_only=True)
class VerifyReport:
    checked: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.problems


def _verify_object(key: str, value: object) -> str | None:
    parsed = parse_object_key(key)
    if parsed is None or not isinstance(value, dict):
        return f"{key}: not an object entry"
    _, _, namespace, name = parsed
    meta = meta_of(value)
    if meta.get("name") != name or str(meta.get("namespace", "")) != namespace:
        return f"{key}: holds {meta.get('namespace')}/{meta.get('name')}"
    return None


def _verify_view(key: str, value: object) -> str | None:
    try:
        Coverage.from_json(key, value if isinstance(value, dict) else {})
    except (KeyError, TypeError, ValueError):
        return f"{key}: malformed list record"
    return None


def _has_object(value: object) -> bool:
    return isinstance(value, dict) and isinstance(value.get("object"), dict)


_SHAPES: dict[str, tuple[Callable[[object], bool], str]] = {
    "v": (lambda v: isinstance(v, str), "malformed view member"),
    "h": (lambda v: isinstance(v, dict), "malformed kept version"),
    "t": (_has_object, "malformed service-account token"),
    "p": (_has_object, "malformed pending heartbeat"),
}


def _verify_entry(key: str, value: object) -> str | None:
    kind = key.split("/", 1)[0]
    if kind == "o":
        return _verify_object(key, value)
    if kind == "c":
        return _verify_view(key, value)
    check, problem = _SHAPES.get(kind, (lambda _v: True, ""))
    return None if check(value) else f"{key}: {problem}"


def cache_verify(directory: Path) -> VerifyReport:
    """SQLite integrity, then every entry decodes and sits under the key that names it."""
    report = VerifyReport()
    try:
        store = CacheStore(directory)
    except _OPEN_ERRORS as exc:
        report.problems.append(f"cannot open the cache: {type(exc).__name__}: {exc}")
        return report
    try:
        report.problems.extend(store.check())
        for key in list(store.keys()):
            report.checked += 1
            try:
                value = store.raw_get(key)
            except (ValueError, sqlite3.Error) as exc:
                report.problems.append(f"{key}: unreadable ({exc})")
                continue
            problem = _verify_entry(key, value)
            if problem:
                report.problems.append(problem)
    finally:
        store.close()
    return report


def cache_purge(directory: Path, *, component: str | None = None) -> int:
    """Delete the whole cache (the folder), or one component's entries; returns entries gone.

    With no component the folder is removed without opening it, so a corrupt cache can be
    purged; the count is then -1 (unknown).
    """
    if component is None:
        if directory.exists():
            shutil.rmtree(directory)
        return -1
    store = CacheStore(directory)
    removed = 0
    try:
        for key in list(store.keys()):
            if key.split("/")[1:2] == [component] and key[0] in "ochvpt":
                store.raw_delete(key)
                removed += 1
    finally:
        store.close()
    return removed
