"""Backend health: one state machine per backend, and the board that holds a pool of them.

Pure: inputs are events with the time they happened (``now``); outputs are each backend's
``Health`` (state, reasons, since when it is available) and the board's ``wake_at`` (when an
ejection ends, so the driver calls ``tick`` then and not before). A backend is a route's
``cluster/namespace/service:port`` at the gateway, or one endpoint ``ip:port`` at the cluster
agent (one board per Service there); the machine does not know which.

States and the rules that move between them (all transitions are in ``BackendHealth._settle``):

* ``Unhealthy`` while any condition holds, reasons listed in this order:

  - ``Unreachable``: the cluster's lease ran out or its tunnel session is gone
    (``Reachability(False)``, until ``Reachability(True)``);
  - ``NoReadyEndpoints``: the agent reports no ready endpoint for the Service
    (``ReadyEndpoints(0)``, until a count > 0);
  - ``FailingChecks``: ``unhealthy_threshold`` active checks failed in a row (until
    ``healthy_threshold`` pass in a row); a ``CheckResult`` may carry its own thresholds
    (a route's ``healthCheck``), else the board's settings count.

  Unknown counts as fine: a new backend is healthy until told otherwise, so the driver must
  feed what it knows (reachability, endpoint count) when it adds one.
* ``Ejected`` (outlier ejection, passive): while otherwise healthy, ``consecutive_5xx`` server
  errors or ``consecutive_connect_errors`` connection failures in a row (a success resets both
  counts) eject the backend for ``base_ejection_seconds * n`` (n: its ejections so far,
  counting this one; capped at ``max_ejection_seconds``). ``n`` starts again from 1 when the
  last ejection ended ``max_ejection_seconds`` or more before. No more than
  ``max_ejection_percent`` of the board's backends are ejected at once, but one may always be
  (Envoy's rule); a backend refused ejection keeps its count and is ejected at its next
  failure if room was made. An ejection lasts its time (conditions met in between add to it,
  they do not end it).
* ``Healthy`` otherwise. ``available_since`` is when it last became healthy (the balancer's
  slow start counts from there), ``-inf`` for a backend healthy since it was added ``warm``
  (at the driver's start: no slow start for what was serving before).

Passive results received while a backend is not healthy (requests that were in flight) are
ignored: they say nothing new.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum

__all__ = [
    "BackendHealth",
    "CheckResult",
    "Event",
    "Health",
    "HealthBoard",
    "HealthSettings",
    "Outcome",
    "Reachability",
    "ReadyEndpoints",
    "Reason",
    "RequestResult",
    "State",
]


class State(StrEnum):
    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"
    EJECTED = "Ejected"


class Reason(StrEnum):
    UNREACHABLE = "Unreachable"
    NO_READY_ENDPOINTS = "NoReadyEndpoints"
    FAILING_CHECKS = "FailingChecks"
    EJECTED = "Ejected"


class Outcome(StrEnum):
    SUCCESS = "Success"
    """A response under 500 (client errors are the client's)."""
    SERVER_ERROR = "ServerError"
    """A 5xx response from the backend."""
    CONNECT_ERROR = "ConnectError"
    """The backend could not be reached: tunnel stream refused, dial failed, reset before a
    response."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Reachability:
    reachable: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class ReadyEndpoints:
    count: int


@dataclass(frozen=True, kw_only=True, slots=True)
class CheckResult:
    ok: bool
    unhealthy_threshold: int | None = None
    """Failures in a row that make the backend unhealthy; None: the board's setting. The
    route's ``healthCheck`` says its own, so the driver passes it with every result."""
    healthy_threshold: int | None = None
    """Passes in a row that make it healthy again; None: the board's setting."""


@dataclass(frozen=True, kw_only=True, slots=True)
class RequestResult:
    outcome: Outcome


Event = Reachability | ReadyEndpoints | CheckResult | RequestResult


@dataclass(frozen=True, kw_only=True, slots=True)
class HealthSettings:
    consecutive_5xx: int = 5
    """Server errors in a row that eject a backend (Envoy's default)."""
    consecutive_connect_errors: int = 3
    """Connection failures in a row that eject a backend: fewer than for 5xx, since a failed
    dial costs the client a retry's latency each time (and the lease takes seconds to say the
    cluster is gone)."""
    base_ejection_seconds: float = 30.0
    """First ejection's length; the n-th lasts n times this (Envoy's default base)."""
    max_ejection_seconds: float = 300.0
    """Cap on one ejection, and the quiet time after which the count starts again (Envoy's)."""
    max_ejection_percent: int = 50
    """Share of the board's backends ejected at once (one always may be): a pool of two can
    eject one, so a canary returning 500s is taken out while the stable side keeps serving."""
    unhealthy_threshold: int = 3
    """Active checks failed in a row that make a backend unhealthy."""
    healthy_threshold: int = 2
    """Active checks passed in a row that make it healthy again."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Health:
    state: State
    reasons: tuple[Reason, ...]
    """Empty when healthy; else every reason, in the order of the module docstring."""
    since: float
    """When the backend entered ``state``."""
    available_since: float | None
    """When it last became healthy (-inf: since it was added warm); None unless healthy."""
    wake_at: float | None
    """When its state will change by time alone (an ejection's end), else None."""

    def describe(self) -> str:
        """One line for a 503 body or a status message."""
        if self.state is State.HEALTHY:
            return "healthy"
        return f"{self.state.value.lower()}: {', '.join(reason.value for reason in self.reasons)}"


class BackendHealth:
    """One backend's state machine (``Health`` is its output)."""

    def __init__(self, *, now: float, settings: HealthSettings, warm: bool = False) -> None:
        self._settings = settings
        self._reachable = True
        self._endpoints: int | None = None
        self._check_failures = 0
        self._check_passes = 0
        self._failing_checks = False
        self._consecutive_5xx = 0
        self._consecutive_connect = 0
        self._ejections = 0
        self._ejected_until: float | None = None
        self._last_ejection_end = -math.inf
        self._health = Health(
            state=State.HEALTHY,
            reasons=(),
            since=now,
            available_since=-math.inf if warm else now,
            wake_at=None,
        )

    @property
    def health(self) -> Health:
        return self._health

    def wants_ejection(self, event: Event) -> bool:
        """Whether ``event`` (a passive result) would eject this backend now."""
        if not isinstance(event, RequestResult) or self._health.state is not State.HEALTHY:
            return False
        if event.outcome is Outcome.SERVER_ERROR:
            return self._consecutive_5xx + 1 >= self._settings.consecutive_5xx
        if event.outcome is Outcome.CONNECT_ERROR:
            return self._consecutive_connect + 1 >= self._settings.consecutive_connect_errors
        return False

    def handle(self, event: Event, *, now: float, may_eject: bool = True) -> bool:
        """Take ``event`` at ``now``; True when the state or reasons changed."""
        match event:
            case Reachability(reachable=reachable):
                self._reachable = reachable
            case ReadyEndpoints(count=count):
                self._endpoints = max(count, 0)
            case CheckResult(ok=ok, unhealthy_threshold=down, healthy_threshold=up):
                self._check(
                    ok=ok,
                    down=self._settings.unhealthy_threshold if down is None else down,
                    up=self._settings.healthy_threshold if up is None else up,
                )
            case RequestResult(outcome=outcome):
                if self._health.state is State.HEALTHY:
                    self._passive(outcome, now=now, may_eject=may_eject)
        return self._settle(now)

    def tick(self, now: float) -> bool:
        """Let time pass to ``now``; True when the state changed (an ejection ended)."""
        return self._settle(now)

    def _check(self, *, ok: bool, down: int, up: int) -> None:
        if ok:
            self._check_failures, self._check_passes = 0, self._check_passes + 1
            if self._check_passes >= up:
                self._failing_checks = False
        else:
            self._check_failures, self._check_passes = self._check_failures + 1, 0
            if self._check_failures >= down:
                self._failing_checks = True

    def _passive(self, outcome: Outcome, *, now: float, may_eject: bool) -> None:
        settings = self._settings
        if outcome is Outcome.SUCCESS:
            self._consecutive_5xx = self._consecutive_connect = 0
            return
        if outcome is Outcome.SERVER_ERROR:
            self._consecutive_5xx += 1
        else:
            self._consecutive_connect += 1
        tripped = (
            self._consecutive_5xx >= settings.consecutive_5xx
            or self._consecutive_connect >= settings.consecutive_connect_errors
        )
        if not tripped or not may_eject:
            return
        if now - self._last_ejection_end >= settings.max_ejection_seconds:
            self._ejections = 0
        self._ejections += 1
        length = min(
            settings.base_ejection_seconds * self._ejections, settings.max_ejection_seconds
        )
        self._ejected_until = now + length
        self._consecutive_5xx = self._consecutive_connect = 0

    def _settle(self, now: float) -> bool:
        """Recompute the state from the conditions at ``now``: every transition happens here."""
        ended_at: float | None = None
        if self._ejected_until is not None and now >= self._ejected_until:
            ended_at = self._last_ejection_end = self._ejected_until
            self._ejected_until = None
        reasons = tuple(
            reason
            for reason, holds in (
                (Reason.UNREACHABLE, not self._reachable),
                (Reason.NO_READY_ENDPOINTS, self._endpoints == 0),
                (Reason.FAILING_CHECKS, self._failing_checks),
                (Reason.EJECTED, self._ejected_until is not None),
            )
            if holds
        )
        if not reasons:
            state = State.HEALTHY
        elif reasons == (Reason.EJECTED,):
            state = State.EJECTED
        else:
            state = State.UNHEALTHY
        old = self._health
        if state is old.state and reasons == old.reasons and self._ejected_until == old.wake_at:
            return False
        # An ejection that ended between ticks dates the recovery at its end, not the tick.
        entered = ended_at if state is State.HEALTHY and ended_at is not None else now
        since = old.since if state is old.state else entered
        if state is State.HEALTHY:
            available = old.available_since if old.state is State.HEALTHY else entered
        else:
            available = None
        self._health = Health(
            state=state,
            reasons=reasons,
            since=since,
            available_since=available,
            wake_at=self._ejected_until,
        )
        return state is not old.state or reasons != old.reasons


class HealthBoard:
    """The backends of one pool, by key: events in, ``available()`` and ``wake_at()`` out."""

    def __init__(self, *, settings: HealthSettings | None = None) -> None:
        self._settings = settings or HealthSettings()
        self._backends: dict[str, BackendHealth] = {}

    def __contains__(self, key: object) -> bool:
        return key in self._backends

    def __iter__(self) -> Iterator[str]:
        return iter(self._backends)

    def __len__(self) -> int:
        return len(self._backends)

    def add(self, key: str, *, now: float, warm: bool = False) -> None:
        """Track ``key`` (no-op if tracked). ``warm``: serving already, skip slow start."""
        if key not in self._backends:
            self._backends[key] = BackendHealth(now=now, settings=self._settings, warm=warm)

    def remove(self, key: str) -> None:
        self._backends.pop(key, None)

    def health(self, key: str) -> Health:
        return self._backends[key].health

    def observe(self, key: str, event: Event, *, now: float) -> Health | None:
        """Feed ``event`` about ``key`` at ``now``: its new Health if it changed, else None.

        Events about a backend not on the board are ignored (None): a request that was in
        flight when its route changed.
        """
        backend = self._backends.get(key)
        if backend is None:
            return None
        may_eject = True
        if backend.wants_ejection(event):
            may_eject = self._room_to_eject()
        changed = backend.handle(event, now=now, may_eject=may_eject)
        return backend.health if changed else None

    def _room_to_eject(self) -> bool:
        ejected = sum(1 for b in self._backends.values() if Reason.EJECTED in b.health.reasons)
        if ejected == 0:
            return True
        return (ejected + 1) * 100 <= self._settings.max_ejection_percent * len(self._backends)

    def tick(self, now: float) -> dict[str, Health]:
        """Let time pass to ``now``: the backends whose state changed, with their new Health."""
        return {key: backend.health for key, backend in self._backends.items() if backend.tick(now)}

    def wake_at(self) -> float | None:
        """The earliest time ``tick`` has something to do, or None."""
        times = [b.health.wake_at for b in self._backends.values() if b.health.wake_at is not None]
        return min(times) if times else None

    def available(self) -> dict[str, float]:
        """Healthy backend key → available since (what ``Balancer.pick`` takes)."""
        out: dict[str, float] = {}
        for key, backend in self._backends.items():
            since = backend.health.available_since
            if since is not None:
                out[key] = since
        return out
