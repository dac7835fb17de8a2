"""Which endpoint to dial next: round robin with outlier ejection (sans-IO: time passed in).

Rules:

* ``order(key, endpoints, now)`` gives the endpoints of one Service port in the order to try
  them: the ones not ejected first, starting one further than last time (round robin per
  ``key``), then the ejected ones, the soonest to return first. The caller dials them in that
  order until one connects (within its dial timeout), so an ejected endpoint is dialled only
  when every other one just failed: better a last try than refusing a request outright.
* ``failed(endpoint, now)`` counts a connect failure; ``eject_after`` of them in a row eject
  the endpoint for ``eject_base`` seconds, doubling with every ejection in a row, at most
  ``eject_max`` (Envoy's outlier detection, for connect failures only: this layer sees TCP,
  not HTTP answers; the cloud's gateway judges answers).
* An endpoint whose ejection ran out is on probation: its next failure ejects it again at once
  (for twice as long); ``succeeded(endpoint)`` (a connect that worked) clears all of it.
* State is per endpoint (address and port), whichever Service it belongs to: a dead pod is dead
  for every Service. ``retain(endpoints)`` forgets endpoints that are gone, so the state stays
  bounded by the endpoints the agent knows; round-robin cursors are bounded by ``max_keys``.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from edge_agent.cluster.gateway.endpoints import Endpoint


@dataclass(slots=True)
class _Health:
    failures: int = 0
    """Connect failures in a row."""
    ejections: int = 0
    """Ejections in a row (without a successful connect between them)."""
    until: float = 0.0
    """Monotonic time the current ejection ends (0: never ejected)."""


class Balancer:
    """Round robin over the endpoints not ejected; see the module's rules."""

    def __init__(
        self, *, eject_after: int, eject_base: float, eject_max: float, max_keys: int = 4096
    ) -> None:
        if eject_after < 1 or not 0 < eject_base <= eject_max or max_keys < 1:
            raise ValueError("eject_after >= 1, 0 < eject_base <= eject_max, max_keys >= 1")
        self._eject_after = eject_after
        self._eject_base = eject_base
        self._eject_max = eject_max
        self._max_keys = max_keys
        self._health: dict[Endpoint, _Health] = {}
        self._cursors: dict[str, int] = {}
        self.ejections = 0
        """Ejections so far (all endpoints)."""

    def is_ejected(self, endpoint: Endpoint, now: float) -> bool:
        health = self._health.get(endpoint)
        return health is not None and health.until > now

    def order(self, key: str, endpoints: Sequence[Endpoint], now: float) -> list[Endpoint]:
        """``endpoints`` in the order to try them (all of them, each once)."""
        healthy = [e for e in endpoints if not self.is_ejected(e, now)]
        ejected = sorted(
            (e for e in endpoints if self.is_ejected(e, now)), key=lambda e: self._health[e].until
        )
        if not healthy:
            return ejected
        cursor = self._cursors.pop(key, 0)
        self._cursors[key] = cursor + 1  # re-inserted: the dict's order is least recently used
        if len(self._cursors) > self._max_keys:
            del self._cursors[next(iter(self._cursors))]
        start = cursor % len(healthy)
        return healthy[start:] + healthy[:start] + ejected

    def failed(self, endpoint: Endpoint, now: float) -> bool:
        """Count a connect failure; True when it ejects the endpoint now."""
        health = self._health.setdefault(endpoint, _Health())
        if health.until > now:
            return False  # dialled as a last resort while ejected: already counted out
        on_probation = health.ejections > 0
        health.failures += 1
        if health.failures < self._eject_after and not on_probation:
            return False
        duration = min(self._eject_base * 2**health.ejections, self._eject_max)
        health.ejections = min(health.ejections + 1, 64)
        health.failures = 0
        health.until = now + duration
        self.ejections += 1
        return True

    def succeeded(self, endpoint: Endpoint) -> None:
        """A connect worked: the endpoint is healthy again, its history forgotten."""
        self._health.pop(endpoint, None)

    def ejected(self, now: float) -> dict[Endpoint, float]:
        """Endpoints ejected at ``now``, with the seconds until each returns."""
        return {e: h.until - now for e, h in self._health.items() if h.until > now}

    def retain(self, endpoints: Iterable[Endpoint]) -> None:
        """Forget every endpoint not in ``endpoints`` (they left their Services)."""
        keep = set(endpoints)
        for endpoint in [e for e in self._health if e not in keep]:
            del self._health[endpoint]
