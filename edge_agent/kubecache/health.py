# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Is the cloud API server reachable? Probes plus passive signals, with thresholds.

Rules (the state machine is :class:`HealthState`, pure and synchronous):

* The first result decides the initial state at once, so an agent that boots without a link
  serves from the cache immediately and one that boots online goes upstream immediately.
* After that, ``failure_threshold`` consecutive failures make it offline and
  ``success_threshold`` consecutive successes make it online again. A failure is a probe that
  fails, or a proxied request that could not reach the upstream (passive, so a cut is
  noticed by the first request after it, not only by the next probe). Only probes count as
  successes: a lucky request through a flapping link does not bring every watch back up.
* Probes run every ``interval``, but every ``retry_interval`` while the last result points
  the other way (a failure while online, a success while offline), and at once after a
  proxied request failed: a silent link (every probe waits out its ``timeout``) is then
  declared offline in seconds, not after ``failure_threshold`` whole intervals.
* Every transition is logged at WARNING and counted.

:class:`HealthChecker` runs the probe loop; defaults are in ``HealthSettings``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import aiohttp

from edge_agent.kubecache.settings import HealthSettings
from edge_agent.kubecache.upstream import Upstream

log = logging.getLogger("edge_agent.kubecache.health")


class State(StrEnum):
    UNKNOWN = "unknown"
    ONLINE = "online"
    OFFLINE = "offline"


@dataclass(kw_only=True)
class HealthState:
    """Thresholds over consecutive results; returns the new state when it changes."""

    failure_threshold: int
    success_threshold: int
    state: State = State.UNKNOWN
    failures: int = 0
    successes: int = 0
    last_error: str = ""
    changed_at: float = field(default_factory=time.time)

    def record(self, *, ok: bool, probe: bool = True, error: str = "") -> State | None:
        if ok:
            if not probe:
                self.failures = 0 if self.state is State.ONLINE else self.failures
                return None
            self.failures = 0
            self.successes += 1
            target_reached = self.successes >= self.success_threshold
            if self.state is State.UNKNOWN or (self.state is State.OFFLINE and target_reached):
                return self._move(State.ONLINE)
            return None
        self.successes = 0
        self.failures += 1
        self.last_error = error
        if self.state is State.UNKNOWN or (
            self.state is State.ONLINE and self.failures >= self.failure_threshold
        ):
            return self._move(State.OFFLINE)
        return None

    def next_probe_delay(self, *, interval: float, retry_interval: float) -> float:
        """Seconds until the next probe: sooner while the last result points the other way."""
        confirming = (self.state is State.ONLINE and self.failures > 0) or (
            self.state is State.OFFLINE and self.successes > 0
        )
        return min(interval, retry_interval) if confirming else interval

    def _move(self, state: State) -> State:
        self.state = state
        self.changed_at = time.time()
        return state


class HealthChecker:
    """Probes the upstream on a timer and tells everyone who waits when the state flips."""

    def __init__(self, *, upstream: Upstream, settings: HealthSettings) -> None:
        self.settings = settings
        self.upstream = upstream
        self.state = HealthState(
            failure_threshold=settings.failure_threshold,
            success_threshold=settings.success_threshold,
        )
        self.transitions = 0
        self._changed = asyncio.Condition()
        self._wake = asyncio.Event()
        self.on_change: list[Any] = []
        """Callables ``f(state)`` run on every transition (metrics, sync on reconnect)."""

    @property
    def online(self) -> bool:
        return self.state.state is State.ONLINE

    async def run(self) -> None:
        """Probe forever; cancelled when the proxy stops."""
        while True:
            await self.probe_once()
            delay = self.state.next_probe_delay(
                interval=self.settings.interval, retry_interval=self.settings.retry_interval
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(delay):
                    await self._wake.wait()
            self._wake.clear()

    async def probe_once(self) -> None:
        url = self.upstream.base_url.rstrip("/") + self.settings.probe_path
        timeout = aiohttp.ClientTimeout(total=self.settings.timeout)
        try:
            async with self.upstream.session.get(url, timeout=timeout) as response:
                await response.read()
                ok = response.status == 200
                error = "" if ok else f"HTTP {response.status} from {self.settings.probe_path}"
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            ok, error = False, f"{type(exc).__name__}: {exc}"
        await self._record(ok=ok, probe=True, error=error)

    async def report_failure(self, error: str) -> None:
        """A proxied request could not reach the upstream: count it and probe at once."""
        await self._record(ok=False, probe=False, error=error)
        if self.state.state is State.ONLINE:
            self._wake.set()

    async def _record(self, *, ok: bool, probe: bool, error: str) -> None:
        previous = self.state.state
        changed = self.state.record(ok=ok, probe=probe, error=error)
        if changed is None:
            return
        self.transitions += 1
        if changed is State.OFFLINE:
            log.warning(
                "upstream %s is unreachable (%s): serving from the cache (was %s)",
                self.upstream.base_url,
                error,
                previous,
            )
        else:
            log.warning(
                "upstream %s is reachable: going online (was %s)", self.upstream.base_url, previous
            )
        for callback in self.on_change:
            callback(changed)
        async with self._changed:
            self._changed.notify_all()

    async def wait_for(self, state: State) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.state.state is state)

    async def wait_known(self) -> None:
        async with self._changed:
            await self._changed.wait_for(lambda: self.state.state is not State.UNKNOWN)

    def snapshot(self) -> dict[str, Any]:
        return {
            "state": self.state.state.value,
            "since": self.state.changed_at,
            "consecutive_failures": self.state.failures,
            "consecutive_successes": self.state.successes,
            "last_error": self.state.last_error,
            "transitions": self.transitions,
            "upstream": self.upstream.base_url,
        }
