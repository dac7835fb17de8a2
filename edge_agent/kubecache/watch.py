# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""WATCH through the proxy: one client stream that survives the upstream going away.

A client watch is a loop of phases on one HTTP response:

* upstream phase (online): watch upstream from the last resourceVersion, with bookmarks
  requested. Each line is forwarded byte for byte, then recorded in the watch's *view*
  (``views.py``) if its stream is continuous from the view's resourceVersion (a watch from
  the past, or from after a gap, records nothing); bookmarks reach the client only if it
  asked for them. An upstream that ends normally is re-watched from the last
  resourceVersion. A 410 Gone (HTTP or ERROR event) re-lists upstream into the view and
  sends this client what the view recorded since *its* resourceVersion; if the view cannot
  replay from there, the client gets the 410 and re-lists, as with the API server.
* local phase (offline): serve the cache. A watch that *starts* offline replays the newest
  view covering it (ADDED for ``resourceVersion`` unset or 0; else what changed since, and a
  410 Expired ERROR event if that was not recorded, e.g. after a restart); then every local
  change (heartbeats answered locally) and a BOOKMARK every ``bookmark_interval``. When the
  health checker says online, the upstream phase resumes from the last resourceVersion, so
  changes made in the cloud during the outage arrive.

The first upstream answer that is not 200 is relayed as is (403, 400...), before the client
response starts. A resume refused later with a client error other than 410 and 429 (404: the
CRD was deleted) ends the client's stream, as the API server ends it; it is no health failure.
The client's ``timeoutSeconds`` bounds the whole stream.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import aiohttp
from aiohttp import web

from edge_agent.kubecache.call import Call
from edge_agent.kubecache.health import State
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.store import (
    CacheStore,
    Change,
    Coverage,
    Scope,
    meta_of,
    rv_newer,
    rv_of,
)
from edge_agent.kubecache.wire import (
    LineSplitter,
    LineTooLongError,
    Representation,
    offline_status,
    status_object,
)
from fleet_model.labels import SelectorError

log = logging.getLogger("edge_agent.kubecache.watch")

_INITIAL_EVENTS_END = "k8s.io/initial-events-end"
_POLL = 1.0
"""Seconds between checks of the health state and the client's connection while waiting."""


class GoneError(Exception):
    """The upstream no longer has the resourceVersion we resume from."""


class UpstreamLostError(Exception):
    """The upstream watch broke (connection, inactivity, the health checker said offline)."""


class ClientGoneError(Exception):
    """The client closed its side."""


class ClientMustRelistError(Exception):
    """The client was sent 410 Expired: its resourceVersion cannot be replayed."""


def _gone_line(rv: str) -> bytes:
    """The ERROR event the API server sends for a watch from a version it cannot replay."""
    status = status_object(410, "Expired", f"too old resource version: {rv}")
    return json.dumps({"type": "ERROR", "object": status}, separators=(",", ":")).encode() + b"\n"


class ResumeRefusedError(Exception):
    """The upstream refused the resume with a client error other than 410 or 429 (e.g. 404)."""


def _event_line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}, separators=(",", ":")).encode() + b"\n"


async def serve(shared: Shared, call: Call) -> web.StreamResponse:
    cacheable = call.cacheable or (
        call.cached_agent
        and call.info.is_resource
        and call.representation is Representation.PREFERS_TRANSFORMED
        and not shared.health.online
    )
    if not cacheable:
        return await _passthrough(shared, call)
    try:
        scope = shared.scope_of(call)
    except SelectorError as exc:
        return web.json_response(status_object(400, "BadRequest", str(exc)), status=400)
    session = WatchSession(shared, call, scope)
    shared.metrics.watches.labels(mode="cached").inc()
    try:
        return await session.run()
    finally:
        shared.metrics.watches.labels(mode="cached").dec()


async def _passthrough(shared: Shared, call: Call) -> web.StreamResponse:
    """Uncached watch (protobuf-only client, or a component not cached): bytes as they come."""
    if not shared.health.online:
        body = offline_status("this watch cannot be served from the cache", retry_after=10)
        return web.json_response(body, status=503)
    shared.metrics.watches.labels(mode="passthrough").inc()
    try:
        async with shared.upstream.session.get(
            shared.upstream_url(call.request.path_qs),
            headers=shared.upstream_headers(call, accept=None),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=shared.settings.connect_timeout),
        ) as upstream:
            return await shared.stream_back(call.request, upstream)
    except (aiohttp.ClientConnectionError, TimeoutError) as exc:
        await shared.health.report_failure(f"{type(exc).__name__}: {exc}")
        body = offline_status("this watch could not be opened upstream", retry_after=10)
        return web.json_response(body, status=503)
    finally:
        shared.metrics.watches.labels(mode="passthrough").dec()


def _check_resumed(status: int) -> None:
    if status == 410:
        raise GoneError
    if 400 <= status < 500 and status != 429:
        raise ResumeRefusedError(f"HTTP {status} on resume")
    if status != 200:
        raise UpstreamLostError(f"HTTP {status} on resume")


class WatchSession:
    def __init__(self, shared: Shared, call: Call, scope: Scope) -> None:
        self.shared = shared
        self.call = call
        self.scope = scope
        query = call.request.query
        self.rv = query.get("resourceVersion", "")
        self.continuous = self.rv not in {"", "0"}
        """The stream holds every change after ``self.rv``. Not so for a watch from "any" (unset
        or 0): it starts with the state at some later version as ADDED events, without the
        deletions in between, so it may feed its view only after a (streamed) list."""
        self.bookmarks = query.get("allowWatchBookmarks", "").lower() in {"1", "true"}
        self.send_initial = query.get("sendInitialEvents", "").lower() == "true"
        timeout = query.get("timeoutSeconds", "")
        loop = asyncio.get_running_loop()
        self.deadline = loop.time() + int(timeout) if timeout.isdigit() and int(timeout) else None
        self.response: web.StreamResponse | None = None
        self.kind = ""
        self.api_version = call.resource.api_version
        self.first = True
        self.initial: dict[tuple[str, str], str] | None = {} if self.send_initial else None
        """Members of a streamed initial list (``sendInitialEvents``) until its bookmark."""

    # ------------------------------------------------------------ loop

    async def run(self) -> web.StreamResponse:
        # The client's LIST (answered just before) must be in the cache first: a view that
        # does not exist yet cannot record this watch's events, and would never catch up.
        await self.shared.flush_writes()
        try:
            async with asyncio.timeout_at(self.deadline):
                while True:
                    if self.shared.health.online:
                        early = await self._upstream_phase()
                        if early is not None:
                            return early
                    else:
                        early = await self._local_phase()
                        if early is not None:
                            return early
        except TimeoutError:
            pass  # the client's timeoutSeconds elapsed: end the stream as the API server does
        except ClientGoneError:
            log.debug("watch client of %s went away", self.scope.resource.key)
        except ClientMustRelistError:
            pass  # the 410 went out as an ERROR event: the stream ends, as upstream's would
        if self.response is None:
            self.response = await self._prepare()
        return self.response

    async def _prepare(self) -> web.StreamResponse:
        response = web.StreamResponse(status=200, headers={"Content-Type": "application/json"})
        response.enable_chunked_encoding()
        await response.prepare(self.call.request)
        return response

    async def _send(self, line: bytes) -> None:
        if self.response is None:
            self.response = await self._prepare()
        try:
            await self.response.write(line)
        except (ConnectionResetError, aiohttp.ClientConnectionResetError) as exc:
            raise ClientGoneError from exc

    def _client_gone(self) -> bool:
        transport = self.call.request.transport
        return transport is None or transport.is_closing()

    # ------------------------------------------------------------ upstream phase

    def _upstream_params(self) -> dict[str, str]:
        params = dict(self.call.request.query)
        params["watch"] = "true"
        params["allowWatchBookmarks"] = "true"
        if self.rv:
            params["resourceVersion"] = self.rv
        else:
            params.pop("resourceVersion", None)
        if not self.first:
            params.pop("sendInitialEvents", None)
            params.pop("resourceVersionMatch", None)
        if self.deadline is not None:
            remaining = self.deadline - asyncio.get_running_loop().time()
            params["timeoutSeconds"] = str(max(1, int(remaining)))
        return params

    async def _upstream_phase(self) -> web.StreamResponse | None:
        shared = self.shared
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=shared.settings.connect_timeout,
            sock_read=shared.settings.watch_inactivity_timeout,
        )
        try:
            async with shared.upstream.session.get(
                shared.upstream_url(self.call.request.path),
                params=self._upstream_params(),
                headers=shared.upstream_headers(self.call, accept="application/json"),
                timeout=timeout,
            ) as upstream:
                if upstream.status != 200 and self.response is None:
                    body = await upstream.read()
                    return web.Response(
                        body=body, status=upstream.status, content_type="application/json"
                    )
                _check_resumed(upstream.status)
                if self.response is None:
                    self.response = await self._prepare()
                shared.metrics.requests.labels(verb="watch", source="upstream").inc()
                await self._pump(upstream)
        except GoneError:
            await self._relist()
        except ResumeRefusedError as exc:
            # The API server answered, so it is reachable: not a health failure. It will not
            # resume this watch (its CRD was deleted: 404). End the stream as the API server
            # ends it; the client's next request gets the answer itself.
            log.info("watch of %s not resumed: %s", self.scope.resource.key, exc)
            return self.response
        except (UpstreamLostError, aiohttp.ClientError, TimeoutError, LineTooLongError) as exc:
            if isinstance(exc, TimeoutError) and self._past_deadline():
                raise
            await shared.health.report_failure(f"watch: {type(exc).__name__}: {exc}")
            if shared.health.online:
                await asyncio.sleep(min(_POLL, shared.settings.health.interval))
        self.first = False
        return None

    def _past_deadline(self) -> bool:
        return self.deadline is not None and asyncio.get_running_loop().time() >= self.deadline

    async def _pump(self, upstream: aiohttp.ClientResponse) -> None:
        splitter = LineSplitter.create(self.shared.settings.max_watch_event_bytes)
        while True:
            try:
                async with asyncio.timeout(_POLL):
                    chunk = await upstream.content.readany()
            except TimeoutError:
                if self._past_deadline():
                    raise
                if not self.shared.health.online:
                    raise UpstreamLostError("health checker says offline") from None
                if self._client_gone():
                    raise ClientGoneError from None
                continue
            if not chunk:
                return  # the upstream ended the watch (its timeout): resume from self.rv
            for line in splitter.feed(chunk):
                await self._on_line(line)

    async def _on_line(self, line: bytes) -> None:
        try:
            event = json.loads(line)
            kind = str(event["type"])
            obj = event["object"]
        except (ValueError, KeyError, TypeError):
            log.warning("skipping a watch line that is not an event (%s bytes)", len(line))
            return
        if not isinstance(obj, dict):
            return
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise GoneError
            await self._send(line)
            raise UpstreamLostError(f"ERROR event: {obj.get('message')}")
        # Forward first: the client should not wait for the disk. The cache write follows
        # on this same coroutine, so no later event or offline answer can overtake it.
        if kind != "BOOKMARK" or self.bookmarks:
            await self._send(line)
        # Shielded: a client that leaves right after this line (aiohttp then cancels the
        # handler) must not leave the event forwarded but unrecorded in the view.
        await asyncio.shield(self._apply(kind, obj))

    async def _apply(self, kind: str, obj: dict[str, Any]) -> None:
        """Record the event in this watch's view, if its stream feeds it (views.py rule 1)."""
        shared, scope = self.shared, self.scope
        rv = rv_of(obj)
        prev = self.rv if self.continuous else ""  # "": nothing is recorded (views rule 1)
        self.kind = self.kind or str(obj.get("kind", ""))
        meta = meta_of(obj)
        pair = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if self.initial is not None and kind in {"ADDED", "MODIFIED"}:
            # Part of a streamed initial list: kept now, recorded by the view at its end.
            await shared.store.run(
                "put_many", lambda s: s.put_many(scope.component, scope.resource, [obj])
            )
            self.initial[pair] = rv
        elif kind in {"ADDED", "MODIFIED", "DELETED"}:
            if await self._may_record(rv, prev):
                await shared.store.run(
                    "event", lambda s: s.apply_event(scope, kind, obj, prev=prev)
                )
        elif kind == "BOOKMARK":
            annotations = meta.get("annotations") or {}
            if self.initial is not None and annotations.get(_INITIAL_EVENTS_END) == "true":
                await self._finish_initial_events(rv)
            elif await self._may_record(rv, prev):
                await shared.store.run("advance", lambda s: s.advance(scope, rv, prev=prev))
        if rv and (not self.rv or rv_newer(rv, self.rv)):
            self.rv = rv

    async def _may_record(self, rv: str, prev: str) -> bool:
        """Whether this line can change the watch's view, asked without the disk thread.

        If the view does not exist yet, the client's LIST may still be queued behind its
        answer (the WATCH can arrive before that LIST's write-through was queued): wait for
        the queue once, or this watch would never feed the view.
        """
        store, scope = self.shared.store, self.scope
        if store.peek(lambda s: s.would_record(scope, rv, prev=prev)):
            return True
        if prev and not store.peek(lambda s: s.has_view(scope)):
            await self.shared.flush_writes()
            return store.peek(lambda s: s.would_record(scope, rv, prev=prev))
        return False

    def _coverage(self, rv: str, list_kind: str, api_version: str, *, have_kind: bool) -> Coverage:
        scope = self.scope
        return Coverage(
            scope_key=scope.key,
            namespace=scope.namespace,
            labels=str(scope.labels),
            fields=str(scope.fields),
            rv=rv,
            list_kind=list_kind,
            api_version=api_version,
            items_have_kind=have_kind,
        )

    async def _finish_initial_events(self, rv: str) -> None:
        """A streamed initial list (``sendInitialEvents``) is complete: it is a LIST."""
        members, self.initial = dict(self.initial or {}), None
        self.continuous = True
        list_kind = f"{self.kind}List" if self.kind else "List"
        coverage = self._coverage(rv, list_kind, self.api_version, have_kind=False)
        scope = self.scope
        await self.shared.store.run(
            "replace", lambda s: s.replace(scope, [], coverage, seen_before=members)
        )

    async def _relist(self) -> None:
        """After 410 Gone: list upstream into the view, send what changed since the client's rv.

        The difference is what the view recorded since *this* client's resourceVersion, not
        against the cache (another watcher's re-list may already have updated the view). If
        the view cannot replay from there, the client gets the 410 and re-lists.
        """
        shared, scope = self.shared, self.scope
        shared.metrics.relists.inc()
        params = {
            k: v
            for k, v in self.call.request.query.items()
            if k in {"labelSelector", "fieldSelector"}
        }
        url = shared.upstream_url(scope.resource.path(scope.namespace))
        timeout = shared.request_timeout()
        async with shared.upstream.session.get(
            url, params=params, headers={"Accept": "application/json"}, timeout=timeout
        ) as response:
            response.raise_for_status()
            body = await response.json()
        list_kind = str(body.get("kind", ""))
        api_version = str(body.get("apiVersion", scope.resource.api_version))
        kind = list_kind.removesuffix("List")
        items = [{"kind": kind, "apiVersion": api_version, **i} for i in body.get("items", [])]
        rv = str(body.get("metadata", {}).get("resourceVersion", ""))
        have_kind = bool(body.get("items")) and "kind" in body["items"][0]
        coverage = self._coverage(rv, list_kind, api_version, have_kind=have_kind)
        since = self.rv

        def relisted(store: CacheStore) -> tuple[list[Change] | None, str]:
            store.replace(scope, items, coverage)
            return store.replay(scope, scope.key, since), store.view_rv(scope) or rv

        result = await shared.store.run("replace", relisted)
        changes, view_rv = result if result is not None else (None, rv)
        if changes is None:
            log.info("re-listed %s after 410 Gone: the client must re-list", scope.resource.key)
            await self._send(_gone_line(since))
            raise ClientMustRelistError
        log.info("re-listed %s after 410 Gone: %s changes", scope.resource.key, len(changes))
        for change in changes:
            await self._send(_event_line(change.type, change.obj))
        self.rv = view_rv
        self.continuous = True

    # ------------------------------------------------------------ local phase

    async def _local_phase(self) -> web.StreamResponse | None:
        shared, scope = self.shared, self.scope
        if self.response is None:
            await shared.flush_writes()
            coverage = await shared.store.run("coverage", lambda s: s.coverage_for(scope))
            if coverage is None:
                body = offline_status(
                    "no complete list covering this watch is cached", retry_after=10
                )
                shared.metrics.requests.labels(verb="watch", source="offline_rejected").inc()
                return web.json_response(body, status=503)  # no Retry-After: see offline.py
            self.kind = self.kind or coverage.list_kind.removesuffix("List")
            self.api_version = coverage.api_version
            await self._replay(coverage)
        shared.metrics.requests.labels(verb="watch", source="cache").inc()
        queue: asyncio.Queue[Change] = asyncio.Queue(maxsize=1024)

        def on_change(component: str, resource_key: str, change: Change) -> None:
            mine = component == scope.component and resource_key == scope.resource.key
            if mine and scope.contains(change.obj) and not queue.full():
                queue.put_nowait(change)

        loop = asyncio.get_running_loop()
        next_bookmark = loop.time() + shared.settings.bookmark_interval
        with shared.store.subscribe(on_change):
            while shared.health.state.state is not State.ONLINE:
                try:
                    async with asyncio.timeout(_POLL):
                        change = await queue.get()
                    await self._send(_event_line(change.type, change.obj))
                except TimeoutError:
                    if self._past_deadline():
                        raise
                    if self._client_gone():
                        raise ClientGoneError from None
                if self.bookmarks and loop.time() >= next_bookmark:
                    next_bookmark = loop.time() + shared.settings.bookmark_interval
                    await self._send(self._bookmark())
        return None

    def _bookmark(self, *, initial_end: bool = False) -> bytes:
        meta: dict[str, Any] = {"resourceVersion": self.rv}
        if initial_end:
            meta["annotations"] = {_INITIAL_EVENTS_END: "true"}
        return _event_line(
            "BOOKMARK", {"kind": self.kind, "apiVersion": self.api_version, "metadata": meta}
        )

    async def _replay(self, coverage: Coverage) -> None:
        """A watch starting offline: what the API server would send, from one view.

        Only what the view recorded is replayed (views.py rule 3); a resourceVersion older
        than that gets the API server's 410 Expired, after which clients re-list.
        """
        scope, since = self.scope, self.rv
        changes = await self.shared.store.run(
            "replay", lambda s: s.replay(scope, coverage.scope_key, since)
        )
        self.response = await self._prepare()
        if changes is None:
            await self._send(_gone_line(since))
            raise ClientMustRelistError
        for change in changes:
            await self._send(_event_line(change.type, change.obj))
        if since in {"", "0"} or rv_newer(coverage.rv, since):
            self.rv = coverage.rv
        self.continuous = True
        if self.send_initial:
            await self._send(self._bookmark(initial_end=True))
        self.initial = None
