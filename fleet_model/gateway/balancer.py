"""Which backend takes a request: smooth weighted round robin, slow start, affinity, mirrors.

Pure and deterministic: no randomness and no clock (``now`` and the set of available backends
are arguments). One ``Balancer`` per route rule (the gateway) or per Service (the cluster
agent choosing among ready endpoints, all weights 1).

Rules:

* Smooth weighted round robin (nginx's): every pick adds each eligible backend's effective
  weight to its ``current``, takes the largest ``current`` (ties: the first in ``backendRefs``
  order) and subtracts the eligible total from it. Over any run of ``total`` picks in which the
  eligible set and weights stay the same, every backend is picked exactly ``weight`` times
  from a fresh balancer (90/10 gives 900/100 in 1,000 picks), interleaved rather than bunched.
* Eligible: available (``available`` maps key → the time it became available, from the
  HealthBoard), weight > 0, and not in ``exclude`` (backends a retry already tried). An
  unavailable backend's share goes to the others at the next pick, since totals are taken over
  the eligible ones only; its ``current`` is dropped and starts from 0 when it is back.
* Slow start: a backend available for less than ``slow_start_seconds`` counts with
  ``weight * step / steps`` (at least 1), ``step`` going 1..``steps`` in equal slices of the
  window; ``next_change`` says when the next step begins, so the driver need not poll.
  ``available`` times of ``-inf`` (never failed since start) skip slow start.
* Affinity (``affinity_key``): weighted rendezvous hashing (highest score
  ``weight / -ln(u)``, ``u`` from a BLAKE2b hash of key and backend, uniform in (0, 1)) over the
  eligible backends with their effective weights. The same key gets the same backend while
  that backend stays eligible; when it leaves, only its keys move; when its weight changes
  (slow start), keys move only to or from it. Affinity picks leave the round robin untouched.
* ``Mirror``: a deterministic share: request n (counted from 0) is mirrored exactly when
  ``floor((n + 1) * percent / 100) > floor(n * percent / 100)``, so any 100 consecutive
  requests mirror exactly ``percent``.
"""

from __future__ import annotations

import hashlib
import math
from collections.abc import Collection, Mapping
from dataclasses import dataclass

__all__ = ["Balancer", "BalancerSettings", "Mirror", "rendezvous"]


@dataclass(frozen=True, kw_only=True, slots=True)
class BalancerSettings:
    slow_start_seconds: float = 30.0
    """Seconds a recovered backend takes to reach its full weight (0: at once). Envoy and
    nginx Plus both default to off; 30 s lets a cold cluster's caches and pools fill before it
    takes its whole share, and is still short next to a failover's human timescale."""
    slow_start_steps: int = 10
    """Equal weight steps across the window: the round robin stays exact inside each step,
    and the driver wakes only ``steps`` times per recovery."""


class Balancer:
    """Smooth weighted round robin over one rule's backends, with slow start and affinity."""

    def __init__(
        self, weights: Mapping[str, int], *, settings: BalancerSettings | None = None
    ) -> None:
        """``weights``: backend key → weight (0..), in ``backendRefs`` order."""
        self._weights = dict(weights)
        self._settings = settings or BalancerSettings()
        self._current: dict[str, int] = {}

    @property
    def weights(self) -> dict[str, int]:
        return dict(self._weights)

    def effective_weights(
        self,
        *,
        now: float,
        available: Mapping[str, float],
        exclude: Collection[str] = (),
    ) -> dict[str, int]:
        """Eligible backend key → weight at ``now`` (slow start applied), in order."""
        out: dict[str, int] = {}
        for key, weight in self._weights.items():
            since = available.get(key)
            if since is None or weight <= 0 or key in exclude:
                continue
            out[key] = self._ramped(weight, now - since)
        return out

    def _ramped(self, weight: int, elapsed: float) -> int:
        window, steps = self._settings.slow_start_seconds, self._settings.slow_start_steps
        if window <= 0 or elapsed >= window or steps <= 1:
            return weight
        step = min(steps, max(1, math.floor(max(elapsed, 0.0) * steps / window) + 1))
        return max(1, weight * step // steps)

    def next_change(self, *, now: float, available: Mapping[str, float]) -> float | None:
        """When the next slow-start step begins for any backend, or None (no ramp under way)."""
        window, steps = self._settings.slow_start_seconds, self._settings.slow_start_steps
        if window <= 0 or steps <= 1:
            return None
        soonest: float | None = None
        for key in self._weights:
            since = available.get(key)
            if since is None or not math.isfinite(since) or now - since >= window:
                continue
            slice_ = window / steps
            done = math.floor(max(now - since, 0.0) / slice_) + 1
            at = since + min(done, steps) * slice_
            soonest = at if soonest is None else min(soonest, at)
        return soonest

    def pick(
        self,
        *,
        now: float,
        available: Mapping[str, float],
        exclude: Collection[str] = (),
        affinity_key: str | None = None,
    ) -> str | None:
        """The backend for the next request, or None when no backend is eligible (503)."""
        serving = self.effective_weights(now=now, available=available)
        # Forget the round-robin state of backends that left (unavailable or weight 0), not of
        # those only excluded from this pick by a retry: they are back at the next one.
        for key in list(self._current):
            if key not in serving:
                del self._current[key]
        weights = {key: weight for key, weight in serving.items() if key not in exclude}
        if not weights:
            return None
        if affinity_key is not None:
            return rendezvous(affinity_key, weights)
        total = sum(weights.values())
        best: str | None = None
        best_current = 0
        for key, weight in weights.items():
            current = self._current.get(key, 0) + weight
            self._current[key] = current
            if best is None or current > best_current:
                best, best_current = key, current
        assert best is not None  # noqa: S101 - weights is not empty
        self._current[best] -= total
        return best


def _unit_hash(key: str, backend: str) -> float:
    digest = hashlib.blake2b(
        f"{len(key)}:{key}|{backend}".encode(errors="surrogatepass"), digest_size=8
    ).digest()
    return (int.from_bytes(digest, "big") + 0.5) / 2.0**64


def rendezvous(key: str, weights: Mapping[str, int]) -> str | None:
    """Weighted rendezvous hashing: the backend for ``key`` among ``weights`` (> 0), or None.

    Ties (practically impossible) go to the first backend in order.
    """
    best: str | None = None
    best_score = -1.0
    for backend, weight in weights.items():
        if weight <= 0:
            continue
        score = weight / -math.log(_unit_hash(key, backend))
        if score > best_score:
            best, best_score = backend, score
    return best


class Mirror:
    """Whether the next request of a rule is mirrored: exactly ``percent`` of every 100."""

    def __init__(self, percent: int) -> None:
        if not 0 <= percent <= 100:
            raise ValueError("percent must be 0..100")
        self._percent = percent
        self._count = 0

    def take(self) -> bool:
        n = self._count
        self._count = (n + 1) % 100
        return (n + 1) * self._percent // 100 > n * self._percent // 100
