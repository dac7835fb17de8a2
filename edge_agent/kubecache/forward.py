# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Online forwarding: send one call upstream with the proxy's credentials, relay the answer.

The caller's credentials and hop-by-hop headers are dropped; the upstream session carries the
proxy's own. The answer is streamed to the client as it arrives (a 5,000-pod LIST reaches the
client as fast as without the proxy in between); on request a bounded copy is kept for the
cache, which the caller writes after the answer went out.

An upstream that cannot be reached raises one of :data:`UNREACHABLE`; the caller decides what
that means (a health failure, an answer from the cache). This module knows nothing of the cache.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import aiohttp
from aiohttp import web

from edge_agent.kubecache.call import Call
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.upstream import Upstream

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


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """An answer relayed to the client, and what the cache may keep of it."""

    response: web.StreamResponse
    status: int
    content_type: str
    body: bytes | None
    """The whole answer if a copy was asked for and it fit; None otherwise."""


class Forwarder:
    """Sends calls to one upstream and relays the answers."""

    def __init__(self, *, upstream: Upstream, settings: KubeCacheSettings) -> None:
        self.upstream = upstream
        self.settings = settings

    def url(self, path_qs: str) -> str:
        return self.upstream.base_url + path_qs

    def headers(self, call: Call, *, accept: str | None) -> dict[str, str]:
        headers = {k: v for k, v in call.request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if accept is not None:
            headers["Accept"] = accept
        return headers

    async def forward(self, call: Call, *, accept: str | None, keep: bool) -> Forwarded:
        """Relay ``call`` upstream and its answer back; ``keep`` asks for a copy of the body."""
        timeout = aiohttp.ClientTimeout(total=self.settings.request_timeout)
        async with self.upstream.session.request(
            call.request.method,
            self.url(call.request.path_qs),
            headers=self.headers(call, accept=accept),
            data=call.body or None,
            timeout=timeout,
            allow_redirects=False,
            # Kubernetes reads a body without Content-Type as JSON; aiohttp would send
            # application/octet-stream instead (the official Python client sends none).
            skip_auto_headers=("Content-Type", "User-Agent"),
        ) as upstream:
            if not keep:
                response = await self.stream_back(call.request, upstream)
                data = None
            else:
                response, data = await self._stream_and_keep(call.request, upstream)
            return Forwarded(
                response=response,
                status=upstream.status,
                content_type=upstream.headers.get("Content-Type", ""),
                body=data,
            )

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
