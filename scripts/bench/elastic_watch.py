"""The elastic benchmark's clock on pods: one watch of every pod, and the pure sums over it.

``PodClock`` runs one pod watch (all namespaces) of the member's API server in a thread of its
own, with its own event loop, so the bench's blocking steps (kubectl, the harness) never delay
an event's timestamp. For each pod it keeps when the watch first showed it (``seen``), when it
first showed it bound (``bound``: ``spec.nodeName`` set), its node, its labels, and when it
showed it terminating or deleted (``gone``). Times are ``time.monotonic()`` at the event's
arrival: the pod's own timestamps have one-second resolution, too coarse for a p50.

Rules:

* The watch starts from the resourceVersion of a LIST, so pods that exist before ``start``
  are known (their ``seen`` is the LIST's arrival: callers only time pods created later).
* A watch that ends is made again from the last resourceVersion (bookmarks keep it fresh); a
  410 Gone or any other failure is recorded in ``errors`` and the watch relists: figures of
  pods seen only through a relist would be wrong, so the bench reports the error instead.
* ``scale_in_violations`` and ``latencies`` are pure (no clock, no I/O).
"""

from __future__ import annotations

import asyncio
import json
import ssl
import threading
import time
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from fleet_model.elastic.units import WAITING_GATE as GATE

WATCH_SECONDS = 300
"""Server-side timeout of one watch request; it is simply made again."""


@dataclass(slots=True)
class PodTimes:
    namespace: str
    name: str
    labels: dict[str, str]
    seen: float
    bound: float | None = None
    node: str = ""
    gone: float | None = None
    gated: bool = False
    """The watch showed the pod at the elastic scheduling gate at least once."""
    ungated: float | None = None
    """When the watch first showed it without the gate after that (the controller released it)."""


@dataclass(slots=True)
class PodClock:
    """Every pod of the member, timed as the watch shows it (see the module docstring)."""

    url: str
    token: str
    ssl_context: ssl.SSLContext
    pods: dict[str, PodTimes] = field(default_factory=dict)
    """By uid."""
    errors: list[str] = field(default_factory=list)
    events: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _thread: threading.Thread | None = None
    _loop: asyncio.AbstractEventLoop | None = None
    _stop: asyncio.Event | None = None
    _listed: threading.Event = field(default_factory=threading.Event)

    def start(self, within: float = 30.0) -> None:
        self._thread = threading.Thread(target=self._main, name="elastic-bench.podclock")
        self._thread.start()
        if not self._listed.wait(within):
            raise RuntimeError(f"the pod watch did not list within {within:.0f} s: {self.errors}")

    def stop(self) -> None:
        loop, stop = self._loop, self._stop
        if loop is not None and stop is not None:
            loop.call_soon_threadsafe(stop.set)
        if self._thread is not None:
            self._thread.join(30.0)

    def snapshot(self) -> list[PodTimes]:
        with self._lock:
            return [
                PodTimes(
                    p.namespace,
                    p.name,
                    dict(p.labels),
                    p.seen,
                    p.bound,
                    p.node,
                    p.gone,
                    p.gated,
                    p.ungated,
                )
                for p in self.pods.values()
            ]

    def in_namespace(self, namespace: str) -> list[PodTimes]:
        return [p for p in self.snapshot() if p.namespace == namespace]

    # -- the thread

    def _main(self) -> None:
        asyncio.run(self._run())

    async def _run(self) -> None:
        self._loop = asyncio.get_running_loop()
        stop = self._stop = asyncio.Event()
        connector = aiohttp.TCPConnector(ssl=self.ssl_context, limit=2)
        headers = {"Authorization": f"Bearer {self.token}"}
        async with (
            aiohttp.ClientSession(connector=connector, headers=headers) as http,
            asyncio.TaskGroup() as group,
        ):
            watcher = group.create_task(self._watch_forever(http), name="podclock.watch")
            await stop.wait()
            watcher.cancel()

    async def _list(self, http: aiohttp.ClientSession) -> str:
        now = time.monotonic()
        async with http.get(f"{self.url}/api/v1/pods", params={"limit": "0"}) as response:
            body = await response.json()
            if response.status != 200:
                raise RuntimeError(f"LIST pods: HTTP {response.status}")
        for pod in body.get("items") or ():
            self._record("ADDED", pod, now)
        self._listed.set()
        return str(body["metadata"]["resourceVersion"])

    async def _watch_forever(self, http: aiohttp.ClientSession) -> None:
        rv = ""
        while True:
            try:
                if not rv:
                    rv = await self._list(http)
                rv = await self._watch(http, rv)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - recorded; the bench reports it
                self.errors.append(f"{type(exc).__name__}: {exc}")
                rv = ""
                await asyncio.sleep(0.2)

    async def _watch(self, http: aiohttp.ClientSession, rv: str) -> str:
        params = {
            "watch": "1",
            "resourceVersion": rv,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(WATCH_SECONDS),
        }
        timeout = aiohttp.ClientTimeout(total=None, sock_read=WATCH_SECONDS + 30)
        async with http.get(f"{self.url}/api/v1/pods", params=params, timeout=timeout) as stream:
            if stream.status != 200:
                raise RuntimeError(f"WATCH pods: HTTP {stream.status}")
            while True:
                line = await stream.content.readline()
                if not line:
                    return rv
                now = time.monotonic()
                event = json.loads(line)
                kind, obj = event.get("type"), event.get("object") or {}
                if kind == "ERROR":
                    raise RuntimeError(f"watch error: {obj.get('message')} ({obj.get('code')})")
                rv = str(obj.get("metadata", {}).get("resourceVersion") or rv)
                if kind != "BOOKMARK":
                    self._record(str(kind), obj, now)

    def _record(self, kind: str, pod: Mapping[str, Any], now: float) -> None:
        meta = pod.get("metadata") or {}
        uid = str(meta.get("uid") or "")
        if not uid:
            return
        spec = pod.get("spec") or {}
        node = str(spec.get("nodeName") or "")
        gated = any(g.get("name") == GATE for g in spec.get("schedulingGates") or ())
        with self._lock:
            self.events += 1
            times = self.pods.get(uid)
            if times is None:
                times = PodTimes(
                    namespace=str(meta.get("namespace") or ""),
                    name=str(meta.get("name") or ""),
                    labels=dict(meta.get("labels") or {}),
                    seen=now,
                )
                self.pods[uid] = times
            if gated:
                times.gated = True
            elif times.gated and times.ungated is None:
                times.ungated = now
            if node and times.bound is None:
                times.bound, times.node = now, node
            if times.gone is None and (kind == "DELETED" or meta.get("deletionTimestamp")):
                times.gone = now


# ---------------------------------------------------------------- pure sums


def latencies(pods: Iterable[PodTimes], *, since: float) -> tuple[list[float], int]:
    """Seconds from seen to bound of the pods first seen at or after ``since``.

    Also how many of those pods were never bound.
    """
    out: list[float] = []
    unbound = 0
    for pod in pods:
        if pod.seen < since:
            continue
        if pod.bound is None:
            unbound += 1
        else:
            out.append(pod.bound - pod.seen)
    return out, unbound


@dataclass(frozen=True, slots=True)
class ScaleInStep:
    """One scale-in step: pods per unit (units in priority order) before, and those removed."""

    before: Mapping[str, int]
    removed: Mapping[str, int]


def step_violations(units: Sequence[str], step: ScaleInStep) -> int:
    """Pods removed from a unit while a later (lower-priority) unit kept pods it could have given.

    A step removes a set of pods at once, so the order inside the step is not observable; what
    is: the set. The right set empties the units from the last one: removing ``k`` pods takes
    ``min(k, left)`` from the last unit, the rest from the one before, and so on. Every pod
    removed from a unit beyond what that order takes from it is one violation.
    """
    left = sum(step.removed.values())
    allowed: dict[str, int] = {}
    for unit in reversed(units):
        take = min(left, step.before.get(unit, 0))
        allowed[unit] = take
        left -= take
    return sum(max(0, step.removed.get(unit, 0) - allowed[unit]) for unit in units)


def scale_in_violations(units: Sequence[str], steps: Iterable[ScaleInStep]) -> int:
    return sum(step_violations(units, step) for step in steps)
