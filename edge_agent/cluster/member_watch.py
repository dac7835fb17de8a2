"""``Informer``: a list-then-watch cache of one resource of the member API server.

What client-go's reflector does, for the agent's own controllers (the elastic autoscaler):

1. LIST the resource in pages (``limit`` / ``continue``); the objects replace the cache and
   the last page's ``resourceVersion`` is where the watch starts. A ``continue`` token that
   expired (410) restarts the LIST from its first page. ``synced`` is set after the first
   complete LIST and stays set.
2. WATCH from that resourceVersion with ``allowWatchBookmarks`` and ``timeoutSeconds``, so
   the server ends every watch after a while and a stuck one does not live forever. Every
   event (ADDED, MODIFIED, DELETED, BOOKMARK) moves the resourceVersion to its object's.
3. A watch that ends or breaks (connection lost, silent for ``idle_timeout``, the API server
   restarted, a line that is not an event) is opened again from the last resourceVersion
   seen, so nothing is listed again and nothing is missed.
4. A 410 Gone (an HTTP answer or an ERROR event with code 410: the server no longer has that
   resourceVersion) means events were lost: LIST again (step 1).
5. A watch event larger than ``max_event_bytes``, or a cache that would hold more than
   ``max_objects``, is refused with one log line and a LIST again (after a back-off): the
   cache stays the last complete state, never a partial one.
6. Every failure waits a back-off before the next try: ``backoff_initial`` doubling up to
   ``backoff_max`` (no jitter, so tests and logs are reproducible). A watch that delivered
   an event (a bookmark counts) resets it; a LIST does not, so a server that answers every
   watch after a LIST with 410 is not hammered. The first 410 after events relists at once.
   A watch the server ends cleanly is opened again at once, unless it ended without a
   single line well before ``watch_timeout`` (a proxy that closes every watch would else
   make a busy loop): that counts as a failure.

The cache is ``items()``: object dicts as the API server sent them, by ``(namespace, name)``
(namespace ``""`` for cluster-scoped resources). ``revision`` counts changes of the cache
(every event that changed it, and every LIST that changed it); a controller awaits
``wait_changed(past, timeout)`` instead of polling. ``run()`` runs until cancelled.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import urllib.parse
from dataclasses import dataclass
from typing import Any

from edge_agent.cluster.member_api import LineTooLongError, MemberApi, MemberApiError

log = logging.getLogger("edge_agent.cluster.member_watch")

Key = tuple[str, str]
"""``(namespace, name)`` of an object; namespace ``""`` when the resource is cluster-scoped."""

_GONE = 410


@dataclass(frozen=True, kw_only=True)
class InformerSettings:
    """Bounds and timing of one ``Informer``; each field says its unit and why its default."""

    page_size: int = 500
    """Objects per LIST page (``limit``): client-go's default; one page of 500 pods is ~2.5 MB,
    well under the member API client's ``max_json_bytes``."""

    max_objects: int = 50_000
    """Objects the cache may hold: a LIST or a watch that would go beyond is refused (logged,
    retried after a back-off) rather than growing the agent's memory without end. 50,000 is
    ten times the pods of a large cluster node pool."""

    max_event_bytes: int = 4 * 1024 * 1024
    """Bytes of one watch event (one line): etcd refuses objects over 1.5 MiB by default and
    JSON with its envelope stays well under 4 MiB; a longer line is refused and relisted."""

    watch_timeout: int = 300
    """Seconds (``timeoutSeconds``) after which the API server ends a watch and the informer
    opens a new one: spreads watches over API server replicas after a rolling update, as
    client-go does (it draws 5-10 min; a fixed value keeps runs reproducible)."""

    idle_timeout: float = 150.0
    """Seconds a watch may stay silent before the connection counts as dead and the watch is
    resumed: the API server sends a bookmark about every minute on an idle watch, so two
    missed bookmarks and some slack. Also bounds one LIST page's silence."""

    backoff_initial: float = 0.5
    """Seconds to wait after the first failure in a row (API server down, 5xx, refused)."""

    backoff_max: float = 30.0
    """Seconds the doubling back-off stops at: an API server back after an outage is seen
    within this, without hammering it meanwhile."""

    def __post_init__(self) -> None:
        if not 1 <= self.page_size <= 10_000:
            raise ValueError(f"page_size must be 1..10000, got {self.page_size}")
        if self.max_objects < 1:
            raise ValueError(f"max_objects must be at least 1, got {self.max_objects}")
        if self.max_event_bytes < 1024:
            raise ValueError(f"max_event_bytes must be at least 1024, got {self.max_event_bytes}")
        if self.watch_timeout < 1:
            raise ValueError(f"watch_timeout must be at least 1 s, got {self.watch_timeout}")
        if not self.idle_timeout > 0:
            raise ValueError(f"idle_timeout must be positive, got {self.idle_timeout}")
        if not 0 < self.backoff_initial <= self.backoff_max:
            raise ValueError("backoff_initial must be positive and at most backoff_max")


class _GoneError(Exception):
    """The server no longer has our resourceVersion: LIST again."""


class _RelistError(Exception):
    """The watch brought something the cache refuses (too big, too many): LIST again."""


def _key_of(obj: object) -> Key | None:
    if not isinstance(obj, dict):
        return None
    metadata = obj.get("metadata")
    if not isinstance(metadata, dict):
        return None
    name, namespace = metadata.get("name"), metadata.get("namespace", "")
    if not isinstance(name, str) or not name or not isinstance(namespace, str):
        return None
    return namespace, name


def _rv_of(obj: object) -> str:
    if isinstance(obj, dict):
        metadata = obj.get("metadata")
        if isinstance(metadata, dict):
            rv = metadata.get("resourceVersion")
            if isinstance(rv, str):
                return rv
    return ""


class Informer:
    """A list-then-watch cache of the objects at ``path`` (see the module's rules).

    ``path`` is a collection on the API server: ``/api/v1/pods``,
    ``/api/v1/namespaces/ns/configmaps``, ``/apis/elastic.edgefleet.io/v1alpha1/nodepools``.
    ``label_selector`` and ``field_selector`` are passed to the server as they are.
    """

    def __init__(
        self,
        api: MemberApi,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        settings: InformerSettings,
    ) -> None:
        if not path.startswith("/") or "?" in path or "#" in path:
            raise ValueError(f"an informer's path is a collection path without a query: {path!r}")
        self._api = api
        self._path = path
        self._selectors: dict[str, str] = {}
        if label_selector:
            self._selectors["labelSelector"] = label_selector
        if field_selector:
            self._selectors["fieldSelector"] = field_selector
        self._settings = settings
        self._items: dict[Key, dict[str, Any]] = {}
        self._resource_version = ""
        self._revision = 0
        self._changed = asyncio.Event()
        self._backoff = 0.0
        self.synced = asyncio.Event()
        """Set after the first complete LIST; stays set (the cache is kept across relists)."""
        self.lists = 0
        """Complete LISTs so far (the first one and every relist)."""
        self.last_error = ""
        """What the last failure was (empty before any): for status and tests."""

    @property
    def path(self) -> str:
        return self._path

    @property
    def revision(self) -> int:
        """Grows by one with every change of the cache."""
        return self._revision

    @property
    def resource_version(self) -> str:
        """The resourceVersion the cache is at (the next watch starts there)."""
        return self._resource_version

    @property
    def backoff(self) -> float:
        """Seconds the next failure waits before its retry (0: none in a row yet).

        It is 0 after a watch that delivered an event; the next failure then waits
        ``backoff_initial``, and a 410 then relists at once.
        """
        return self._backoff

    def items(self) -> dict[Key, dict[str, Any]]:
        """The cached objects by ``(namespace, name)``: a new dict; the objects are shared."""
        return dict(self._items)

    def get(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self._items.get((namespace, name))

    async def wait_changed(self, past: int, timeout: float) -> int:  # noqa: ASYNC109 - a wait that returns either way, not a cancellation
        """The revision, as soon as it is beyond ``past`` or ``timeout`` seconds have passed.

        ``past`` is the revision the caller last acted on; compare the answer with it to
        know whether anything changed (a change made before the call is never missed).
        """
        deadline = time.monotonic() + timeout
        while self._revision <= past:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(left):
                    await self._changed.wait()
        return self._revision

    async def run(self) -> None:
        """LIST and WATCH until cancelled; failures are logged and retried, never raised."""
        must_list = True
        while True:
            try:
                if must_list:
                    await self._list()
                    must_list = False
                if await self._watch():
                    continue
            except _GoneError as error:
                # No back-off for a 410 after a watch that delivered events: it is the normal
                # way a watch learns it fell behind. Another one before any event backs off.
                log.info("%s: %s; listing again", self._path, error)
                self.last_error = str(error)
                must_list = True
                if self._backoff == 0.0:
                    self._backoff = self._settings.backoff_initial
                    continue
            except _RelistError as error:
                log.warning("%s: %s; listing again", self._path, error)
                self.last_error = str(error)
                must_list = True
            except MemberApiError as error:
                log.warning("%s: %s", self._path, error)
                self.last_error = str(error)
            await self._pause()

    async def _pause(self) -> None:
        settings = self._settings
        delay = self._backoff or settings.backoff_initial
        self._backoff = min(delay * 2, settings.backoff_max)
        await asyncio.sleep(delay)

    def _query(self, **params: str) -> str:
        return self._path + "?" + urllib.parse.urlencode({**self._selectors, **params})

    async def _list(self) -> None:
        """One complete paged LIST into the cache; raises before changing it if it fails."""
        settings = self._settings
        listed: dict[Key, dict[str, Any]] = {}
        token = ""
        while True:
            params = {"limit": str(settings.page_size)}
            if token:
                params["continue"] = token
            try:
                page = await self._api.get_json(self._query(**params))
            except MemberApiError as error:
                if error.status == _GONE and token:
                    # The continue token expired (compaction): the snapshot is gone, start over.
                    log.info("%s: the LIST's continue token expired; listing again", self._path)
                    listed, token = {}, ""
                    continue
                raise
            token, rv = self._take_page(page, listed)
            if not token:
                break
        self._replace(listed, rv)

    def _take_page(self, page: object, listed: dict[Key, dict[str, Any]]) -> tuple[str, str]:
        """Add one LIST page's items to ``listed``: ``(continue token, resourceVersion)``."""
        if not isinstance(page, dict) or not isinstance(page.get("items"), list):
            raise MemberApiError(f"LIST {self._path}: the answer is not a list")
        for obj in page["items"]:
            key = _key_of(obj)
            if key is None:
                raise MemberApiError(f"LIST {self._path}: an item without metadata.name")
            listed[key] = obj
        limit = self._settings.max_objects
        if len(listed) > limit:
            raise _RelistError(f"LIST {self._path}: more than {limit} objects (max_objects)")
        metadata = page.get("metadata")
        metadata = metadata if isinstance(metadata, dict) else {}
        token, rv = metadata.get("continue") or "", metadata.get("resourceVersion")
        if not isinstance(token, str):
            raise MemberApiError(f"LIST {self._path}: a continue token that is no string")
        if not isinstance(rv, str) or not rv:
            raise MemberApiError(f"LIST {self._path}: the answer has no resourceVersion")
        return token, rv

    def _replace(self, listed: dict[Key, dict[str, Any]], rv: str) -> None:
        old = self._items
        same = old.keys() == listed.keys() and all(
            _rv_of(old[key]) == _rv_of(obj) for key, obj in listed.items()
        )
        self._items = listed
        self._resource_version = rv
        self.lists += 1
        if not same or not self.synced.is_set():
            self._bump()
        self.synced.set()
        log.debug("%s: listed %d objects at %s", self._path, len(listed), rv)

    def _bump(self) -> None:
        self._revision += 1
        # Wake every waiter, then give later ones a fresh event to wait on.
        self._changed.set()
        self._changed = asyncio.Event()

    async def _watch(self) -> bool:
        """One WATCH from the cache's resourceVersion; True if it should be reopened at once."""
        settings = self._settings
        path = self._query(
            watch="1",
            resourceVersion=self._resource_version,
            allowWatchBookmarks="true",
            timeoutSeconds=str(settings.watch_timeout),
        )
        lines = self._api.stream_lines(
            path, max_line_bytes=settings.max_event_bytes, idle_timeout=settings.idle_timeout
        )
        seen = False
        started = time.monotonic()
        try:
            async with contextlib.aclosing(lines):
                async for line in lines:
                    self._on_event(line)
                    if not seen:
                        seen = True
                        self._backoff = 0.0
        except LineTooLongError:
            raise _RelistError(
                f"a watch event longer than {settings.max_event_bytes} bytes "
                "(max_event_bytes) was refused"
            ) from None
        except MemberApiError as error:
            if error.status == _GONE:
                raise _GoneError(f"resourceVersion {self._resource_version} is gone") from None
            raise
        if not seen and time.monotonic() - started < settings.watch_timeout / 2:
            raise MemberApiError(f"WATCH {self._path}: the server ended the watch at once")
        return True

    def _on_event(self, line: bytes) -> None:
        try:
            event = json.loads(line)
        except ValueError:
            raise MemberApiError(f"WATCH {self._path}: a line that is not JSON") from None
        kind = event.get("type") if isinstance(event, dict) else None
        obj = event.get("object") if isinstance(event, dict) else None
        if kind == "ERROR":
            code = obj.get("code") if isinstance(obj, dict) else None
            message = obj.get("message") if isinstance(obj, dict) else None
            if code == _GONE:
                raise _GoneError(f"the watch ended with 410 Gone: {str(message)[:200]}")
            raise MemberApiError(f"WATCH {self._path}: error event {code}: {str(message)[:200]}")
        rv = _rv_of(obj)
        if kind not in ("ADDED", "MODIFIED", "DELETED", "BOOKMARK") or not rv:
            raise MemberApiError(f"WATCH {self._path}: a line that is not a watch event")
        if kind == "BOOKMARK":
            self._resource_version = rv
            return
        key = _key_of(obj)
        if key is None:
            raise MemberApiError(f"WATCH {self._path}: an object without metadata.name")
        assert isinstance(obj, dict)  # noqa: S101 - _key_of checked it; for mypy
        if kind == "DELETED":
            changed = self._items.pop(key, None) is not None
        else:
            if key not in self._items and len(self._items) >= self._settings.max_objects:
                raise _RelistError(f"more than {self._settings.max_objects} objects (max_objects)")
            changed = True
            self._items[key] = obj
        self._resource_version = rv
        if changed:
            self._bump()
