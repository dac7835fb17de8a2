# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Writing answers forwarded online into the cache (after they went to the client).

GET / create / update / patch answers record the object in its single-object view; a GET's
404 and a DELETE's Status empty that view; a LIST sets its view's membership, and a paged
LIST does so once its last page arrived (``store.py``, ``views.py``).

A LIST is never decoded whole (issue 18: 5,000 pods decoded at once lifted the agent from
about 60 to 147 MiB). Its kept copy (``forward.Kept``) is read back on the disk thread
``READ_CHUNK_BYTES`` at a time, split into items (``itemstream.py``), and each chunk's
items are stored as versions no view records yet; the view's membership is set at the end,
in the same SQLite transaction. So memory is one chunk's items plus the members'
``(namespace, name) -> resourceVersion``, and a body that turns out bad, or a crash halfway,
leaves the cache as it was: never a half-written list marked complete.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import logging
import re
from collections import OrderedDict
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.forward import Kept
from edge_agent.kubecache.itemstream import ItemSplitter, ListFormatError
from edge_agent.kubecache.keys import Verb
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.store import CacheStore, Coverage, Scope, meta_of, rv_of
from edge_agent.kubecache.views import Pair
from fleet_model.labels import SelectorError, parse_label_selector

log = logging.getLogger("edge_agent.kubecache.writethrough")

READ_CHUNK_BYTES = 256 * 1024
"""Kept LIST text split per step: the write-through's memory bound (about 100 pods decoded
at a time), and the size of the cuts the splitter sees (never the network's: a peer
sending one byte at a time cannot make it re-scan an unfinished item per byte)."""

_LIST_HEAD = re.compile(
    rb'\{"kind":"[A-Za-z0-9]+List","apiVersion":"[A-Za-z0-9./-]+",'
    rb'"metadata":\{"resourceVersion":"([0-9]{1,20})"\},"items":\['
)
"""The start of a whole LIST as the API server writes it (no ``continue``): its version."""


class _Unchanged(Exception):  # noqa: N818 - rolls the LIST's transaction back
    """The view already holds this LIST's snapshot (or a newer one): keep nothing of it."""


@dataclass(frozen=True, slots=True, kw_only=True)
class _Page:
    """What one stored LIST answer says about paging."""

    token: str
    """Its ``continue`` token (empty: the last or only page)."""
    members: dict[Pair, str]
    """``(namespace, name) -> resourceVersion`` of its items."""


@dataclass(slots=True)
class _Paging:
    scope: Scope
    seen: dict[tuple[str, str], str] = field(default_factory=dict)
    """``(namespace, name) -> resourceVersion`` of the earlier pages' items."""


def scope_of(call: Call, *, max_selector_length: int) -> Scope:
    """The scope a LIST or WATCH asks for; raises SelectorError on a bad selector."""
    query = call.request.query
    return Scope(
        component=call.component,
        resource=call.resource,
        namespace=call.info.namespace,
        labels=parse_label_selector(query.get("labelSelector", ""), max_length=max_selector_length),
        fields=parse_field_selector(query.get("fieldSelector", ""), max_length=max_selector_length),
    )


class WriteThrough:
    """Applies forwarded answers to the cache; remembers paged LISTs until their last page."""

    def __init__(self, *, store: AsyncStore, settings: KubeCacheSettings) -> None:
        self.store = store
        self.settings = settings
        self._paging: OrderedDict[str, _Paging] = OrderedDict()

    async def apply(self, call: Call, status: int, kept: Kept) -> None:
        """Write what one answer teaches the cache; closes ``kept``."""
        try:
            if call.info.verb is Verb.LIST and status == 200:
                await self._apply_list(call, kept)
            else:
                await self._apply_one(call, status, kept.read())
        finally:
            kept.close()

    async def _apply_one(self, call: Call, status: int, data: bytes) -> None:
        verb = call.info.verb
        if verb is Verb.GET and status == 404 and not call.info.subresource:
            await self.store.run(
                "delete",
                lambda s: s.delete(
                    call.component, call.resource, call.info.namespace, call.info.name
                ),
            )
            return
        if status not in {200, 201} or verb is Verb.LIST:
            return
        try:
            body = (
                await asyncio.to_thread(json.loads, data) if len(data) > 65536 else json.loads(data)
            )
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if verb is Verb.DELETE:
            await self._cache_delete(call, body)
        elif body.get("kind") != "Status":
            await self.store.run("put", lambda s: s.put(call.component, call.resource, body))

    def _unchanged_list(self, call: Call, data: bytes) -> bool:
        """A whole (unpaged) LIST at a resourceVersion its view already holds: skip it undecoded.

        A node's components re-list the same thousands of objects; decoding megabytes of
        JSON only to learn that nothing changed is what lifted the agent's memory and CPU
        (issue 18). Only the API server's plain envelope is recognised here, from the
        answer's first bytes; the disk thread checks again once it read the envelope.
        """
        if "continue" in call.request.query:
            return False
        head = _LIST_HEAD.match(data, 0, 512)
        if head is None:
            return False
        try:
            scope = scope_of(call, max_selector_length=self.settings.max_selector_length)
        except SelectorError:
            return False
        rv = head[1].decode()
        return self.store.peek(lambda s: s.holds_list(scope, rv))

    async def _cache_delete(self, call: Call, body: dict[str, Any]) -> None:
        if body.get("kind") != "Status" and meta_of(body).get("deletionTimestamp"):
            await self.store.run("put", lambda s: s.put(call.component, call.resource, body))
            return
        await self.store.run(
            "delete",
            lambda s: s.delete(call.component, call.resource, call.info.namespace, call.info.name),
        )

    async def _apply_list(self, call: Call, kept: Kept) -> None:
        if self._unchanged_list(call, kept.head(512)):
            return
        try:
            scope = scope_of(call, max_selector_length=self.settings.max_selector_length)
        except SelectorError:
            return
        asked = call.request.query.get("continue", "")
        paging = self._paging.pop(asked, None)
        if asked and (paging is None or paging.scope != scope):
            paging = None  # a page of a LIST whose start we did not see: no claim of completeness
        elif paging is None:
            paging = _Paging(scope=scope)
        prior = paging.seen if paging is not None else None
        whole = not asked
        page = await self.store.run(
            "list",
            lambda s: self._store_list(s, call, scope, kept, prior=prior, whole=whole),
        )
        if page is None or not page.token or paging is None:
            return
        paging.seen.update(page.members)
        self._paging[page.token] = paging
        while len(self._paging) > self.settings.max_paged_lists:
            self._paging.popitem(last=False)

    def _store_list(
        self,
        store: CacheStore,
        call: Call,
        scope: Scope,
        kept: Kept,
        *,
        prior: Mapping[Pair, str] | None,
        whole: bool,
    ) -> _Page | None:
        """On the disk thread: store one LIST answer in one transaction (see the rules).

        ``prior``: the earlier pages' members (None: a page whose start was not seen, stored
        without any claim); ``whole``: no ``continue`` was asked (the first or only page).
        None when nothing was kept (a bad body, or a snapshot the view already holds).
        """
        try:
            with store.transaction():
                return self._write_list(store, call, scope, kept, prior=prior, whole=whole)
        except _Unchanged:
            return None
        except ListFormatError as exc:
            log.info("%s: LIST answer not cached: %s", call.request.path, exc)
            return None

    def _write_list(
        self,
        store: CacheStore,
        call: Call,
        scope: Scope,
        kept: Kept,
        *,
        prior: Mapping[Pair, str] | None,
        whole: bool,
    ) -> _Page:
        """The body of ``_store_list``, inside its transaction; raises to roll it back."""
        splitter = ItemSplitter(max_item_chars=self.settings.max_watch_event_bytes)
        members: dict[Pair, str] = {}
        items = _items(kept, splitter)
        first = next(items, None)
        if first is not None and not _has_head(splitter.envelope):
            # The kind after the items (no API server writes that): hold them all.
            items = iter([first, *items])
        elif first is not None:
            if whole and _held(store, scope, splitter.envelope):
                raise _Unchanged
            items = itertools.chain([first], items)
        self._store_items(store, call, splitter, items, members)
        envelope = splitter.envelope
        meta = envelope.get("metadata")
        token = str(meta.get("continue") or "") if isinstance(meta, dict) else ""
        if token or prior is None:
            return _Page(token=token, members=members)
        coverage = self._coverage(call, scope, envelope, have_kind=_have_kind(call, first))
        if store.holds_list(scope, coverage.rv):
            raise _Unchanged
        store.replace(scope, [], coverage, seen_before={**prior, **members}, changes=False)
        return _Page(token="", members=members)

    def _store_items(
        self,
        store: CacheStore,
        call: Call,
        splitter: ItemSplitter,
        items: Iterator[dict[str, Any]],
        members: dict[Pair, str],
    ) -> None:
        """Store each item as a version no view records yet, one read chunk at a time."""
        envelope = splitter.envelope
        kind = str(envelope.get("kind", "")).removesuffix("List")
        api_version = str(envelope.get("apiVersion", call.resource.api_version))
        batch: list[dict[str, Any]] = []
        for item in items:
            if not isinstance(item, dict):
                continue
            obj = {"kind": kind, "apiVersion": api_version, **item}
            meta = meta_of(obj)
            if not meta.get("name"):
                continue
            members[(str(meta.get("namespace", "")), str(meta["name"]))] = rv_of(obj)
            batch.append(obj)
            if len(batch) >= _BATCH:
                store.put_many(call.component, call.resource, batch)
                batch = []
        if batch:
            store.put_many(call.component, call.resource, batch)

    def _coverage(
        self, call: Call, scope: Scope, envelope: Mapping[str, Any], *, have_kind: bool
    ) -> Coverage:
        meta = envelope.get("metadata")
        meta = meta if isinstance(meta, dict) else {}
        list_kind = str(envelope.get("kind", ""))
        return Coverage(
            scope_key=scope.key,
            namespace=scope.namespace,
            labels=str(scope.labels),
            fields=str(scope.fields),
            rv=str(meta.get("resourceVersion", "")),
            list_kind=list_kind,
            api_version=str(envelope.get("apiVersion", call.resource.api_version)),
            items_have_kind=have_kind,
        )


_BATCH = 256
"""Items per ``put_many`` call inside the LIST's transaction (bounds the decoded batch when
one read chunk holds many small items)."""


def _items(kept: Kept, splitter: ItemSplitter) -> Iterator[dict[str, Any]]:
    for chunk in kept.chunks(READ_CHUNK_BYTES):
        yield from splitter.feed(chunk)
    yield from splitter.close()


def _has_head(envelope: Mapping[str, Any]) -> bool:
    return isinstance(envelope.get("kind"), str) and "apiVersion" in envelope


def _held(store: CacheStore, scope: Scope, envelope: Mapping[str, Any]) -> bool:
    """The first page's envelope says: a whole LIST the view already holds (skip it)."""
    meta = envelope.get("metadata")
    if not isinstance(meta, dict) or meta.get("continue"):
        return False
    return store.holds_list(scope, str(meta.get("resourceVersion", "")))


def _have_kind(call: Call, first: object) -> bool:
    """Whether the API server writes ``kind`` in this list's items.

    It does for custom resources, not for built-in ones; an empty list guesses from the group.
    """
    if first is not None:
        return isinstance(first, dict) and "kind" in first
    group = call.resource.group
    return "." in group and not group.endswith("k8s.io")
