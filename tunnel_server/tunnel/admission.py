"""Admission of tunnel sessions: how many are being set up, and when a refused agent comes back.

See ``tunnel_server.tunnel.endpoint`` for where it is applied (before any certificate check).
"""

from __future__ import annotations

import math
import random
import time

import prometheus_client

RATE_WINDOW = 5.0
"""Seconds over which the rate of completed set-ups is measured for ``Retry-After``."""

PEAK_DECAY = 0.9
"""Per window, how much of the peak rate is kept: it fades over about a minute."""

MIN_RATE = 10.0
"""Set-ups per second assumed at least, so a stalled measurement cannot promise minutes."""


class Admission:
    """How many sessions are being set up, and when a refused agent should come back.

    Each refused agent gets a reservation: the next free moment on a clock that advances by
    1/rate per refusal, the rate being the recent peak of set-ups completed per second. So
    2,000 agents refused at once by a server that sets up 200 a second are told 1 to 11 s
    (whole seconds; the agent adds its own jitter), 200 per second, not all the same second.
    Reservations past ``retry_after_max`` are spread at random over its second half.
    """

    def __init__(
        self,
        *,
        limit: int,
        retry_after_max: float,
        registry: prometheus_client.CollectorRegistry,
    ) -> None:
        self.limit = limit
        self.retry_after_max = retry_after_max
        self.in_progress = 0
        self.refusing = 0
        """Refusals since the last admitted set-up (logged once per burst)."""
        self._window_start = time.monotonic()
        self._window_done = 0
        self._rate = 0.0
        self._next_free = 0.0
        self.gauge = prometheus_client.Gauge(
            "tunnel_server_session_setups_in_progress",
            "Tunnel sessions being set up (request received, HELLOs not yet exchanged)",
            registry=registry,
        )
        self.gauge.set_function(lambda: self.in_progress)

    def try_enter(self) -> bool:
        """Take a set-up slot; False when all ``limit`` are taken (0 means no limit)."""
        if self.limit and self.in_progress >= self.limit:
            self.refusing += 1
            return False
        self.in_progress += 1
        return True

    def leave(self, *, completed: bool) -> None:
        self.in_progress -= 1
        if completed:
            self._roll(time.monotonic())
            self._window_done += 1

    def _roll(self, now: float) -> None:
        elapsed = now - self._window_start
        if elapsed >= RATE_WINDOW:
            self._rate = max(self._window_done / elapsed, self._rate * PEAK_DECAY)
            self._window_start, self._window_done = now, 0

    def rate(self, now: float) -> float:
        """What the server manages: its recent peak of set-ups completed per second.

        The peak, not the last window: while agents wait as told fewer set-ups complete, and a
        rate measured then would tell the next ones to wait even longer.
        """
        self._roll(now)
        current = self._window_done / max(now - self._window_start, 1.0)
        return max(self._rate, current, MIN_RATE)

    def retry_after(self, now: float | None = None) -> int:
        """Whole seconds this refused agent should wait: its reservation on the clock."""
        now = time.monotonic() if now is None else now
        at = max(self._next_free, now + 1.0)
        self._next_free = at + 1.0 / self.rate(now)
        wait = at - now
        if wait >= self.retry_after_max:
            self._next_free = now + self.retry_after_max
            wait = random.uniform(self.retry_after_max / 2, self.retry_after_max)  # noqa: S311 - jitter
        return math.ceil(wait)
