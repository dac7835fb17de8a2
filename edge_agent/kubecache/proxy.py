# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The local kube proxy: an aiohttp app on 127.0.0.1:10261 in front of the upstream.

Per request: parse it (``keys.parse_request``), find the component (User-Agent), negotiate
the representation (``wire.negotiate``), then

* online: forward upstream with the proxy's credentials (the caller's are dropped). Answers
  to GET / LIST / create / update / patch / delete of a cached component are read whole
  (bounded), written through to the cache, and returned byte for byte. Everything else is
  streamed through untouched. An upstream that cannot be reached counts as a health failure
  and GET / LIST fall back to the cache.
* offline: ``offline.py`` answers from the cache; WATCH is ``watch.py`` in both states.

Entry point: :func:`serve_kube_proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
from collections import OrderedDict
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import prometheus_client
from aiohttp import web

from edge_agent.kubecache import offline, tokens, watch
from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.health import HealthChecker, State
from edge_agent.kubecache.keys import RequestInfo, Resource, Verb, component_of, parse_request
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.selectors import (
    SelectorError,
    parse_field_selector,
    parse_label_selector,
)
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.store import Coverage, Scope, meta_of
from edge_agent.kubecache.upstream import Upstream
from edge_agent.kubecache.wire import Representation, negotiate, status_object

log = logging.getLogger("edge_agent.kubecache.proxy")

_HOP_BY_HOP = frozenset(
    {
        "connection",
        "keep-alive",
        "proxy-authenticate",
        "proxy-authorization",
        "te",
        "trailer",
        "transfer-encoding",
        "upgrade",
        "host",
        "content-length",
        "content-encoding",
        "accept-encoding",
        "authorization",
    }
)
_RESPONSE_DROP = frozenset(
    {"connection", "keep-alive", "transfer-encoding", "content-length", "content-encoding"}
)
UNREACHABLE = (aiohttp.ClientConnectionError, aiohttp.ClientPayloadError, TimeoutError)
"""Errors that mean the upstream could not be reached (not an HTTP error answer)."""


class BodyTooLargeError(ValueError):
    pass


@dataclass(slots=True)
class Call:
    """One request to the proxy, parsed once."""

    request: web.Request
    info: RequestInfo
    component: str
    cached_agent: bool
    representation: Representation
    body: bytes

    @property
    def resource(self) -> Resource:
        assert self.info.resource is not None  # noqa: S101 - only called for resource requests
        return self.info.resource

    @property
    def cacheable(self) -> bool:
        """The answer is plain JSON for a cached component about a whole object or list."""
        return (
            self.cached_agent
            and self.info.is_resource
            and self.representation is Representation.JSON
            and self.info.subresource in {"", "status"}
        )


@dataclass(slots=True)
class _Paging:
    scope: Scope
    seen: set[tuple[str, str]] = field(default_factory=set)


def json_response(
    obj: object, *, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    return web.Response(
        body=json.dumps(obj, separators=(",", ":")).encode(),
        status=status,
        content_type="application/json",
        headers=headers,
    )


class KubeProxy:
    """The proxy's state: settings, upstream, health, cache and metrics."""

    def __init__(
        self,
        *,
        settings: KubeCacheSettings,
        upstream: Upstream,
        registry: prometheus_client.CollectorRegistry,
    ) -> None:
        self.settings = settings
        self.upstream = upstream
        self.metrics = KubeCacheMetrics(registry)
        self.health = HealthChecker(upstream=upstream, settings=settings.health)
        self.store = AsyncStore(metrics=self.metrics)
        self._paging: OrderedDict[str, _Paging] = OrderedDict()
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(
            maxsize=settings.max_pending_writes
        )
        self.url = ""
        self.health.on_change.append(self._on_health_change)

    def _on_health_change(self, state: State) -> None:
        self.metrics.online.set(1 if state is State.ONLINE else 0)
        self.metrics.transitions.labels(to=state.value).inc()

    def status(self) -> dict[str, Any]:
        """For the local API's ``/status``: health, cache and where the proxy listens."""
        cache = {**self.store.status(), "queued_writes": self._writes.qsize()}
        return {"url": self.url, "upstream": self.health.snapshot(), "cache": cache}

    # ------------------------------------------------------------ write-behind

    async def write_loop(self) -> None:
        """Apply queued write-throughs in order, after their answers went to the client."""
        while True:
            job = await self._writes.get()
            try:
                await job()
            except Exception:  # one bad answer must not stop caching the rest
                log.exception("write-through failed; the cache keeps its previous state")
            finally:
                self._writes.task_done()

    async def flush_writes(self) -> None:
        """Wait until every queued write-through is on disk (before answering from it)."""
        await self._writes.join()

    # ------------------------------------------------------------ request entry

    async def handle(self, request: web.Request) -> web.StreamResponse:
        info = parse_request(
            request.method, request.path, watch_param=request.query.get("watch", "")
        )
        component = component_of(request.headers.get("User-Agent"))
        agents = self.settings.cache_agents
        try:
            body = await self._read_body(request)
        except BodyTooLargeError:
            limit = self.settings.max_request_body_bytes
            return json_response(
                status_object(413, "RequestEntityTooLarge", f"request body over {limit} bytes"),
                status=413,
            )
        call = Call(
            request=request,
            info=info,
            component=component,
            cached_agent="*" in agents or component in agents,
            representation=negotiate(request.headers.get("Accept")),
            body=body,
        )
        if info.verb is Verb.WATCH:
            return await watch.serve(self, call)
        if self.health.online or self.health.state.state is State.UNKNOWN:
            try:
                return await self._forward(call)
            except UNREACHABLE as exc:
                await self.health.report_failure(f"{type(exc).__name__}: {exc}")
                log.info(
                    "upstream unreachable for %s %s: answering locally",
                    request.method,
                    request.path,
                )
        return await offline.answer(self, call)

    async def _read_body(self, request: web.Request) -> bytes:
        limit = self.settings.max_request_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise BodyTooLargeError
        if not request.can_read_body:
            return b""
        chunks: list[bytes] = []
        size = 0
        while chunk := await request.content.readany():
            size += len(chunk)
            if size > limit:
                raise BodyTooLargeError
            chunks.append(chunk)
        return b"".join(chunks)

    # ------------------------------------------------------------ online

    def upstream_headers(self, call: Call, *, accept: str | None) -> dict[str, str]:
        headers = {k: v for k, v in call.request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if accept is not None:
            headers["Accept"] = accept
        return headers

    def upstream_url(self, path_qs: str) -> str:
        return self.upstream.base_url + path_qs

    async def _forward(self, call: Call) -> web.StreamResponse:
        write_through = call.cacheable and call.info.verb in {
            Verb.GET,
            Verb.LIST,
            Verb.CREATE,
            Verb.UPDATE,
            Verb.PATCH,
            Verb.DELETE,
        }
        caching_raw = (
            not call.info.is_resource
            and call.info.verb is Verb.GET
            and call.representation is not Representation.OPAQUE
            and call.request.path.startswith(("/api", "/version", "/openapi/v3"))
        )
        token_key = (
            tokens.request_key(call)
            if tokens.is_token_request(call)
            and call.cached_agent
            and call.representation is Representation.JSON
            else None
        )
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        async with self.upstream.session.request(
            call.request.method,
            self.upstream_url(call.request.path_qs),
            headers=self.upstream_headers(
                call, accept="application/json" if write_through or token_key else None
            ),
            data=call.body or None,
            timeout=timeout,
            allow_redirects=False,
            # Kubernetes reads a body without Content-Type as JSON; aiohttp would send
            # application/octet-stream instead (the official Python client sends none).
            skip_auto_headers=("Content-Type", "User-Agent"),
        ) as upstream:
            if not (write_through or caching_raw or token_key):
                self.metrics.requests.labels(verb=call.info.verb.value, source="passthrough").inc()
                return await self.stream_back(call.request, upstream)
            response, data = await self._stream_and_keep(call.request, upstream)
        self.metrics.requests.labels(verb=call.info.verb.value, source="upstream").inc()
        status = upstream.status
        if data is None:
            log.info(
                "%s %s: answer not cached (client left, or too big)",
                call.request.method,
                call.request.path,
            )
        elif write_through:
            await self._writes.put(lambda: self._write_through(call, status, data))
        elif token_key:
            key = token_key
            await self._writes.put(lambda: tokens.remember(self, call, key, status, data))
        elif status == 200:
            content_type = upstream.headers.get("Content-Type", "")
            await self._writes.put(lambda: offline.remember_raw(self, call, content_type, data))
        return response

    async def _stream_and_keep(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> tuple[web.StreamResponse, bytes | None]:
        """Relay the answer as it arrives and keep a copy for the cache (None if too big).

        Streaming, not read-then-send: the client gets a 5,000-pod LIST as fast as without
        the proxy in between, and the cache write happens after, off the answer's path.
        """
        limit = self.settings.max_response_bytes
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP}
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        chunks: list[bytes] | None = []
        size = 0
        try:
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
                if chunks is not None:
                    size += len(chunk)
                    chunks = chunks if size <= limit else None
                    if chunks is not None:
                        chunks.append(chunk)
            await response.write_eof()
        except (ConnectionResetError, aiohttp.ClientConnectionResetError):
            return response, None  # the client left; a partial answer is not cached
        return response, None if chunks is None else b"".join(chunks)

    async def stream_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Copy an upstream answer to the client as it arrives (watches, logs, protobuf)."""
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP}
        response = web.StreamResponse(status=upstream.status, headers=headers)
        await response.prepare(request)
        with contextlib.suppress(ConnectionResetError, aiohttp.ClientConnectionResetError):
            async for chunk in upstream.content.iter_any():
                await response.write(chunk)
            await response.write_eof()
        return response

    async def _write_through(self, call: Call, status: int, data: bytes) -> None:
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

    async def _cache_delete(self, call: Call, body: dict[str, Any]) -> None:
        if body.get("kind") != "Status" and meta_of(body).get("deletionTimestamp"):
            await self.store.run("put", lambda s: s.put(call.component, call.resource, body))
            return
        await self.store.run(
            "delete",
            lambda s: s.delete(call.component, call.resource, call.info.namespace, call.info.name),
        )

    def scope_of(self, call: Call) -> Scope:
        """The scope a LIST or WATCH asks for; raises SelectorError on a bad selector."""
        bound = self.settings.max_selector_length
        query = call.request.query
        return Scope(
            component=call.component,
            resource=call.resource,
            namespace=call.info.namespace,
            labels=parse_label_selector(query.get("labelSelector", ""), max_length=bound),
            fields=parse_field_selector(query.get("fieldSelector", ""), max_length=bound),
        )

    async def _cache_list(self, call: Call, body: dict[str, Any]) -> None:
        try:
            scope = self.scope_of(call)
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
                (str(meta_of(o).get("namespace", "")), str(meta_of(o).get("name", "")))
                for o in objects
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
        seen = frozenset(paging.seen)
        await self.store.run(
            "replace", lambda s: s.replace(scope, objects, coverage, seen_before=seen)
        )


PROXY_KEY = web.AppKey("kube_proxy", KubeProxy)


def _serving_tls(settings: KubeCacheSettings) -> ssl.SSLContext | None:
    """The listener's TLS context when a certificate is configured (TLS >= 1.2)."""
    if not settings.tls_cert_file:
        return None
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.load_cert_chain(settings.tls_cert_file, settings.tls_key_file or None)
    return context


@contextlib.asynccontextmanager
async def serve_kube_proxy(
    settings: KubeCacheSettings,
    upstream: Upstream,
    *,
    registry: prometheus_client.CollectorRegistry | None = None,
) -> AsyncIterator[KubeProxy]:
    """Serve the kube proxy until the block exits; the upstream stays the caller's to close.

    Opens the cache (degrading to pass-through if it cannot), waits for the first health probe
    so the first request already knows whether to go upstream, then listens on
    ``settings.host:settings.port`` (port 0 picks a free one; see ``KubeProxy.url``).
    """
    proxy = KubeProxy(
        settings=settings,
        upstream=upstream,
        registry=registry or prometheus_client.CollectorRegistry(),
    )
    await proxy.store.open(settings.cache_dir, min_file_size=settings.min_file_size)
    app = web.Application(client_max_size=settings.max_request_body_bytes)
    app[PROXY_KEY] = proxy
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, access_log=None, handler_cancellation=True, shutdown_timeout=1.0)
    await runner.setup()
    body_error: Exception | None = None
    try:
        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(proxy.health.run(), name="kubecache.health"),
                group.create_task(offline.sync_loop(proxy), name="kubecache.sync"),
                group.create_task(proxy.write_loop(), name="kubecache.write-behind"),
            ]
            try:
                await proxy.health.wait_known()
                tls = _serving_tls(settings)
                site = web.TCPSite(runner, settings.host, settings.port, ssl_context=tls)
                await site.start()
                port = runner.addresses[0][1] if runner.addresses else settings.port
                proxy.url = f"{'https' if tls else 'http'}://{settings.host}:{port}"
                log.info("kube proxy serving on %s, upstream %s", proxy.url, upstream.base_url)
                yield proxy
            except Exception as exc:  # noqa: BLE001 - re-raised below, outside the TaskGroup
                body_error = exc
            finally:
                # Answers already sent should reach the disk before we stop (bounded wait).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(settings.request_timeout):
                        await proxy.flush_writes()
                for task in tasks:
                    task.cancel()
    finally:
        await runner.cleanup()
        await proxy.store.close()
    if body_error is not None:
        raise body_error
