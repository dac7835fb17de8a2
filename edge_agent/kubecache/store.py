# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The object cache on disk, the driver of the view core: one SQLite table, JSON values.

What is true is decided by :mod:`edge_agent.kubecache.views` (pure); this module persists
it and reads snapshots. Layout (all keys are ``str``; values are compact JSON; ``table.py``):

* ``o/<component>/<resource>.<version>.<group>/<ns or _>/<name>``: the newest stored version
  of one object (always with ``kind`` and ``apiVersion``; its resourceVersion in the row's
  ``rv`` column). Stored once per component, however many views hold it.
* ``h/<object key without o/>/<rv>``: an older version that some view still records (a
  view's snapshot shows what that view saw, not a newer copy another view brought).
* ``c/<component>/<gvr>/<ns or _>/<selector hash>``: a *view*: a LIST (or a watch's initial
  events, or one object read or written: ``metadata.name=<name>``) with this namespace and
  these selectors, complete at ``rv``. Any query asking for a subset of a view is answered
  from it offline (OpenYurt refuses this, #1963).
* ``v/<view key without c/>/<ns or _>/<name>``: one member of a view (``rv``: the version it
  holds).
* ``p/<component>/<gvr>/<ns or _>/<name>/<subresource>``: a heartbeat written locally while
  offline, to be sent upstream on reconnect.
* ``r/<sha256>``: a raw non-resource answer (discovery, ``/version``) for offline clients.
* ``t/...``: TokenRequest answers (``tokens.py``).

A LIST sets its view's membership in one SQLite transaction; an object missing from it left
*this* view and is deleted only when no view records it any more. A kill -9 leaves either
the old or the new state: SQLite's WAL journal rolls back an unfinished transaction. Nothing
is evicted. At the agent's open, versions no view records (a paged LIST abandoned halfway)
are swept.

Objects stay on disk: a LIST is one range scan over its key prefix, streamed, its texts
spliced into the answer undecoded. What is loaded into memory at open is the view index
only: each view's members as ``(namespace, name) -> resourceVersion`` (one query over
``v/``, no values) and the names per component and resource, about 0.5 KiB per cached
object (issue 18 measured 3.3 MiB for 5,000 pods).

All methods here block; :class:`edge_agent.kubecache.cache.AsyncStore` runs them on one
worker thread.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
from collections.abc import Generator, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, cast

from edge_agent.kubecache.keys import (
    NO_NAMESPACE,
    Resource,
    object_key,
    parse_object_key,
    sort_key,
)
from edge_agent.kubecache.legacy import migrate_diskcache
from edge_agent.kubecache.selectors import FieldSelector, parse_field_selector
from edge_agent.kubecache.table import FILE_NAME, Table
from edge_agent.kubecache.views import (
    Effects,
    Event,
    Family,
    Pair,
    View,
    ViewBook,
    ViewSpec,
    rv_newer,
    single_object_spec,
)
from fleet_model.labels import LabelSelector, Op, parse_label_selector

__all__ = ["rv_newer"]  # re-exported: callers compare versions through the store

log = logging.getLogger("edge_agent.kubecache.store")

FORMAT_VERSION = 2
"""2: views record their members (``v/``) and older versions they hold (``h/``). A format 1
cache is migrated at open by dropping its objects and list records (a LIST online fills it
again); pending heartbeats, tokens and discovery answers are kept."""
_FORMAT_KEY = "m/format"


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
    """Objects, views, pending heartbeats and tokens in one SQLite table (``table.py``)."""

    def __init__(
        self,
        directory: Path,
        *,
        maintain: bool = False,
        cache_kib: int = 2048,
    ) -> None:
        """Open (or create) the cache in ``directory``.

        ``maintain``: the agent's own open; migrates an older format and sweeps object
        versions no view records (a paged LIST abandoned halfway), and carries over a
        diskcache folder of an older agent (``legacy.py``). Operators' read-only opens
        (stats, verify) leave all of it alone, as the agent may be running. ``cache_kib``:
        SQLite's page cache, the store's only memory besides the view index.
        """
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
        os.chmod(directory, 0o700)  # noqa: PTH101 - the same call for a str or Path
        self.directory = directory
        self._cache = Table(directory / FILE_NAME, cache_kib=cache_kib)
        try:
            # The folder (0700) already keeps other users out; the files are 0600 as well, as
            # they hold secrets and tokens. SQLite gives -wal and -shm the database's mode.
            for path in directory.iterdir():
                if path.is_file() and path.name.startswith(FILE_NAME):
                    path.chmod(0o600)
            if maintain:
                migrate_diskcache(directory, self._cache)
            self._check_format(migrate=maintain)
            self._tokens: dict[str, float] = {}
            self._names: dict[Family, set[Pair]] = {}
            self._added: list[tuple[Family, Pair]] | None = None
            """Names added inside ``transaction()``, dropped again if it rolls back."""
            self._book = ViewBook()
            self._pending: dict[str, dict[str, Any]] = {}
            self._load_index(sweep=maintain)
        except BaseException:
            self._cache.close()
            raise

    def close(self) -> None:
        self._cache.close()

    def _check_format(self, *, migrate: bool) -> None:
        found = self._cache.get(_FORMAT_KEY)
        if found is None:
            self._cache.set(_FORMAT_KEY, {"version": FORMAT_VERSION})
        elif found == {"version": 1} and migrate:
            log.warning("cache format 1: dropping cached objects and lists (kept: heartbeats)")
            with self._cache.transact():
                for low, high in (("o/", "o0"), ("c/", "c0")):
                    self._cache.delete_range(low, high)
                self._cache.set(_FORMAT_KEY, {"version": FORMAT_VERSION})
        elif found != {"version": FORMAT_VERSION}:
            raise StoreFormatError(f"cache format {found!r}, expected {FORMAT_VERSION}")

    def _load_index(self, *, sweep: bool) -> None:
        views: dict[str, Coverage] = {}
        objects: list[str] = []
        history: list[str] = []
        for key in list(self._cache.keys()):
            kind = key.partition("/")[0]
            if kind in {"o", "h"}:
                (objects if kind == "o" else history).append(key)
            elif kind in {"c", "p", "t"}:
                self._load_record(kind, key, views)
        members = self._load_members()
        for view_key, coverage in views.items():
            component, resource = view_key.split("/")[1:3]
            spec = _spec_of((component, resource), coverage)
            self._book.load(view_key, spec, rv=coverage.rv, members=members.get(view_key, {}))
        self._load_objects(objects, history, sweep=sweep)

    def _load_record(self, kind: str, key: str, views: dict[str, Coverage]) -> None:
        record = self._cache.get(key)
        if not isinstance(record, dict):
            return
        if kind == "c":
            views[key] = Coverage.from_json(key, record)
        elif kind == "p":
            self._pending[key] = record
        else:
            expires = record.get("expires")
            self._tokens[key] = float(expires) if isinstance(expires, int | float) else 0

    def _load_members(self) -> dict[str, dict[Pair, str]]:
        members: dict[str, dict[Pair, str]] = {}
        for key, rv in self._cache.key_rvs("v/", "v0"):
            parsed = parse_member_key(key)
            if parsed is not None:
                members.setdefault(parsed[0], {})[parsed[1]] = rv
        return members

    def _load_objects(self, objects: list[str], history: list[str], *, sweep: bool) -> None:
        """Index the stored objects; with ``sweep``, drop versions no view records."""
        for key in objects:
            parsed = parse_object_key(key)
            if parsed is None:
                continue
            family, pair = (parsed[0], parsed[1]), (parsed[2], parsed[3])
            if sweep and not self._book.recorded_versions(family, pair):
                self._cache.delete(key)
                continue
            self._names.setdefault(family, set()).add(pair)
        for key in history if sweep else []:
            base, _, rv = key.rpartition("/")
            parsed = parse_object_key("o/" + base[2:])
            if parsed is None or rv not in self._book.recorded_versions(
                (parsed[0], parsed[1]), (parsed[2], parsed[3])
            ):
                self._cache.delete(key)

    # ------------------------------------------------------------ object versions (driver)

    def _family(self, component: str, resource: Resource) -> Family:
        return (component, resource.key)

    def _current_rv(self, key: str) -> str | None:
        """The resourceVersion held under ``key`` (None: nothing held), from its rv column."""
        current = self._cache.rv(key)
        if current is None or current:
            return current
        stored = self._cache.get(key)  # carried over without an rv column value
        return rv_of(stored) if isinstance(stored, dict) else ""

    def _raw_text(self, key: str) -> bytes | None:
        return self._cache.text(key)

    def _set_latest(self, family: Family, pair: Pair, key: str, obj: dict[str, Any]) -> None:
        self._cache.set(key, obj, rv=rv_of(obj))
        names = self._names.setdefault(family, set())
        if pair not in names:
            names.add(pair)
            if self._added is not None:
                self._added.append((family, pair))

    def _write_version(
        self, family: Family, resource: Resource, obj: dict[str, Any], *, force: bool = False
    ) -> None:
        """Store one object version that a view records (called after the views changed).

        ``o/`` holds the newest version; an older one that some view still records lives
        under ``h/.../<rv>`` (a snapshot must show what its view recorded, rule 4).
        """
        meta = meta_of(obj)
        pair = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        key = object_key(family[0], resource, *pair)
        rv = rv_of(obj)
        current = self._current_rv(key)
        if current is None or (current == rv and force):
            self._set_latest(family, pair, key, obj)
            return
        if current == rv:
            return
        recorded = self._book.recorded_versions(family, pair)
        if rv_newer(rv, current):
            if current in recorded:
                old = self._cache.get(key)
                if isinstance(old, dict):
                    self._cache.set(history_key(key, current), old, rv=current)
            self._set_latest(family, pair, key, obj)
        elif rv in recorded and (force or self._current_rv(history_key(key, rv)) is None):
            self._cache.set(history_key(key, rv), obj, rv=rv)

    def _persist(self, view_key: str, family: Family, resource: Resource, effects: Effects) -> None:
        """Write what one view operation changed: its record, members, released versions."""
        view = self._book.get(view_key)
        if view is not None and effects.moved:
            self._cache.set(view_key, _coverage_of(view).to_json())
        for pair, rv in effects.recorded:
            self._cache.set(member_key(view_key, pair), rv, rv=rv)
        for pair in effects.dropped:
            self._cache.delete(member_key(view_key, pair))
        for pair, rv in effects.released:
            self._collect(family, resource, pair, rv)

    def _collect(self, family: Family, resource: Resource, pair: Pair, rv: str) -> None:
        """Delete a stored version no view records; the object when no version is left."""
        key = object_key(family[0], resource, *pair)
        recorded = self._book.recorded_versions(family, pair)
        if not recorded:
            self._cache.delete(key)
            low = history_key(key, "")
            self._cache.delete_range(low, low[:-1] + "0")
            self._names.get(family, set()).discard(pair)
        elif rv != self._current_rv(key):
            self._cache.delete(history_key(key, rv))

    # ------------------------------------------------------------ single objects

    def _single(self, component: str, resource: Resource, namespace: str, name: str) -> str:
        return Scope(
            component=component,
            resource=resource,
            namespace=namespace,
            fields=_parse_fields(f"metadata.name={name}"),
        ).key

    def put(
        self, component: str, resource: Resource, obj: dict[str, Any], *, force: bool = False
    ) -> bool:
        """Record one object read or written (its single-object view); False if older.

        ``force`` rewrites the stored text of the same version (a heartbeat answered
        locally keeps the upstream resourceVersion).
        """
        meta = meta_of(obj)
        namespace, name = str(meta.get("namespace", "")), str(meta.get("name", ""))
        if not name:
            return False
        family = self._family(component, resource)
        with self._cache.transact():
            if force:
                self._write_version(family, resource, obj, force=True)
                return True
            view_key = self._single(component, resource, namespace, name)
            spec = single_object_spec(family, namespace, name)
            rv = rv_of(obj)
            effects = self._book.list_done(view_key, spec, {(namespace, name): rv}, rv=rv)
            if not effects.applied:
                return False
            if effects.recorded:  # the same version read again writes nothing
                self._write_version(family, resource, obj)
            self._persist(view_key, family, resource, effects)
        return bool(effects.changes)

    def delete(
        self, component: str, resource: Resource, namespace: str, name: str, *, rv: str = ""
    ) -> bool:
        """The object is gone (a GET's 404, a DELETE's answer): its single view is empty.

        Views that listed it keep it until their own LIST or watch says it left.
        """
        family = self._family(component, resource)
        view_key = self._single(component, resource, namespace, name)
        spec = single_object_spec(family, namespace, name)
        with self._cache.transact():
            effects = self._book.list_done(view_key, spec, {}, rv=rv or None)
            if not effects.applied:
                return False
            self._persist(view_key, family, resource, effects)
        return bool(effects.changes)

    def lookup(
        self, component: str, resource: Resource, namespace: str, name: str
    ) -> tuple[bool, dict[str, Any] | None]:
        """(known, object) from the newest view that holds this name.

        known False: no view covers it (we cannot say); object None: it is not there.
        """
        family = self._family(component, resource)
        view = self._book.covering(
            family, namespace=namespace, fields=_parse_fields(f"metadata.name={name}")
        )
        if view is None:
            return False, None
        rv = view.members.get((namespace, name))
        if rv is None:
            return True, None
        return True, self._version(family, resource, (namespace, name), rv)

    def get(self, component: str, resource: Resource, namespace: str, name: str) -> object:
        return self.lookup(component, resource, namespace, name)[1]

    def _version(
        self, family: Family, resource: Resource, pair: Pair, rv: str
    ) -> dict[str, Any] | None:
        key = object_key(family[0], resource, *pair)
        current = self._current_rv(key)
        obj = self._cache.get(key if current == rv else history_key(key, rv))
        if obj is None:
            obj = self._cache.get(key)  # never lose an object a view holds
        return obj if isinstance(obj, dict) else None

    def names(self, component: str, resource: Resource, namespace: str = "") -> list[str]:
        """``(namespace, name)`` pairs held, in the order the API server lists them."""
        pairs = self._names.get((component, resource.key), set())
        chosen = [p for p in pairs if not namespace or p[0] == namespace]
        return [f"{ns}/{name}" for ns, name in sorted(chosen, key=lambda p: sort_key(*p))]

    # ------------------------------------------------------------ views

    @staticmethod
    def _range(scope_component: str, resource: Resource, namespace: str) -> tuple[str, str]:
        """The key range ``[low, high)`` of one component's objects of a resource (and ns)."""
        prefix = object_key(scope_component, resource, namespace, "")
        if not namespace:
            prefix = prefix.removesuffix(f"{NO_NAMESPACE}/")
        return prefix, prefix[:-1] + chr(ord(prefix[-1]) + 1)  # "/" -> "0": just past it

    def view_for(self, scope: Scope) -> View | None:
        return self._book.covering(
            self._family(scope.component, scope.resource),
            namespace=scope.namespace,
            labels=scope.labels,
            fields=scope.fields,
        )

    def view_rv(self, scope: Scope) -> str | None:
        """The resourceVersion of ``scope``'s own view (not a covering one), if it exists."""
        view = self._book.get(scope.key)
        return None if view is None else view.rv

    def coverage_for(self, scope: Scope) -> Coverage | None:
        """The newest view whose list holds every object ``scope`` selects, if any."""
        view = self.view_for(scope)
        return None if view is None else _coverage_of(view)

    def objects(self, scope: Scope, *, view_key: str = "") -> list[dict[str, Any]]:
        """The objects of ``scope`` in one view's snapshot, in API server order.

        The covering view by default; each object at the version that view recorded.
        """
        view = self._book.get(view_key) if view_key else self.view_for(scope)
        if view is None:
            return []
        family = self._family(scope.component, scope.resource)
        out: list[dict[str, Any]] = []
        for pair, rv in sorted(view.members.items(), key=lambda item: sort_key(*item[0])):
            if scope.namespace and pair[0] != scope.namespace:
                continue
            obj = self._version(family, scope.resource, pair, rv)
            if obj is not None and scope.contains(obj):
                out.append(obj)
        return out

    def object_at(self, scope: Scope, pair: Pair, rv: str) -> dict[str, Any] | None:
        return self._version(
            self._family(scope.component, scope.resource), scope.resource, pair, rv
        )

    def list_raw(self, scope: Scope, *, start: str = "", limit: int = 0) -> RawPage:
        """One page of the covering view's snapshot of ``scope`` (empty if none)."""
        view = self.view_for(scope)
        if view is None:
            return RawPage(items=[], last_key="", more=False, remaining=0)
        return self._page(scope, view, start=start, limit=limit)

    def _view_at(self, scope: Scope, at: str) -> View | None:
        """The covering view of ``scope``, if its snapshot is still the one of version ``at``.

        ``at`` empty: any snapshot. Else :class:`SnapshotExpiredError` once anything recorded
        changed since ``at`` (a continued LIST must not mix two snapshots).
        """
        view = self.view_for(scope)
        if view is not None and at and at != view.rv:
            changed = self._book.replay(view.key, at)
            if changed is None or changed or rv_newer(at, view.rv):
                raise SnapshotExpiredError(at)
        return view

    def snapshot(
        self, scope: Scope, *, start: str = "", limit: int = 0, at: str = ""
    ) -> tuple[Coverage, RawPage] | None:
        """The covering view and one page of it, read together (one consistent snapshot).

        ``at``: the resourceVersion a continued LIST started at; the page is served only if
        the view's snapshot is the same as at ``at`` (nothing recorded changed since), else
        :class:`SnapshotExpiredError`.
        """
        view = self._view_at(scope, at)
        if view is None:
            return None
        return _coverage_of(view), self._page(scope, view, start=start, limit=limit)

    def open_list(self, scope: Scope, *, start: str = "", at: str = "") -> ListReader | None:
        """A reader of the covering view's snapshot of ``scope``, whole, read in chunks.

        For an unpaged LIST answered as a stream (``offline.py``): ``at`` and ``start`` as in
        :meth:`snapshot`. The reader holds no SQLite cursor between chunks (other store work
        runs in between); it fails with :class:`SnapshotChangedError` if the view changes
        before its last chunk, so an answer never mixes two snapshots.
        """
        view = self._view_at(scope, at)
        if view is None:
            return None
        low, high = self._range(scope.component, scope.resource, scope.namespace)
        selective = bool(scope.labels.requirements or scope.fields.requirements)
        return ListReader(
            coverage=_coverage_of(view),
            scope=scope,
            view=view,
            seq=view.seq,
            low=low,
            high=high,
            start=start,
            # A continued LIST starts its scan at ``start`` (cluster-scoped keys carry ``_/``).
            seek=low + min(start, f"{NO_NAMESPACE}/{start}") if start else low,
            needles=_needles(scope) if selective else None,
        )

    def read_list(self, reader: ListReader, max_bytes: int) -> list[bytes]:
        """The next items of a streamed LIST (about ``max_bytes`` of text, at least one).

        Empty at the end. :class:`SnapshotChangedError` if the view changed since
        :meth:`open_list`.
        """
        if reader.done:
            return []
        view = reader.view
        if self._book.get(view.key) is not view or view.seq != reader.seq:
            raise SnapshotChangedError(view.key)
        members, low, needles, size = view.members, reader.low, reader.needles, 0
        items: list[bytes] = []
        rows = cast("Generator[tuple[str, str, bytes]]", self._cache.rows(reader.seek, reader.high))
        try:
            for key, rv, stored in rows:
                if size >= max_bytes:
                    reader.seek = key  # the first row of the next chunk
                    return items
                parsed = parse_object_key(key)
                if parsed is None:
                    continue
                member_rv = members.get((parsed[2], parsed[3]))
                if member_rv is None:
                    continue
                relative = key[len(low) :].removeprefix(f"{NO_NAMESPACE}/")
                if relative < reader.start:
                    continue
                text = stored
                if member_rv != rv:  # the view holds an older version than the newest
                    text = self._raw_text(history_key(key, member_rv)) or text
                if needles is not None and not _selected(reader.scope, needles, text):
                    continue
                items.append(text)
                size += len(text)
        finally:
            rows.close()  # ends the SQLite statement now, not at garbage collection
        reader.done = True
        return items

    def _page(self, scope: Scope, view: View, *, start: str, limit: int) -> RawPage:
        """One page of ``view``'s members inside ``scope``, as stored JSON texts.

        Nothing is decoded when the query has no selectors; with selectors, an object is
        decoded only if its text contains every value the selectors require (a necessary
        condition), so a ``spec.nodeName=me`` query over 5,000 pods decodes about 500.
        """
        low, high = self._range(scope.component, scope.resource, scope.namespace)
        selective = bool(scope.labels.requirements or scope.fields.requirements)
        needles = _needles(scope) if selective else []
        members = view.members
        items: list[bytes] = []
        last_key = ""
        # Streamed from SQLite in key order (the API server's order): only this page's texts
        # are held, never the whole range.
        # A continued page starts its scan at ``start`` (cluster-scoped keys carry ``_/``).
        seek = low + min(start, f"{NO_NAMESPACE}/{start}") if start else low
        for key, rv, stored in self._cache.rows(seek, high):
            parsed = parse_object_key(key)
            if parsed is None:
                continue
            pair = (parsed[2], parsed[3])
            member_rv = members.get(pair)
            if member_rv is None:
                continue
            relative = key[len(low) :].removeprefix(f"{NO_NAMESPACE}/")
            if relative < start:
                continue
            if limit and len(items) >= limit and not selective:
                remaining = _members_in(self._cache.key_rvs(key, high), members)
                return RawPage(items=items, last_key=last_key, more=True, remaining=remaining)
            text = stored
            if member_rv != rv:  # the view holds an older version than the newest
                text = self._raw_text(history_key(key, member_rv)) or text
            if selective:
                if not _selected(scope, needles, text):
                    continue
                if limit and len(items) >= limit:
                    return RawPage(items=items, last_key=last_key, more=True, remaining=-1)
            items.append(text)
            last_key = relative
        return RawPage(
            items=items, last_key=last_key, more=False, remaining=0 if not selective else -1
        )

    @contextlib.contextmanager
    def transaction(self) -> Iterator[None]:
        """One SQLite transaction around several calls (theirs join it); rolled back on error.

        For a LIST written in batches (``writethrough.py``): its loose versions and its view's
        membership commit together, or not at all.
        """
        added: list[tuple[Family, Pair]] = []
        self._added = added
        try:
            with self._cache.transact():
                yield
        except BaseException:
            # SQLite forgot the rows; the name index must too, or it lists what is not stored.
            for family, pair in added:
                self._names.get(family, set()).discard(pair)
            raise
        finally:
            self._added = None

    def put_many(self, component: str, resource: Resource, items: list[dict[str, Any]]) -> None:
        """Store one page of a paged LIST; its view records it when the last page arrives.

        Until then the versions are held by no view (a LIST abandoned halfway leaves them
        for the sweep at the next start).
        """
        family = self._family(component, resource)
        with self._cache.transact():
            for obj in items:
                if meta_of(obj).get("name"):
                    self._write_loose(family, resource, obj)

    def _write_loose(self, family: Family, resource: Resource, obj: dict[str, Any]) -> None:
        """Keep a version no view records yet: as the newest, or under ``h/`` if older."""
        meta = meta_of(obj)
        pair = (str(meta.get("namespace", "")), str(meta["name"]))
        key = object_key(family[0], resource, *pair)
        current = self._current_rv(key)
        rv = rv_of(obj)
        if current is None:
            self._set_latest(family, pair, key, obj)
        elif current != rv:
            if rv_newer(rv, current):
                if current in self._book.recorded_versions(family, pair):
                    old = self._cache.get(key)
                    if isinstance(old, dict):
                        self._cache.set(history_key(key, current), old, rv=current)
                self._set_latest(family, pair, key, obj)
            else:
                self._cache.set(history_key(key, rv), obj, rv=rv)

    def replace(
        self,
        scope: Scope,
        items: list[dict[str, Any]],
        coverage: Coverage,
        *,
        seen_before: Mapping[Pair, str] | None = None,
        changes: bool = True,
    ) -> list[Change]:
        """A complete LIST of view ``scope`` at ``coverage.rv``, in one transaction.

        Its membership becomes ``items`` plus ``seen_before`` (earlier pages' pair -> rv;
        their versions stored already by ``put_many``).

        Returns the view's changes as watch events (empty if the list was older than the
        view, or if ``changes`` is False: a caller that drops them need not have every
        changed object read back into memory). Objects that left this view stay stored
        while another view records them.
        """
        family = self._family(scope.component, scope.resource)
        spec = _spec_of(family, coverage)
        named = {
            (str(meta_of(o).get("namespace", "")), str(meta_of(o)["name"])): o
            for o in items
            if meta_of(o).get("name")
        }
        members = dict(seen_before or {})
        members.update({pair: rv_of(obj) for pair, obj in named.items()})
        with self._cache.transact():
            old = self._book.get(scope.key)
            before = dict(old.members) if old is not None else {}
            effects = self._book.list_done(scope.key, spec, members, rv=coverage.rv)
            if not effects.applied:
                return []
            # Only versions this view did not record yet: a re-list that changed nothing
            # writes nothing (the same 5,000 pods every minute cost no disk work).
            for pair, _rv in effects.recorded:
                if pair in named:
                    self._write_version(family, scope.resource, named[pair])
            found = [
                self._change(scope, event, before, named)
                for event in (effects.changes if changes else [])
            ]
            self._persist(scope.key, family, scope.resource, effects)
        return [c for c in found if c is not None]

    def _change(
        self,
        scope: Scope,
        event: Event,
        before: Mapping[Pair, str],
        named: Mapping[Pair, dict[str, Any]],
    ) -> Change | None:
        rv = before.get(event.pair, "") if event.type == "DELETED" else event.rv
        listed = named.get(event.pair)
        if listed is not None and rv and rv_of(listed) == rv:
            return Change(type=event.type, obj=listed)  # the LIST's own object: not read back
        obj = self.object_at(scope, event.pair, rv) if rv else None
        if obj is None:
            obj = _stub(self._book.get(scope.key), scope, event.pair, event.rv)
        return Change(type=event.type, obj=obj)

    def has_view(self, scope: Scope) -> bool:
        """In memory only (any thread): has ``scope`` been listed (is it a view)?"""
        return self._book.get(scope.key) is not None

    def holds_list(self, scope: Scope, rv: str) -> bool:
        """In memory only (any thread): would a whole LIST of ``scope`` at ``rv`` change nothing?

        True when ``scope``'s own view is complete at ``rv`` or newer (rule 1 of ``views.py``:
        the same snapshot again, or an older one, records nothing).
        """
        view = self._book.get(scope.key)
        return view is not None and bool(rv) and not rv_newer(rv, view.rv)

    def would_record(self, scope: Scope, rv: str, *, prev: str) -> bool:
        """In memory only (any thread): would a watch line at ``rv`` change view ``scope``?"""
        return self._book.would_record(scope.key, rv, prev=prev)

    def apply_event(self, scope: Scope, kind: str, obj: dict[str, Any], *, prev: str) -> bool:
        """A watch event of view ``scope`` whose stream delivered ``prev`` before it."""
        meta = meta_of(obj)
        pair = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if not pair[1]:
            return False
        family = self._family(scope.component, scope.resource)
        with self._cache.transact():
            effects = self._book.event(scope.key, kind, pair, rv_of(obj), prev=prev)
            if not effects.applied:
                return False
            if kind != "DELETED":
                self._write_version(family, scope.resource, obj)
            self._persist(scope.key, family, scope.resource, effects)
        return True

    def advance(self, scope: Scope, rv: str, *, prev: str) -> None:
        """A BOOKMARK of view ``scope``'s watch: the view is complete at ``rv``."""
        if self._book.bookmark(scope.key, rv, prev=prev):
            view = self._book.get(scope.key)
            assert view is not None  # noqa: S101 - the book just moved it
            self._cache.set(scope.key, _coverage_of(view).to_json())

    def replay(self, scope: Scope, view_key: str, since: str) -> list[Change] | None:
        """The changes of view ``view_key`` after ``since`` inside ``scope``; None: 410 Gone.

        An object that changed but is no longer inside ``scope`` (a narrower query than the
        view) is sent as DELETED: it left the watcher's view.
        """
        events = self._book.replay(view_key, since)
        if events is None:
            return None
        out: list[Change] = []
        for event in events:
            obj = None if event.type == "DELETED" else self.object_at(scope, event.pair, event.rv)
            if obj is None:
                stub = _stub(self._book.get(view_key), scope, event.pair, event.rv)
                out.append(Change(type="DELETED", obj=stub))
            elif scope.contains(obj):
                out.append(Change(type=event.type, obj=obj))
            elif event.type != "ADDED":
                out.append(Change(type="DELETED", obj=obj))
        return out

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
        yield from self._cache.keys()

    def raw_get(self, key: str) -> object:
        return self._cache.get(key)

    def raw_delete(self, key: str) -> None:
        self._cache.delete(key)

    def check(self) -> list[str]:
        """SQLite's integrity check (empty when sound)."""
        return self._cache.check()

    def volume(self) -> int:
        return self._cache.volume()

    def object_count(self) -> int:
        return sum(len(names) for names in self._names.values())

    def pending_count(self) -> int:
        return len(self._pending)

    def index_summary(self) -> dict[str, int]:
        return {f"{c}/{r}": len(n) for (c, r), n in sorted(self._names.items()) if n}

    def coverage_summary(self) -> list[Coverage]:
        return [_coverage_of(view) for view in self._book.views.values()]


@dataclass(kw_only=True, slots=True)
class ListReader:
    """Where a streamed LIST is in one view's snapshot (:meth:`CacheStore.read_list`).

    Holds no SQLite cursor: each chunk is a fresh range scan from ``seek``. ``seq`` is the
    view's change count when the read began; unchanged, every version the view records is
    still stored, so the chunks together are exactly one snapshot.
    """

    coverage: Coverage
    scope: Scope
    view: View
    seq: int
    low: str
    high: str
    start: str
    seek: str
    needles: list[tuple[bytes, ...]] | None
    """None: no selectors (nothing decoded)."""
    done: bool = False


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


class SnapshotExpiredError(Exception):
    """A continued LIST's snapshot is no longer the cache's (answer 410 Expired)."""


class SnapshotChangedError(Exception):
    """The view a streamed LIST was reading changed before its end (the answer is cut)."""


def history_key(object_key_: str, rv: str) -> str:
    """``h/<component>/<gvr>/<ns>/<name>/<rv>``: an older version some view records."""
    return f"h/{object_key_[2:]}/{rv}"


def member_key(view_key: str, pair: Pair) -> str:
    """``v/<view key without c/>/<ns or _>/<name>``: one member of a view (``rv``: its version)."""
    return f"v/{view_key[2:]}/{pair[0] or NO_NAMESPACE}/{pair[1]}"


def parse_member_key(key: str) -> tuple[str, Pair] | None:
    parts = key.split("/")
    if len(parts) != 7 or parts[0] != "v":
        return None
    view_key = "c/" + "/".join(parts[1:5])
    namespace = "" if parts[5] == NO_NAMESPACE else parts[5]
    return view_key, (namespace, parts[6])


def _spec_of(family: Family, coverage: Coverage) -> ViewSpec:
    return ViewSpec(
        family=family,
        namespace=coverage.namespace,
        labels=coverage.labels,
        fields=coverage.fields,
        list_kind=coverage.list_kind,
        api_version=coverage.api_version,
        items_have_kind=coverage.items_have_kind,
    )


def _coverage_of(view: View) -> Coverage:
    spec = view.spec
    return Coverage(
        scope_key=view.key,
        namespace=spec.namespace,
        labels=spec.labels,
        fields=spec.fields,
        rv=view.rv,
        list_kind=spec.list_kind,
        api_version=spec.api_version,
        items_have_kind=spec.items_have_kind,
    )


def _stub(view: View | None, scope: Scope, pair: Pair, rv: str) -> dict[str, Any]:
    """What a DELETED event carries when the object's last state is no longer stored."""
    meta: dict[str, Any] = {"name": pair[1], "resourceVersion": rv}
    if pair[0]:
        meta["namespace"] = pair[0]
    list_kind = view.spec.list_kind if view is not None else ""
    api_version = (view.spec.api_version if view is not None else "") or scope.resource.api_version
    return {"apiVersion": api_version, "kind": list_kind.removesuffix("List"), "metadata": meta}


def _members_in(rows: Iterable[tuple[str, str]], members: Mapping[Pair, str]) -> int:
    """How many of these object rows (key first) are members of a view."""
    count = 0
    for row in rows:
        parsed = parse_object_key(row[0])
        count += parsed is not None and (parsed[2], parsed[3]) in members
    return count


def _selected(scope: Scope, needles: list[tuple[bytes, ...]], text: bytes) -> bool:
    """The stored object ``text`` is inside ``scope`` (decoded only if the needles are in it)."""
    if not all(any(n in text for n in group) for group in needles):
        return False
    obj = json.loads(text)
    return isinstance(obj, dict) and scope.contains(obj)
