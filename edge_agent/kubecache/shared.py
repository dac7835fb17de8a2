# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""One home for what the proxy's parts share: settings, health, cache, metrics, upstream.

``proxy.py`` builds one :class:`Shared` and hands it to the parts that answer requests
(``watch``, ``offline``, ``heartbeats``, ``tokens``, ``discovery``). They import this module,
never ``proxy.py``, so routing sits on top and nothing imports back up (no cycles).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from edge_agent.kubecache.cache import AsyncStore
from edge_agent.kubecache.call import Call
from edge_agent.kubecache.forward import Forwarder
from edge_agent.kubecache.health import HealthChecker
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.store import Scope
from edge_agent.kubecache.upstream import Upstream
from edge_agent.kubecache.writethrough import scope_of


@dataclass(frozen=True, kw_only=True, slots=True)
class Shared:
    """The proxy's state as its parts see it (read-only references, built once)."""

    settings: KubeCacheSettings
    upstream: Upstream
    forwarder: Forwarder
    health: HealthChecker
    store: AsyncStore
    metrics: KubeCacheMetrics
    flush_writes: Callable[[], Awaitable[None]]
    """Wait until every queued write-through is on disk (before answering from the cache)."""

    def request_timeout(self) -> aiohttp.ClientTimeout:
        """Timeouts of one upstream request of the proxy's own (re-list, heartbeat sync).

        All three: a total alone would replace the session's connect timeout, so a silent
        link would hold the request for the whole total (issue 10, bug 3).
        """
        settings = self.settings
        return aiohttp.ClientTimeout(
            total=settings.request_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )

    def upstream_url(self, path_qs: str) -> str:
        return self.forwarder.url(path_qs)

    def upstream_headers(self, call: Call, *, accept: str | None) -> dict[str, str]:
        return self.forwarder.headers(call, accept=accept)

    async def stream_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        return await self.forwarder.stream_back(request, upstream)

    def scope_of(self, call: Call) -> Scope:
        """The scope a LIST or WATCH asks for; raises SelectorError on a bad selector."""
        return scope_of(call, max_selector_length=self.settings.max_selector_length)
