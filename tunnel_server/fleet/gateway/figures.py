"""Recent per-route, per-backend figures for a route's status: requests, errors, latency.

Pure (the time is an argument): the listener records every answered request, the router
reads a snapshot when it writes a route's status (at most every ``FleetRouterSettings
.figures_seconds``, and only when the figures changed).

Rules:

* A window of the last ``WINDOW_SECONDS``, in ``SLICES`` equal slices: requests and errors
  count per slice, and a slice that ages out is dropped whole, so a figure covers between
  ``WINDOW_SECONDS - slice`` and ``WINDOW_SECONDS`` seconds (no per-request bookkeeping).
* Latency: the last ``MAX_SAMPLES`` answers' seconds within the window (a bounded memory
  per backend however busy it is); p50 and p99 by nearest rank, in milliseconds.
* An error is an answer of 5xx (ours or the backend's) or an answer cut short.
* Keys are a route name and a backend (``cluster/namespace/service:port``): both come from
  operator objects, so they are bounded; ``retain`` forgets the routes that are gone.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Collection
from dataclasses import dataclass, field

__all__ = ["MAX_SAMPLES", "SLICES", "WINDOW_SECONDS", "Figures"]

WINDOW_SECONDS = 60.0
"""Seconds the status figures look back: long enough to smooth a few requests, short enough
that a console shows a failover's effect within a minute."""
SLICES = 6
MAX_SAMPLES = 4096
"""Latency samples kept per backend (the most recent): p99 needs a few hundred at least."""


@dataclass(kw_only=True)
class _Window:
    slices: deque[tuple[int, int, int]] = field(default_factory=deque)
    """(slice number, requests, errors), oldest first."""
    samples: deque[tuple[float, float]] = field(default_factory=lambda: deque(maxlen=MAX_SAMPLES))
    """(when, seconds), oldest first."""

    def add(self, *, error: bool, seconds: float, now: float) -> None:
        number = math.floor(now / (WINDOW_SECONDS / SLICES))
        if self.slices and self.slices[-1][0] == number:
            _, requests, errors = self.slices[-1]
            self.slices[-1] = (number, requests + 1, errors + int(error))
        else:
            self.slices.append((number, 1, int(error)))
        self.samples.append((now, seconds))
        self.prune(now)

    def prune(self, now: float) -> None:
        oldest = math.floor(now / (WINDOW_SECONDS / SLICES)) - SLICES + 1
        while self.slices and self.slices[0][0] < oldest:
            self.slices.popleft()
        while self.samples and self.samples[0][0] <= now - WINDOW_SECONDS:
            self.samples.popleft()


def _rank(ordered: list[float], share: float) -> float:
    return ordered[max(0, math.ceil(share * len(ordered)) - 1)]


class Figures:
    """Per (route, backend) windows (module docstring)."""

    def __init__(self) -> None:
        self._windows: dict[tuple[str, str], _Window] = {}

    def record(self, route: str, backend: str, *, error: bool, seconds: float, now: float) -> None:
        window = self._windows.get((route, backend))
        if window is None:
            window = self._windows[route, backend] = _Window()
        window.add(error=error, seconds=seconds, now=now)

    def retain(self, routes: Collection[str]) -> None:
        """Forget every route not in ``routes``."""
        for key in [key for key in self._windows if key[0] not in routes]:
            del self._windows[key]

    def snapshot(self, route: str, backend: str, *, now: float) -> dict[str, float | int]:
        """``requests``, ``errors`` and (with any answer) ``latencyP50Ms``/``latencyP99Ms``."""
        window = self._windows.get((route, backend))
        if window is None:
            return {"requests": 0, "errors": 0}
        window.prune(now)
        out: dict[str, float | int] = {
            "requests": sum(requests for _, requests, _ in window.slices),
            "errors": sum(errors for _, _, errors in window.slices),
        }
        if window.samples:
            ordered = sorted(seconds for _, seconds in window.samples)
            out["latencyP50Ms"] = round(_rank(ordered, 0.50) * 1000, 1)
            out["latencyP99Ms"] = round(_rank(ordered, 0.99) * 1000, 1)
        return out
