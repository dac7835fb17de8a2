"""List, then watch, one resource of the cloud cluster; re-list when the watch cannot resume.

The reflector pattern of client-go (and kopf's ``watching.py``): LIST gives the objects and a
resourceVersion, WATCH from there streams ADDED/MODIFIED/DELETED events one JSON line each,
BOOKMARKs move the resourceVersion on, and a 410 Gone (or an ERROR event) means our version is
too old: list again. Failures retry with a doubling backoff; the sink sees a fresh ``replace``
after every re-list, so it never keeps an object that was deleted while we were away.
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import TYPE_CHECKING, Any, Protocol

import aiohttp

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.kube.upstream import KubeUpstream
    from tunnel_server.settings import CloudWatchSettings

log = logging.getLogger("tunnel_server.fleet.watch")

JsonObject = dict[str, Any]


class WatchSink(Protocol):
    """Who keeps the objects: ``replace`` after each list, ``apply`` for each event."""

    def replace(self, items: list[JsonObject]) -> None: ...
    def apply(self, event: str, obj: JsonObject) -> None: ...


class _Expired(Exception):  # noqa: N818 - a signal, not an error: list again
    """The watch cannot resume from our resourceVersion."""


class ListWatch:
    """Keeps ``sink`` in step with ``path`` (such as ``/api/v1/nodes``) until cancelled."""

    def __init__(
        self,
        *,
        upstream: KubeUpstream,
        path: str,
        sink: WatchSink,
        settings: CloudWatchSettings,
        params: dict[str, str] | None = None,
        synced: asyncio.Event | None = None,
    ) -> None:
        self._upstream = upstream
        self._path = path
        self._sink = sink
        self._settings = settings
        self._params = dict(params or {})
        self.synced = synced or asyncio.Event()
        """Set once the first list reached the sink."""

    async def run(self) -> None:
        delay = self._settings.retry_base
        while True:
            try:
                version = await self._list()
                delay = self._settings.retry_base
                while True:
                    version = await self._watch(version)
            except _Expired:
                log.info("watch of %s expired, listing again", self._path)
                continue
            except (aiohttp.ClientError, TimeoutError, ValueError, KeyError, TypeError) as error:
                log.warning(
                    "list/watch of %s failed (%s), retrying in %.1f s", self._path, error, delay
                )
            await asyncio.sleep(delay)
            delay = min(delay * 2, self._settings.retry_cap)

    async def _list(self) -> str:
        timeout = aiohttp.ClientTimeout(total=self._settings.request_timeout * 6)
        async with self._upstream.session.get(
            self._upstream.base_url + self._path, params=self._params, timeout=timeout
        ) as answer:
            if answer.status != 200:
                text = (await answer.text())[:200]
                raise ValueError(f"list answered {answer.status}: {text}")
            body = await answer.json()
        items = body.get("items") or []
        self._sink.replace(items)
        self.synced.set()
        return str(body["metadata"]["resourceVersion"])

    async def _watch(self, version: str) -> str:
        params = {
            **self._params,
            "watch": "true",
            "resourceVersion": version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(self._settings.watch_timeout),
        }
        # The server ends the watch after timeoutSeconds; a socket silent for much longer than
        # that (bookmarks come every minute) is a dead link.
        timeout = aiohttp.ClientTimeout(
            total=None,
            sock_connect=self._settings.request_timeout,
            sock_read=self._settings.watch_timeout + 60,
        )
        async with self._upstream.session.get(
            self._upstream.base_url + self._path, params=params, timeout=timeout
        ) as answer:
            if answer.status == 410:
                raise _Expired
            if answer.status != 200:
                text = (await answer.text())[:200]
                raise ValueError(f"watch answered {answer.status}: {text}")
            async for line in self._lines(answer):
                version = self._event(line, version)
        return version

    async def _lines(self, answer: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
        buffer = b""
        async for chunk in answer.content.iter_any():
            buffer += chunk
            while b"\n" in buffer:
                line, buffer = buffer.split(b"\n", 1)
                if line.strip():
                    yield line
            if len(buffer) > self._settings.max_event_bytes:
                raise ValueError(f"a watch event over {self._settings.max_event_bytes} bytes")
        if buffer.strip():
            yield buffer

    def _event(self, line: bytes, version: str) -> str:
        event = json.loads(line)
        kind, obj = event.get("type"), event.get("object") or {}
        if kind == "ERROR":
            if obj.get("code") == 410:
                raise _Expired
            raise ValueError(f"watch error: {obj.get('message')}")
        version = str(obj.get("metadata", {}).get("resourceVersion") or version)
        if kind in ("ADDED", "MODIFIED", "DELETED"):
            self._sink.apply(kind, obj)
        return version
