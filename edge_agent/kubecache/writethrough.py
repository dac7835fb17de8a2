# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Writing answers forwarded online into the cache (after they went to the client).

GET / create / update / patch answers record the object in its single-object view; a GET's
404 and a DELETE's Status empty that view; a LIST sets its view's membership, and a paged
LIST does so once its last page arrived (``store.py``, ``views.py``).
"""

from __future__ import annotations

import asyncio
import json
import re
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.keys import Verb
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.store import Coverage, Scope, meta_of, rv_of
from fleet_model.labels import SelectorError, parse_label_selector

_LIST_HEAD = re.compile(
    rb'\{"kind":"[A-Za-z0-9]+List","apiVersion":"[A-Za-z0-9./-]+",'
    rb'"metadata":\{"resourceVersion":"([0-9]{1,20})"\},"items":\['
)
"""The start of a whole LIST as the API server writes it (no ``continue``): its version."""


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

    async def apply(self, call: Call, status: int, data: bytes) -> None:
        verb = call.info.verb
        if verb is Verb.GET and status == 404 and not call.info.subresource:
            await self.store.run(
                "delete",
                lambda s: s.delete(
                    call.component, call.resource, call.info.namespace, call.info.name
                ),
            )
            return
        if status not in {200, 201}:
            return
        if verb is Verb.LIST and status == 200 and self._unchanged_list(call, data):
            return
        try:
            # Off the event loop: a LIST of 5,000 pods is megabytes of JSON.
            body = (
                await asyncio.to_thread(json.loads, data) if len(data) > 65536 else json.loads(data)
            )
        except ValueError:
            return
        if not isinstance(body, dict):
            return
        if verb is Verb.LIST:
            await self._cache_list(call, body)
        elif verb is Verb.DELETE:
            await self._cache_delete(call, body)
        elif body.get("kind") != "Status":
            await self.store.run("put", lambda s: s.put(call.component, call.resource, body))

    def _unchanged_list(self, call: Call, data: bytes) -> bool:
        """A whole (unpaged) LIST at a resourceVersion its view already holds: skip it undecoded.

        A node's components re-list the same thousands of objects; decoding megabytes of
        JSON only to learn that nothing changed is what lifted the agent's memory and CPU
        (issue 18). Only the API server's plain envelope is recognised; anything else is
        decoded as before.
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

    async def _cache_list(self, call: Call, body: dict[str, Any]) -> None:
        try:
            scope = scope_of(call, max_selector_length=self.settings.max_selector_length)
        except SelectorError:
            return
        items = body.get("items")
        if not isinstance(items, list):
            return
        list_kind = str(body.get("kind", ""))
        api_version = str(body.get("apiVersion", call.resource.api_version))
        have_kind = bool(items) and isinstance(items[0], dict) and "kind" in items[0]
        if not items:
            have_kind = "." in call.resource.group and not call.resource.group.endswith("k8s.io")
        kind = list_kind.removesuffix("List")
        objects = [
            {"kind": kind, "apiVersion": api_version, **item}
            for item in items
            if isinstance(item, dict)
        ]
        meta = body.get("metadata") if isinstance(body.get("metadata"), dict) else {}
        assert isinstance(meta, dict)  # noqa: S101 - narrowed just above
        token = str(meta.get("continue") or "")
        paging = self._paging.pop(call.request.query.get("continue", ""), None)
        if call.request.query.get("continue") and (paging is None or paging.scope != scope):
            await self.store.run(
                "put_many", lambda s: s.put_many(call.component, call.resource, objects)
            )
            return  # a page of a LIST whose start we did not see: no claim of completeness
        paging = paging or _Paging(scope=scope)
        if token:
            await self.store.run(
                "put_many", lambda s: s.put_many(call.component, call.resource, objects)
            )
            paging.seen.update(
                ((str(meta_of(o).get("namespace", "")), str(meta_of(o).get("name", ""))), rv_of(o))
                for o in objects
                if meta_of(o).get("name")
            )
            self._paging[token] = paging
            while len(self._paging) > self.settings.max_paged_lists:
                self._paging.popitem(last=False)
            return
        coverage = Coverage(
            scope_key=scope.key,
            namespace=scope.namespace,
            labels=str(scope.labels),
            fields=str(scope.fields),
            rv=str(meta.get("resourceVersion", "")),
            list_kind=list_kind,
            api_version=api_version,
            items_have_kind=have_kind,
        )
        seen = dict(paging.seen)
        await self.store.run(
            "replace", lambda s: s.replace(scope, objects, coverage, seen_before=seen)
        )
