# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Online forwarding: send one call upstream with the proxy's credentials, relay the answer.

The caller's credentials and hop-by-hop headers are dropped; the upstream session carries the
proxy's own. The answer is streamed to the client as it arrives (a 5,000-pod LIST reaches the
client as fast as without the proxy in between); on request a bounded copy is kept for the
cache, which the caller writes after the answer went out. That copy (:class:`Kept`) stays in
memory up to ``KEPT_IN_MEMORY`` bytes and goes on in an unlinked file in the cache folder
beyond (issue 18: a 5,000-pod LIST held whole, then decoded whole, was what lifted the agent
to 147 MiB); the caller closes it.

What a broken link does to a forwarded call depends on how far the answer got:

* **Before the first byte to the client** (connect failed, no answer, the answer broke before
  its first body chunk): :class:`UpstreamFailure` is raised and the caller may still answer,
  from the cache or with a Status. ``maybe_sent`` says whether the request may have reached the
  API server: only a failed connect, or an upstream that answers with
  ``NOT_FORWARDED_HEADER`` instead of forwarding it (the tunnel while it is down), proves it
  did not.
* **After the first byte** the only honest move is to end that response as broken: the client
  connection is aborted mid-body (a truncated chunked body, which every HTTP client reports
  as an error and retries), or, for a JSON watch cut between two events, an ``ERROR`` event
  with a Status ends the stream the way the API server ends a watch it cannot continue.
  Never a second answer written into the first.

A forwarded call stops waiting when the health checker declares the upstream offline (a
silent link must not hold it for the whole ``request_timeout``), when no byte arrived for
``read_timeout``, and at an optional per-call deadline (heartbeats). Every upstream failure is
reported to the health checker. This module knows nothing of the cache.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path

import aiohttp
from aiohttp import web

from edge_agent.kubecache.call import Call
from edge_agent.kubecache.health import HealthChecker, State
from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.settings import KubeCacheSettings
from edge_agent.kubecache.upstream import NOT_FORWARDED_HEADER, Upstream
from edge_agent.kubecache.wire import JSON, status_object

log = logging.getLogger("edge_agent.kubecache.forward")

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
_CLIENT_GONE = (ConnectionResetError, aiohttp.ClientConnectionResetError)
_NOT_SENT = (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError)
"""Failures that prove the request never left: no connection to send it on was opened."""


KEPT_IN_MEMORY = 256 * 1024
"""Bytes of a kept answer held in memory; beyond, it goes on in a file (single objects,
tokens and most discovery answers stay in memory; a big LIST does not)."""


class Kept:
    """A copy of an answer for the cache: in memory up to ``KEPT_IN_MEMORY``, then on disk.

    Written on the event loop while the answer is relayed, read afterwards (by one reader at
    a time, maybe on the disk thread). ``close`` drops it (the file has no name to leave
    behind, even after a kill -9).
    """

    def __init__(self, *, directory: Path | None) -> None:
        self.size = 0
        self._file = tempfile.SpooledTemporaryFile(  # noqa: SIM115 - closed by close()
            max_size=KEPT_IN_MEMORY, dir=None if directory is None else str(directory)
        )

    def write(self, chunk: bytes) -> None:
        self._file.write(chunk)
        self.size += len(chunk)

    def read(self) -> bytes:
        """The whole answer (for answers small enough to decode whole)."""
        self._file.seek(0)
        return self._file.read()

    def head(self, size: int) -> bytes:
        """The answer's first ``size`` bytes."""
        self._file.seek(0)
        return self._file.read(size)

    def chunks(self, size: int) -> Iterator[bytes]:
        """The answer from its start, ``size`` bytes at a time."""
        self._file.seek(0)
        while chunk := self._file.read(size):
            yield chunk

    def close(self) -> None:
        self._file.close()


class AbandonedError(Exception):
    """The proxy stopped waiting for the upstream (declared offline, or a deadline)."""


UNREACHABLE = (
    aiohttp.ClientConnectionError,
    aiohttp.ClientPayloadError,
    TimeoutError,
    AbandonedError,
)
"""Errors that mean the upstream could not be reached (not an HTTP error answer)."""


class UpstreamFailure(Exception):  # noqa: N818 - an outcome the caller handles, not a bug
    """No byte of an answer went to the client, so the caller may still answer."""

    def __init__(self, reason: str, *, maybe_sent: bool) -> None:
        super().__init__(reason)
        self.reason = reason
        self.maybe_sent = maybe_sent
        """False only when the request provably never left (the connection failed)."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Forwarded:
    """An answer relayed to the client, and what the cache may keep of it."""

    response: web.StreamResponse
    status: int
    content_type: str
    body: Kept | None
    """The whole answer if a copy was asked for, it fit and it arrived whole; else None.
    The caller owns it and closes it."""
    broken: str = ""
    """Why the answer was cut after its first byte went out (empty: it is whole)."""


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__


def _is_watch(request: web.Request) -> bool:
    return request.query.get("watch", "").lower() in {"1", "true"}


class _Relay:
    """Copies one upstream answer to the client; knows whether a byte went out yet."""

    def __init__(
        self, request: web.Request, *, keep_limit: int | None, spool_dir: Path | None = None
    ) -> None:
        self.request = request
        self.keep_limit = keep_limit
        self.response: web.StreamResponse | None = None
        self.kept: Kept | None = None if keep_limit is None else Kept(directory=spool_dir)
        self.client_gone = False
        self.at_line_start = True

    async def start(self, upstream: aiohttp.ClientResponse) -> None:
        headers = {k: v for k, v in upstream.headers.items() if k.lower() not in _RESPONSE_DROP}
        response = web.StreamResponse(status=upstream.status, headers=headers)
        self.response = response
        try:
            await response.prepare(self.request)
        except _CLIENT_GONE:
            self.client_gone = True

    async def run(self, upstream: aiohttp.ClientResponse, *, early: bool) -> None:
        """Relay the body; ``early`` sends the headers before the first body chunk."""
        if early:
            await self.start(upstream)
        async for chunk in upstream.content.iter_any():
            if self.response is None:
                await self.start(upstream)
            if self.client_gone:
                return
            await self._write(chunk)
            self._keep(chunk)
        if self.response is None:
            await self.start(upstream)
        response = self.response
        if response is not None and not self.client_gone:
            try:
                await response.write_eof()
            except _CLIENT_GONE:
                self.client_gone = True

    async def _write(self, chunk: bytes) -> None:
        assert self.response is not None  # noqa: S101 - started before any write
        try:
            await self.response.write(chunk)
        except _CLIENT_GONE:
            self.client_gone = True
        self.at_line_start = chunk.endswith(b"\n")

    def _keep(self, chunk: bytes) -> None:
        kept = self.kept
        if kept is None or self.keep_limit is None:
            return
        if kept.size + len(chunk) > self.keep_limit:
            self.drop()  # too big to cache; still relayed whole
            return
        try:
            kept.write(chunk)
        except OSError as exc:  # the cache's disk is full or gone: relay it, cache nothing
            log.warning("%s: answer not kept for the cache: %s", self.request.path, exc)
            self.drop()

    def drop(self) -> None:
        if self.kept is not None:
            self.kept.close()
            self.kept = None

    def take(self) -> Kept | None:
        """The kept copy, now the caller's to close (None if the client left)."""
        if self.client_gone:
            self.drop()
        kept, self.kept = self.kept, None
        return kept

    async def break_off(self) -> None:
        """End a response whose first byte already went out, so the client sees an error."""
        response = self.response
        assert response is not None  # noqa: S101 - only called once a byte went out
        self.drop()
        if self.client_gone:
            return
        content_type = response.headers.get("Content-Type", "")
        if _is_watch(self.request) and content_type.startswith(JSON) and self.at_line_start:
            # Between two events of a JSON watch: say why, as the API server ends a watch.
            # client-go turns the ERROR event into an error (reflectors re-list; kubectl
            # prints it) instead of taking a quiet end of stream for a normal close.
            status = status_object(
                503,
                "ServiceUnavailable",
                "the link to the cloud API server broke; this watch is not served from the "
                "edge cache, so it ends here: watch again",
            )
            line = json.dumps({"type": "ERROR", "object": status}, separators=(",", ":"))
            with contextlib.suppress(*_CLIENT_GONE):
                await response.write(line.encode() + b"\n")
                await response.write_eof()
                return
        # Mid-body: no terminating chunk, so the client cannot take a truncated answer for a
        # whole one. Aborting the connection is the only signal HTTP/1.1 has for that.
        transport = self.request.transport
        if transport is not None:
            transport.abort()


class Forwarder:
    """Sends calls to one upstream and relays the answers."""

    def __init__(
        self,
        *,
        upstream: Upstream,
        settings: KubeCacheSettings,
        health: HealthChecker,
        metrics: KubeCacheMetrics,
        spool_dir: Path | None = None,
    ) -> None:
        """Relay calls to ``upstream``.

        ``spool_dir``: where kept answers beyond ``KEPT_IN_MEMORY`` go (the cache folder:
        mode 0700, on the cache's disk; None: the system's temporary folder).
        """
        self.upstream = upstream
        self.settings = settings
        self.health = health
        self.metrics = metrics
        self.spool_dir = spool_dir

    def url(self, path_qs: str) -> str:
        return self.upstream.base_url + path_qs

    def headers(self, call: Call, *, accept: str | None) -> dict[str, str]:
        headers = {k: v for k, v in call.request.headers.items() if k.lower() not in _HOP_BY_HOP}
        if accept is not None:
            headers["Accept"] = accept
        return headers

    @contextlib.asynccontextmanager
    async def _guard(self, deadline: float | None) -> AsyncIterator[None]:
        """Stop the block when the upstream is declared offline, or after ``deadline`` s."""
        loop = asyncio.get_running_loop()
        scope = asyncio.timeout_at(None if deadline is None else loop.time() + deadline)
        why = ""

        def on_change(state: State) -> None:
            nonlocal why
            if state is State.OFFLINE and not why:
                why = "the upstream was declared offline meanwhile"
                scope.reschedule(loop.time())

        try:
            async with scope:
                self.health.on_change.append(on_change)
                try:
                    yield
                finally:
                    self.health.on_change.remove(on_change)
        except TimeoutError as exc:
            if scope.expired():
                raise AbandonedError(why or f"no answer within {deadline} s") from exc
            raise

    async def forward(
        self, call: Call, *, accept: str | None, keep: bool, deadline: float | None = None
    ) -> Forwarded:
        """Relay ``call`` upstream and its answer back.

        ``keep`` asks for a copy of the body (and holds the client's headers back until the
        first body chunk, so a failure before it can still be answered from the cache);
        ``deadline`` (seconds) bounds the whole call. Raises :class:`UpstreamFailure` when
        nothing went to the client.
        """
        relay = _Relay(
            call.request,
            keep_limit=self.settings.max_response_bytes if keep else None,
            spool_dir=self.spool_dir,
        )
        try:
            return await self._forward(call, relay, accept=accept, deadline=deadline)
        finally:
            relay.drop()  # unless taken: an early failure keeps nothing

    async def _forward(
        self, call: Call, relay: _Relay, *, accept: str | None, deadline: float | None
    ) -> Forwarded:
        settings = self.settings
        timeout = aiohttp.ClientTimeout(
            total=settings.request_timeout,
            sock_connect=settings.connect_timeout,
            sock_read=settings.read_timeout,
        )
        status, content_type = 0, ""
        try:
            async with (
                self._guard(deadline),
                self.upstream.session.request(
                    call.request.method,
                    self.url(call.request.path_qs),
                    headers=self.headers(call, accept=accept),
                    data=call.body or None,
                    timeout=timeout,
                    allow_redirects=False,
                    # Kubernetes reads a body without Content-Type as JSON; aiohttp would send
                    # application/octet-stream instead (the official Python client sends none).
                    skip_auto_headers=("Content-Type", "User-Agent"),
                ) as upstream,
            ):
                if upstream.headers.get(NOT_FORWARDED_HEADER):
                    reason = f"the upstream did not forward it (HTTP {upstream.status})"
                    await self.health.report_failure(reason)
                    self.metrics.forward_failures.labels(when="not_sent").inc()
                    raise UpstreamFailure(reason, maybe_sent=False)
                status = upstream.status
                content_type = upstream.headers.get("Content-Type", "")
                await relay.run(upstream, early=relay.keep_limit is None)
        except UNREACHABLE as exc:
            reason = _describe(exc)
            await self.health.report_failure(reason)
            if relay.response is None:
                maybe_sent = not isinstance(exc, _NOT_SENT)
                self.metrics.forward_failures.labels(
                    when="no_answer" if maybe_sent else "not_sent"
                ).inc()
                raise UpstreamFailure(reason, maybe_sent=maybe_sent) from exc
            self.metrics.forward_failures.labels(when="mid_answer").inc()
            log.warning(
                "%s %s: the upstream broke mid-answer (%s); ending the response as broken",
                call.request.method,
                call.request.path,
                reason,
            )
            await relay.break_off()
            return Forwarded(
                response=relay.response,
                status=status,
                content_type=content_type,
                body=None,
                broken=reason,
            )
        assert relay.response is not None  # noqa: S101 - run() always starts the response
        return Forwarded(
            response=relay.response, status=status, content_type=content_type, body=relay.take()
        )

    async def stream_back(
        self, request: web.Request, upstream: aiohttp.ClientResponse
    ) -> web.StreamResponse:
        """Copy an opened upstream answer to the client as it arrives (uncached watches, logs).

        Ends with the upstream, when the upstream is declared offline, or broken (see the
        module's rules) when the link breaks.
        """
        relay = _Relay(request, keep_limit=None)
        try:
            async with self._guard(None):
                await relay.run(upstream, early=True)
        except UNREACHABLE as exc:
            reason = _describe(exc)
            if not isinstance(exc, AbandonedError):
                await self.health.report_failure(reason)
            self.metrics.forward_failures.labels(when="mid_answer").inc()
            log.info("%s: upstream stream ended (%s)", request.path, reason)
            if relay.response is not None:
                await relay.break_off()
        assert relay.response is not None  # noqa: S101 - started before the first read
        return relay.response
