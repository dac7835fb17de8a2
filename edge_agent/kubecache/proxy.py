# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The local kube proxy: an aiohttp app on 127.0.0.1:10261 in front of the upstream.

Routing only. Per request: parse it (``keys.parse_request``), find the component
(User-Agent), negotiate the representation (``wire.negotiate``), then

* online: ``forward.py`` sends it upstream with the proxy's credentials and relays the answer.
  Answers to GET / LIST / create / update / patch / delete of a cached component are kept
  (bounded) and written to the cache after they went out (``writethrough.py``); discovery and
  TokenRequest answers likewise (``discovery.remember``, ``tokens.remember``). An upstream
  that cannot be reached counts as a health failure and the call is answered locally.
* offline: ``offline.py`` answers from the cache (``heartbeats``, ``tokens``, ``discovery``
  for their kinds); WATCH is ``watch.py`` in both states. They get the shared state as one
  :class:`~edge_agent.kubecache.shared.Shared` and never import this module.

Entry point: :func:`serve_kube_proxy`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import prometheus_client
from aiohttp import web

from edge_agent.kubecache import discovery, heartbeats, offline, tokens, watch
from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.fieldlabels import unsupported_label
from edge_agent.kubecache.forward import Forwarder, UpstreamFailure
from edge_agent.kubecache.health import HealthChecker, State
from edge_agent.kubecache.keys import Verb, component_of, parse_request
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.shared import Shared
from edge_agent.kubecache.store import CacheStore
from edge_agent.kubecache.upstream import Upstream
from edge_agent.kubecache.wire import (
    Representation,
    negotiate,
    outcome_unknown_status,
    status_object,
)
from edge_agent.kubecache.writethrough import WriteThrough
from fleet_model.labels import SelectorError

__all__ = ["Call", "KubeProxy", "serve_kube_proxy"]

log = logging.getLogger("edge_agent.kubecache.proxy")


REQUEST_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
"""Seconds: a cache answer takes ~1 ms, one through the tunnel a round trip or more, a large
LIST some seconds."""


class BodyTooLargeError(ValueError):
    pass


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
        self.request_duration = prometheus_client.Histogram(
            "edge_agent_kubecache_request_duration_seconds",
            "Requests to the kube proxy, by verb, from parsing to the handler's return (the"
            " whole answer relayed); WATCH is left out: it lasts as long as the client wants",
            ["verb"],
            buckets=REQUEST_BUCKETS,
            registry=registry,
        )
        self.health = HealthChecker(upstream=upstream, settings=settings.health)
        self.store = AsyncStore(metrics=self.metrics)
        self.forwarder = Forwarder(
            upstream=upstream,
            settings=settings,
            health=self.health,
            metrics=self.metrics,
            spool_dir=settings.cache_dir,
        )
        self.write_through = WriteThrough(store=self.store, settings=settings)
        self._writes: asyncio.Queue[Callable[[], Awaitable[None]]] = asyncio.Queue(
            maxsize=settings.max_pending_writes
        )
        self.shared = Shared(
            settings=settings,
            upstream=upstream,
            forwarder=self.forwarder,
            health=self.health,
            store=self.store,
            metrics=self.metrics,
            flush_writes=self.flush_writes,
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
            return await self._route(call)
        began = time.monotonic()
        try:
            return await self._route(call)
        finally:
            self.request_duration.labels(info.verb.value).observe(time.monotonic() - began)

    async def _route(self, call: Call) -> web.StreamResponse:
        """Upstream while it may be reachable, else (or once it failed) locally."""
        if call.info.verb is Verb.WATCH:
            if not self.health.online and (refused := self._refused_field_label(call)):
                return refused
            return await watch.serve(self.shared, call)
        if self.health.online or self.health.state.state is State.UNKNOWN:
            try:
                return await self._forward(call)
            except UpstreamFailure as failure:
                if failure.maybe_sent and not _safe_to_answer_locally(call):
                    return self._outcome_unknown(call, failure.reason)
                log.info(
                    "upstream unreachable for %s %s (%s): answering locally",
                    call.request.method,
                    call.request.path,
                    failure.reason,
                )
        if refused := self._refused_field_label(call):
            return refused
        return await offline.answer(self.shared, call)

    async def _forget_superseded_heartbeat(self, call: Call) -> None:
        """A heartbeat reached the upstream: one answered locally before it is obsolete.

        A heartbeat is answered locally while the upstream is still judged online when the
        link is only slow (``heartbeat_timeout``); no offline-to-online transition follows to
        sync it, and a later sync would set the Lease's renewTime (or the node's status) back
        to that older copy.
        """
        if not self.store.status()["pending_heartbeats"]:
            return
        wanted = (
            call.component,
            call.resource.key,
            call.info.namespace,
            call.info.name,
            call.info.subresource,
        )
        pending = await self.store.run("pending", lambda s: s.pending()) or {}
        fields = ("component", "resource", "namespace", "name", "subresource")
        stale = [
            (key, record)
            for key, record in pending.items()
            if tuple(record.get(f) for f in fields) == wanted
        ]

        def clear(store: CacheStore) -> None:
            for key, record in stale:
                store.clear_pending(key, record)

        if stale:
            await self.store.run("clear_pending", clear)

    def _outcome_unknown(self, call: Call, reason: str) -> web.Response:
        log.warning(
            "%s %s: the answer was lost after the request may have left (%s)",
            call.request.method,
            call.request.path,
            reason,
        )
        self.metrics.requests.labels(verb=call.info.verb.value, source="unknown").inc()
        return json_response(outcome_unknown_status(call.info.verb.value, reason), status=504)

    def _refused_field_label(self, call: Call) -> web.Response | None:
        """The API server's 400 for a field label it does not support, given locally."""
        if call.info.verb not in {Verb.LIST, Verb.WATCH} or call.info.resource is None:
            return None
        text = call.request.query.get("fieldSelector", "")
        try:
            selector = parse_field_selector(text, max_length=self.settings.max_selector_length)
        except SelectorError:
            return None  # the local answer reports a malformed selector itself
        message = unsupported_label(call.resource, selector)
        if message is None:
            return None
        return json_response(status_object(400, "BadRequest", message), status=400)

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

    async def _forward(self, call: Call) -> web.StreamResponse:
        """Forward upstream; queue what the answer teaches the cache, after it went out."""
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
        keep = bool(write_through or caching_raw or token_key)
        answer = await self.forwarder.forward(
            call,
            accept="application/json" if write_through or token_key else None,
            keep=keep,
            deadline=self.settings.heartbeat_timeout if heartbeats.is_heartbeat(call) else None,
        )
        source = "upstream" if keep else "passthrough"
        self.metrics.requests.labels(verb=call.info.verb.value, source=source).inc()
        if answer.status == 200 and not answer.broken and heartbeats.is_heartbeat(call):
            await self._writes.put(lambda: self._forget_superseded_heartbeat(call))
        if not keep or answer.broken:
            return answer.response
        status, kept = answer.status, answer.body
        if kept is None:
            log.info(
                "%s %s: answer not cached (client left, or too big)",
                call.request.method,
                call.request.path,
            )
        elif write_through:
            try:
                await self._writes.put(lambda: self.write_through.apply(call, status, kept))
            except BaseException:
                kept.close()  # queued, apply() closes it; not queued, nobody else would
                raise
        else:
            # Tokens and discovery answers are small, or decoded whole anyway: as bytes.
            data = kept.read()
            kept.close()
            await self._remember(call, token_key, status, answer.content_type, data)
        return answer.response

    async def _remember(
        self, call: Call, token_key: str | None, status: int, content_type: str, data: bytes
    ) -> None:
        if token_key:
            key = token_key
            await self._writes.put(lambda: tokens.remember(self.shared, call, key, status, data))
        elif status == 200:
            await self._writes.put(
                lambda: discovery.remember(self.shared, call, content_type, data)
            )


def _safe_to_answer_locally(call: Call) -> bool:
    """After an answer was lost, may the call still be answered locally?

    Reads may. Of the writes, only those the offline path keeps and replays (heartbeats) or
    answers without a change (TokenRequests) may; any other write may have been applied, so
    its outcome is unknown, and "not sent" would be a lie.
    """
    if call.request.method in {"GET", "HEAD", "OPTIONS"}:
        return True
    return call.cached_agent and (heartbeats.is_heartbeat(call) or tokens.is_token_request(call))


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
    await proxy.store.open(settings.cache_dir)
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
                group.create_task(heartbeats.sync_loop(proxy.shared), name="kubecache.sync"),
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
