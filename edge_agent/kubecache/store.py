# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The object cache on disk: diskcache (SQLite) with JSON values and plain string keys.

Layout (all keys are ``str``, stored as SQLite TEXT; values are zlib-compressed JSON):

* ``o/<component>/<resource>.<version>.<group>/<ns or _>/<name>``: one object, as the API
  server returned it (always with ``kind`` and ``apiVersion``). Writes are ordered by
  resourceVersion: an older or equal version never overwrites a newer one.
* ``c/<component>/<gvr>/<ns or _>/<selector hash>``: a *coverage* record. It says a LIST
  (or a watch's initial events) with this namespace and these selectors was complete at
  ``rv``, so the cache can answer any query that asks for a subset of it. This is how a
  second LIST with a different selector is answered offline (OpenYurt refuses it, #1963).
* ``p/<component>/<gvr>/<ns or _>/<name>/<subresource>``: a heartbeat written locally while
  offline, to be sent upstream on reconnect.
* ``r/<sha256>``: a raw non-resource answer (discovery, ``/version``) for offline clients.

A LIST replaces its set in one SQLite transaction: objects in the scope that are not in the
new answer are deleted, so deleted objects never linger. Every value lives inside SQLite
(``disk_min_file_size`` is far above any object), so a kill -9 leaves either the old or the
new state, never a torn one: SQLite's WAL journal rolls back an unfinished transaction.
Nothing is ever evicted (``eviction_policy='none'``).

The object index (which names exist per component and resource) is kept in memory and
rebuilt at open by one pass over the keys, because diskcache has no prefix scan.

All methods here block; :class:`edge_agent.kubecache.proxy` calls them on one worker thread.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import warnings
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import diskcache

from edge_agent.kubecache.keys import (
    NO_NAMESPACE,
    Resource,
    object_key,
    parse_object_key,
    sort_key,
)
from edge_agent.kubecache.selectors import (
    FieldSelector,
    LabelSelector,
    Op,
    parse_field_selector,
    parse_label_selector,
)

log = logging.getLogger("edge_agent.kubecache.store")

FORMAT_VERSION = 1
_FORMAT_KEY = "m/format"


class _JsonDisk(diskcache.JSONDisk):  # type: ignore[misc] # diskcache is untyped
    """JSONDisk for values; keys stay plain strings so they are readable and never pickled."""

    def put(self, key: object) -> tuple[object, bool]:
        if not isinstance(key, str):
            raise TypeError(f"cache keys are strings, not {type(key).__name__}")
        result: tuple[object, bool] = diskcache.Disk.put(self, key)
        return result

    def get(self, key: object, raw: bool) -> object:  # noqa: FBT001 - diskcache's signature
        return diskcache.Disk.get(self, key, raw)

    def store(self, value: object, read: bool, key: object = diskcache.core.UNKNOWN) -> object:  # noqa: FBT001 - diskcache's signature
        """Compact JSON (no spaces), so a stored object can be spliced into a LIST as is."""
        if not read:
            data = json.dumps(value, separators=(",", ":")).encode()
            value = zlib.compress(data, self.compress_level)
        return diskcache.Disk.store(self, value, read, key=key)


def raw_json(disk: diskcache.Disk, mode: int, filename: str | None, value: object) -> bytes:
    """The JSON text of a stored value, without decoding it."""
    compressed: bytes = diskcache.Disk.fetch(disk, mode, filename, value, False)  # noqa: FBT003
    return zlib.decompress(compressed)


@dataclass(frozen=True, kw_only=True, slots=True)
class RawPage:
    """One page of an offline LIST as JSON texts, and what paging needs to know."""

    items: list[bytes]
    last_key: str
    """The relative key (``<name>`` or ``<ns>/<name>``) of the last item, for ``continue``."""
    more: bool
    """Another item matches after this page."""
    remaining: int
    """Items after this page, counted only for queries without selectors (else -1)."""


def rv_newer(candidate: str, current: str) -> bool:
    """True if ``candidate`` is a later resourceVersion than ``current``.

    resourceVersions are opaque by contract but are etcd (or kine) revisions in practice; when
    both are integers they are compared, otherwise a different version counts as newer.
    """
    try:
        return int(candidate) > int(current)
    except ValueError:
        return candidate != current


def meta_of(obj: dict[str, Any]) -> dict[str, Any]:
    meta = obj.get("metadata")
    return meta if isinstance(meta, dict) else {}


def rv_of(obj: dict[str, Any]) -> str:
    return str(meta_of(obj).get("resourceVersion") or "")


@dataclass(frozen=True, kw_only=True, slots=True)
class Scope:
    """A query's extent: which objects of one resource, seen by one component."""

    component: str
    resource: Resource
    namespace: str = ""
    """Empty for all namespaces (or a cluster-scoped resource)."""
    labels: LabelSelector = field(default_factory=LabelSelector)
    fields: FieldSelector = field(default_factory=FieldSelector)

    @property
    def key(self) -> str:
        digest = hashlib.sha256(f"{self.labels}\n{self.fields}".encode()).hexdigest()[:24]
        ns = self.namespace or NO_NAMESPACE
        return f"c/{self.component}/{self.resource.key}/{ns}/{digest}"

    def contains(self, obj: dict[str, Any]) -> bool:
        meta = meta_of(obj)
        if self.namespace and meta.get("namespace", "") != self.namespace:
            return False
        return self.labels.matches(meta.get("labels")) and self.fields.matches(obj)

    def covers(self, other: Scope) -> bool:
        """True if every object ``other`` selects is inside this scope."""
        return (
            self.component == other.component
            and self.resource == other.resource
            and (not self.namespace or self.namespace == other.namespace)
            and self.labels.covers(other.labels)
            and self.fields.covers(other.fields)
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Coverage:
    """A complete LIST of a scope as of ``rv``, and how to render it again."""

    scope_key: str
    namespace: str
    labels: str
    fields: str
    rv: str
    list_kind: str
    api_version: str
    items_have_kind: bool

    def to_json(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "labels": self.labels,
            "fields": self.fields,
            "rv": self.rv,
            "list_kind": self.list_kind,
            "api_version": self.api_version,
            "items_have_kind": self.items_have_kind,
        }

    @classmethod
    def from_json(cls, scope_key: str, data: dict[str, Any]) -> Coverage:
        return cls(
            scope_key=scope_key,
            namespace=str(data["namespace"]),
            labels=str(data["labels"]),
            fields=str(data["fields"]),
            rv=str(data["rv"]),
            list_kind=str(data["list_kind"]),
            api_version=str(data["api_version"]),
            items_have_kind=bool(data["items_have_kind"]),
        )


@dataclass(frozen=True, kw_only=True, slots=True)
class Change:
    """One change a LIST replacement or a local write made, as a watch event type."""

    type: str
    obj: dict[str, Any]


class StoreFormatError(RuntimeError):
    """The cache folder holds a different format; purge it."""


class CacheStore:
    """Objects, coverage records and pending heartbeats in one diskcache database."""

    def __init__(self, directory: Path, *, min_file_size: int = 8 * 1024 * 1024) -> None:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # noqa: PTH101 - the same call for a str or Path
        self.directory = directory
        self._cache = diskcache.Cache(
            str(directory),
            disk=_JsonDisk,
            eviction_policy="none",
            size_limit=2**62,
            cull_limit=0,
            disk_min_file_size=min_file_size,
            statistics=False,
        )
        try:
            # The folder (0700) already keeps other users out; the files are 0600 as well, as
            # they hold secrets and tokens. SQLite gives -wal and -shm the database's mode.
            for path in directory.iterdir():
                if path.is_file() and path.name.startswith("cache.db"):
                    path.chmod(0o600)
            self._check_format()
            self._tokens: dict[str, float] = {}
            self._names: dict[tuple[str, str], set[tuple[str, str]]] = {}
            self._coverage: dict[tuple[str, str], dict[str, Coverage]] = {}
            self._pending: dict[str, dict[str, Any]] = {}
            self._load_index()
        except BaseException:
            self._cache.close()
            raise

    def close(self) -> None:
        self._cache.close()

    def _check_format(self) -> None:
        found = self._cache.get(_FORMAT_KEY)
        if found is None:
            self._cache.set(_FORMAT_KEY, {"version": FORMAT_VERSION})
        elif found != {"version": FORMAT_VERSION}:
            raise StoreFormatError(f"cache format {found!r}, expected {FORMAT_VERSION}")

    def _load_index(self) -> None:
        for key in self._cache.iterkeys():
            kind, _, rest = str(key).partition("/")
            if kind == "o":
                component, resource, namespace, name = rest.split("/")
                ns = "" if namespace == NO_NAMESPACE else namespace
                self._names.setdefault((component, resource), set()).add((ns, name))
            elif kind == "c":
                component, resource, _ = rest.split("/", 2)
                record = self._cache.get(key)
                if isinstance(record, dict):
                    coverage = Coverage.from_json(str(key), record)
                    self._coverage.setdefault((component, resource), {})[str(key)] = coverage
            elif kind == "p":
                record = self._cache.get(key)
                if isinstance(record, dict):
                    self._pending[str(key)] = record
            elif kind == "t":
                record = self._cache.get(key)
                expires = record.get("expires") if isinstance(record, dict) else None
                self._tokens[str(key)] = float(expires) if isinstance(expires, int | float) else 0

    # ------------------------------------------------------------ objects

    def get(self, component: str, resource: Resource, namespace: str, name: str) -> object:
        return self._cache.get(object_key(component, resource, namespace, name))

    def put(
        self, component: str, resource: Resource, obj: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Store one object unless the cache already holds the same or a newer version."""
        meta = meta_of(obj)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if not name:
            return False
        key = object_key(component, resource, namespace, name)
        with self._cache.transact():
            current = self._current_rv(key)
            if not force and current is not None and not rv_newer(rv_of(obj), current):
                return False
            self._cache.set(key, obj, tag=rv_of(obj) or None)
        self._names.setdefault((component, resource.key), set()).add((namespace, name))
        return True

    def _current_rv(self, key: str) -> str | None:
        """The resourceVersion held under ``key`` (None: nothing held), from its tag column.

        The tag holds the resourceVersion of every object written since format 1.1, so the
        ordering check never decodes the stored object; older entries are decoded once.
        """
        rows = self._cache._sql(  # noqa: SLF001 - diskcache reads no tag without the value
            "SELECT tag FROM Cache WHERE key = ? AND raw = 1", (key,)
        ).fetchall()
        if not rows:
            return None
        tag = rows[0][0]
        if isinstance(tag, str) and tag:
            return tag
        current = self._cache.get(key)
        return rv_of(current) if isinstance(current, dict) else ""

    @staticmethod
    def _range(scope_component: str, resource: Resource, namespace: str) -> tuple[str, str]:
        """The key range ``[low, high)`` of one component's objects of a resource (and ns)."""
        prefix = object_key(scope_component, resource, namespace, "")
        if not namespace:
            prefix = prefix.removesuffix(f"{NO_NAMESPACE}/")
        return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)  # "/" -> "0": just past it

    def _rows(self, scope: Scope, columns: str) -> list[tuple[Any, ...]]:
        low, high = self._range(scope.component, scope.resource, scope.namespace)
        rows: list[tuple[Any, ...]] = self._cache._sql(  # noqa: SLF001 - no range read in diskcache
            f"SELECT {columns} FROM Cache WHERE key >= ? AND key < ? AND raw = 1 ORDER BY key",  # noqa: S608 - our own column names
            (low, high),
        ).fetchall()
        return rows

    def delete(
        self, component: str, resource: Resource, namespace: str, name: str, *, rv: str = ""
    ) -> bool:
        """Remove one object unless the cache holds a version newer than ``rv``."""
        key = object_key(component, resource, namespace, name)
        with self._cache.transact():
            current = self._cache.get(key)
            if current is None:
                return False
            if rv and isinstance(current, dict) and rv_newer(rv_of(current), rv):
                return False
            self._cache.delete(key)
        self._names.get((component, resource.key), set()).discard((namespace, name))
        return True

    def names(self, component: str, resource: Resource, namespace: str = "") -> list[str]:
        """``(namespace, name)`` pairs held, in the order the API server lists them."""
        pairs = self._names.get((component, resource.key), set())
        chosen = [p for p in pairs if not namespace or p[0] == namespace]
        return [f"{ns}/{name}" for ns, name in sorted(chosen, key=lambda p: sort_key(*p))]

    def objects(self, scope: Scope) -> list[dict[str, Any]]:
        """Every cached object inside ``scope``, in API server order, read in one query.

        The object keys of one component and resource (and namespace) form one key range,
        and SQLite's key order (bytes) is the API server's ``<ns>/<name>`` order, so a single
        indexed range scan returns the set sorted: no per-object lookups.
        """
        disk = self._cache.disk
        out: list[dict[str, Any]] = []
        for mode, filename, value in self._rows(scope, "mode, filename, value"):
            obj = disk.fetch(mode, filename, value, False)  # noqa: FBT003 - diskcache's signature
            if isinstance(obj, dict) and scope.contains(obj):
                out.append(obj)
        return out

    def list_raw(self, scope: Scope, *, start: str = "", limit: int = 0) -> RawPage:
        """One page of the objects inside ``scope`` as stored JSON texts, in one query.

        Nothing is decoded when the query has no selectors; with selectors, an object is
        decoded only if its text contains every value the selectors require (a necessary
        condition), so a ``spec.nodeName=me`` query over 5,000 pods decodes about 500.
        """
        low, _ = self._range(scope.component, scope.resource, scope.namespace)
        selective = bool(scope.labels.requirements or scope.fields.requirements)
        needles = _needles(scope) if selective else []
        disk = self._cache.disk
        items: list[bytes] = []
        last_key = ""
        rows = self._rows(scope, "key, mode, filename, value")
        for index, (key, mode, filename, value) in enumerate(rows):
            relative = str(key)[len(low) :]
            relative = relative.removeprefix(f"{NO_NAMESPACE}/")
            if relative < start:
                continue
            if limit and len(items) >= limit and not selective:
                return RawPage(
                    items=items, last_key=last_key, more=True, remaining=len(rows) - index
                )
            text = raw_json(disk, mode, filename, value)
            if selective:
                if not all(any(n in text for n in group) for group in needles):
                    continue
                obj = json.loads(text)
                if not (isinstance(obj, dict) and scope.contains(obj)):
                    continue
                if limit and len(items) >= limit:
                    return RawPage(items=items, last_key=last_key, more=True, remaining=-1)
            items.append(text)
            last_key = relative
        return RawPage(
            items=items, last_key=last_key, more=False, remaining=0 if not selective else -1
        )

    # ------------------------------------------------------------ lists

    def _put_locked(self, component: str, resource: Resource, obj: dict[str, Any]) -> str:
        """Write ``obj`` unless a newer version is held; ADDED, MODIFIED or '' (kept)."""
        meta = meta_of(obj)
        key = object_key(component, resource, str(meta.get("namespace", "")), str(meta["name"]))
        current = self._current_rv(key)
        if current is not None and not rv_newer(rv_of(obj), current):
            return ""
        self._cache.set(key, obj, tag=rv_of(obj) or None)
        return "ADDED" if current is None else "MODIFIED"

    def put_many(self, component: str, resource: Resource, items: list[dict[str, Any]]) -> None:
        """Store one page of a paged LIST (ordered by resourceVersion, one transaction)."""
        with self._cache.transact():
            written = [obj for obj in items if meta_of(obj).get("name")]
            for obj in written:
                self._put_locked(component, resource, obj)
        names = self._names.setdefault((component, resource.key), set())
        for obj in written:
            meta = meta_of(obj)
            names.add((str(meta.get("namespace", "")), str(meta["name"])))

    def replace(
        self,
        scope: Scope,
        items: list[dict[str, Any]],
        coverage: Coverage,
        *,
        seen_before: frozenset[tuple[str, str]] = frozenset(),
    ) -> list[Change]:
        """Make the scope hold exactly ``items`` and record its coverage, in one transaction.

        ``seen_before`` names the items of earlier pages. Returns what changed, as watch events.

        Ordered by resourceVersion both ways: an item older than the cached copy does not
        overwrite it, and a cached object newer than the list (a watch wrote it meanwhile) is
        not deleted for missing from the list.
        """
        seen: set[tuple[str, str]] = set(seen_before)
        with self._cache.transact():
            held = {str(key): tag for key, tag in self._rows(scope, "key, tag")}
            changes = self._write_items(scope, items, held, seen)
            changes += self._delete_missing(scope, held, seen, coverage)
            self._cache.set(coverage.scope_key, coverage.to_json())
        names = self._names.setdefault((scope.component, scope.resource.key), set())
        for change in changes:
            meta = meta_of(change.obj)
            pair = (str(meta.get("namespace", "")), str(meta.get("name", "")))
            if change.type == "DELETED":
                names.discard(pair)
            else:
                names.add(pair)
        per_resource = self._coverage.setdefault((scope.component, scope.resource.key), {})
        per_resource[coverage.scope_key] = coverage
        return changes

    def _write_items(
        self,
        scope: Scope,
        items: list[dict[str, Any]],
        held: dict[str, object],
        seen: set[tuple[str, str]],
    ) -> list[Change]:
        """Write the items newer than what is ``held`` (key -> rv tag); note them in ``seen``."""
        changes: list[Change] = []
        for obj in items:
            meta = meta_of(obj)
            if not meta.get("name"):
                continue
            pair = (str(meta.get("namespace", "")), str(meta["name"]))
            seen.add(pair)
            key = object_key(scope.component, scope.resource, *pair)
            if key in held:
                current = held[key]
                if not (isinstance(current, str) and current):
                    current = self._current_rv(key)
                if not rv_newer(rv_of(obj), str(current)):
                    continue
            self._cache.set(key, obj, tag=rv_of(obj) or None)
            changes.append(Change(type="MODIFIED" if key in held else "ADDED", obj=obj))
        return changes

    def _delete_missing(
        self,
        scope: Scope,
        held: dict[str, object],
        seen: set[tuple[str, str]],
        coverage: Coverage,
    ) -> list[Change]:
        """Delete what ``scope`` holds that the list did not name, unless newer than it."""
        selective = bool(scope.labels.requirements or scope.fields.requirements)
        changes: list[Change] = []
        for key, tag in held.items():
            parsed = parse_object_key(key)
            if parsed is None or (parsed[2], parsed[3]) in seen:
                continue
            if coverage.rv and isinstance(tag, str) and tag and rv_newer(tag, coverage.rv):
                continue
            old = self._cache.get(key)
            if not isinstance(old, dict) or (selective and not scope.contains(old)):
                continue
            if coverage.rv and rv_newer(rv_of(old), coverage.rv):
                continue
            self._cache.delete(key)
            changes.append(Change(type="DELETED", obj=old))
        return changes

    def coverage_for(self, scope: Scope) -> Coverage | None:
        """The coverage whose list holds every object ``scope`` selects, if any."""
        best: Coverage | None = None
        candidates = self._coverage.get((scope.component, scope.resource.key), {})
        for coverage in candidates.values():
            covering = Scope(
                component=scope.component,
                resource=scope.resource,
                namespace=coverage.namespace,
                labels=_parse_labels(coverage.labels),
                fields=_parse_fields(coverage.fields),
            )
            if covering.covers(scope) and (best is None or rv_newer(coverage.rv, best.rv)):
                best = coverage
        return best

    def advance(self, scope: Scope, rv: str) -> None:
        """Move a coverage's resourceVersion forward after its watch delivered ``rv``."""
        per_resource = self._coverage.get((scope.component, scope.resource.key), {})
        coverage = per_resource.get(scope.key)
        if coverage is None or not rv_newer(rv, coverage.rv):
            return
        updated = Coverage.from_json(scope.key, {**coverage.to_json(), "rv": rv})
        self._cache.set(scope.key, updated.to_json())
        per_resource[scope.key] = updated

    # ------------------------------------------------------------ pending heartbeats

    def set_pending(self, key: str, record: dict[str, Any]) -> None:
        self._cache.set(key, record)
        self._pending[key] = record

    def pending(self) -> dict[str, dict[str, Any]]:
        return dict(self._pending)

    def clear_pending(self, key: str, record: dict[str, Any]) -> None:
        """Forget a pending write, unless a newer one replaced it meanwhile."""
        with self._cache.transact():
            if self._cache.get(key) == record:
                self._cache.delete(key)
                self._pending.pop(key, None)

    # ------------------------------------------------------------ service-account tokens

    def put_token(self, key: str, record: dict[str, Any], *, now: float) -> None:
        """Keep a TokenRequest answer; tokens expired by ``now`` are deleted meanwhile."""
        expires = record.get("expires")
        with self._cache.transact():
            for old in [k for k, until in self._tokens.items() if until <= now and k != key]:
                self._cache.delete(old)
                del self._tokens[old]
            self._cache.set(key, record)
        self._tokens[key] = float(expires) if isinstance(expires, int | float) else 0

    def get_token(self, key: str) -> object:
        return self._cache.get(key)

    def token_count(self) -> int:
        return len(self._tokens)

    # ------------------------------------------------------------ raw answers

    def put_raw(self, key: str, record: dict[str, Any]) -> None:
        self._cache.set(key, record)

    def get_raw(self, key: str) -> object:
        return self._cache.get(key)

    # ------------------------------------------------------------ operators

    def keys(self) -> Iterator[str]:
        for key in self._cache.iterkeys():
            yield str(key)

    def raw_get(self, key: str) -> object:
        return self._cache.get(key)

    def raw_delete(self, key: str) -> None:
        self._cache.delete(key)

    def check(self) -> list[str]:
        """Run diskcache's own consistency check (SQLite integrity and file references)."""
        with warnings.catch_warnings():
            warnings.simplefilter("always")  # diskcache reports problems as warnings
            found = self._cache.check(fix=False)
        return [str(w.message) for w in found]

    def volume(self) -> int:
        return int(self._cache.volume())

    def object_count(self) -> int:
        return sum(len(names) for names in self._names.values())

    def pending_count(self) -> int:
        return len(self._pending)

    def index_summary(self) -> dict[str, int]:
        return {f"{c}/{r}": len(n) for (c, r), n in sorted(self._names.items()) if n}

    def coverage_summary(self) -> list[Coverage]:
        return [c for per in self._coverage.values() for c in per.values()]


def _needles(scope: Scope) -> list[tuple[bytes, ...]]:
    """Byte strings an object's JSON must contain (one of each group) to match ``scope``.

    Values are escaped the way the stored JSON is written (``json.dumps``, ASCII), so a
    value the object holds appears in its text verbatim. Requirements that can match an
    absent value (``!=``, ``notin``, ``!key``, ``=""``) add no needle.
    """
    groups: list[tuple[bytes, ...]] = []
    for label in scope.labels.requirements:
        if label.op in {Op.EQUALS, Op.IN}:
            groups.append(tuple(json.dumps(v).encode() for v in label.values))
        elif label.op in {Op.EXISTS, Op.GREATER, Op.LESS}:
            groups.append((json.dumps(label.key).encode(),))
    groups.extend(
        (json.dumps(f.value)[1:-1].encode(),)
        for f in scope.fields.requirements
        if not f.negated and f.value and f.value != "false"
    )
    return groups


def _parse_labels(text: str) -> LabelSelector:
    return parse_label_selector(text, max_length=len(text) + 1)


def _parse_fields(text: str) -> FieldSelector:
    return parse_field_selector(text, max_length=len(text) + 1)
