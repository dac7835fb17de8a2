# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The asyncio face of the disk cache: one worker thread, degradation, and a change feed.

SQLite blocks (reads, commits, fsync), so every call runs on a single worker thread. One
thread and not a pool: it serialises writes, which keeps "read the current resourceVersion,
then write" atomic together with the store's transactions, and SQLite allows one writer anyway.

If the disk fails (full, read-only, corrupt: ``sqlite3.Error`` or ``OSError``) the cache goes
*degraded*: it logs at ERROR once, counts the failure, answers every read with None and drops
every write. The proxy keeps passing requests through, so a broken disk never breaks the node
while it is online. It stays degraded until restart (or ``edge-agent cache purge``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

from edge_agent.kubecache.metrics import KubeCacheMetrics
from edge_agent.kubecache.store import CacheStore, Change, StoreFormatError

log = logging.getLogger("edge_agent.kubecache.cache")

T = TypeVar("T")
_FAULTS = (sqlite3.Error, OSError, StoreFormatError, ValueError, KeyError)
Listener = Callable[[str, str, Change], None]


class AsyncStore:
    """Runs :class:`CacheStore` calls off the event loop and survives a failing disk."""

    def __init__(self, *, metrics: KubeCacheMetrics) -> None:
        self.metrics = metrics
        self.store: CacheStore | None = None
        self.degraded_reason = ""
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kubecache-disk")
        self._listeners: list[Listener] = []
        self._objects = 0
        self._pending = 0

    @property
    def degraded(self) -> bool:
        return self.store is None

    async def open(self, directory: Path) -> None:
        loop = asyncio.get_running_loop()
        try:
            self.store = await loop.run_in_executor(
                self._executor,
                lambda: CacheStore(directory, maintain=True),
            )
        except _FAULTS as exc:
            self._degrade("open", exc)
        else:
            self._objects = self.store.object_count()
            self._pending = self.store.pending_count()
            self.metrics.store_degraded.set(0)
            self.metrics.objects.set(self._objects)
            self.metrics.pending.set(self._pending)

    async def close(self) -> None:
        store, self.store = self.store, None
        if store is not None:
            await asyncio.get_running_loop().run_in_executor(self._executor, store.close)
        self._executor.shutdown(wait=True)

    def _degrade(self, operation: str, exc: BaseException) -> None:
        self.metrics.store_errors.labels(operation=operation).inc()
        self.metrics.store_degraded.set(1)
        if self.degraded_reason:
            return
        self.degraded_reason = f"{operation}: {type(exc).__name__}: {exc}"
        log.error(
            "object cache unusable (%s); passing every request through, no offline answers "
            "until restart or `edge-agent cache purge`",
            self.degraded_reason,
            exc_info=exc,
        )
        store, self.store = self.store, None
        if store is not None:
            with contextlib.suppress(*_FAULTS):
                store.close()

    async def run(self, name: str, operation: Callable[[CacheStore], T]) -> T | None:
        """Run ``operation(store)`` on the disk thread; None if the cache is degraded.

        ``name`` labels the error metric if the disk fails.
        """
        store = self.store
        if store is None:
            return None
        loop = asyncio.get_running_loop()

        def call() -> tuple[T, int, int]:
            # Counted on the disk thread: the index is only ever touched from this thread.
            return operation(store), store.object_count(), store.pending_count()

        try:
            result, self._objects, self._pending = await loop.run_in_executor(self._executor, call)
        except _FAULTS as exc:
            self._degrade(name, exc)
            return None
        self.metrics.objects.set(self._objects)
        self.metrics.pending.set(self._pending)
        return result

    def peek(self, operation: Callable[[CacheStore], bool]) -> bool:
        """Ask the store's in-memory state on the event loop, without the disk thread.

        For checks that may be stale but never wrong (``CacheStore.would_record``): a watch
        that records nothing (a watch from the past, one of a hundred on one view) then costs
        no trip to the disk thread per event. False when degraded.
        """
        store = self.store
        return store is not None and operation(store)

    # ------------------------------------------------------------ change feed

    @contextlib.contextmanager
    def subscribe(self, listener: Listener) -> Iterator[None]:
        """Call ``listener(component, resource_key, change)`` for every local change."""
        self._listeners.append(listener)
        try:
            yield
        finally:
            self._listeners.remove(listener)

    def publish(self, component: str, resource_key: str, change: Change) -> None:
        for listener in list(self._listeners):
            listener(component, resource_key, change)

    def status(self) -> dict[str, Any]:
        return {
            "degraded": self.degraded,
            "degraded_reason": self.degraded_reason,
            "objects": self._objects,
            "pending_heartbeats": self._pending,
        }
