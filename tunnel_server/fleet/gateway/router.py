"""The seam between the gateway's data path and whatever picks backends: ``Router``.

The listener (``server.py``) asks ``route(request)`` once per request and gets a ``Decision``
(backends in the order to try, a header modifier, timeouts, a route name for metrics) or a
``NoRoute`` (404 with its reason). After each attempt it calls ``report(backend, outcome)``,
the passive health signal (refused streams, 5xx, timeouts).

``tunnel-server run --gateway-listen`` serves with ``fleet_router.FleetRouter``, built on the
pure core in ``fleet_model/gateway`` from the stored ``MultiClusterRoute`` objects. Tests of
the data path alone configure a fixed list of backends with ``StaticRouter``;
``UnwiredRouter`` (every request: 404) is for an application without the fleet hub.

What the data path decides itself, whatever the router says: an attempt refused before a
byte was sent (no session, stream rejected or not accepted in time) moves on to the next
backend for every method; a failure after the request went out but before any answer came
back moves on only for an idempotent method (RFC 9110 section 9.2.2) whose body, if any, is
held whole for a replay (``replay.py``: at most ``replay_body_limit`` bytes), and so does an
answer whose status is in ``Decision.retry_codes`` while another backend is left.
The other response-side fields of a ``Decision`` (``response_modifier``, ``set_cookie``,
``mirrors``, ``backoff``) default to doing nothing, so a router may ignore them.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, Protocol

from tunnel_server.fleet.gateway.headers import HeaderModifier

__all__ = [
    "Backend",
    "Decision",
    "NoRoute",
    "Outcome",
    "RequestInfo",
    "Router",
    "StaticRouter",
    "Timeouts",
    "UnwiredRouter",
]


@dataclass(frozen=True, kw_only=True, order=True)
class Backend:
    """``cluster/namespace/service:port``: a Service port in a registered cluster."""

    cluster: str
    namespace: str
    service: str
    port: int

    @property
    def target(self) -> str:
        """The tunnel target the cluster agent serves for it."""
        return f"service/{self.namespace}/{self.service}:{self.port}"

    def __str__(self) -> str:
        return f"{self.cluster}/{self.namespace}/{self.service}:{self.port}"


@dataclass(frozen=True, kw_only=True)
class RequestInfo:
    """What a router may look at: the request's head, never its body."""

    method: str
    host: str
    """The ``Host`` the client sent, lower case, without the port."""
    path: str
    """The path as the client wrote it (percent-encoded), without the query."""
    query: str
    """The raw query string, without ``?``."""
    headers: Sequence[tuple[str, str]]


@dataclass(frozen=True, kw_only=True)
class Timeouts:
    """A route's timeouts (Gateway API ``HTTPRouteTimeouts``); None: the listener's own."""

    request: float | None = None
    """Seconds from arrival until a backend starts answering, all attempts together."""
    backend_request: float | None = None
    """Seconds one backend may take to start answering after the last request byte."""


@dataclass(frozen=True, kw_only=True)
class Decision:
    route: str
    """The route's name, for metrics and logs."""
    backends: tuple[Backend, ...]
    """Backends in the order to try; the first is the choice, the rest are for retries."""
    modifier: HeaderModifier = field(default_factory=HeaderModifier)
    timeouts: Timeouts = field(default_factory=Timeouts)
    response_modifier: HeaderModifier = field(default_factory=HeaderModifier)
    """Gateway API ``ResponseHeaderModifier``: applied to a backend's response head."""
    set_cookie: str | None = None
    """A ``Set-Cookie`` value sent with the backend's response (a new affinity session)."""
    retry_codes: frozenset[int] = frozenset()
    """Response statuses that send an idempotent request to the next backend, when its body
    (if any) is held whole (``replay.py``); the response is held back; the last backend's
    answer always goes to the client."""
    backoff: float = 0.0
    """Seconds to wait before each retry."""
    mirrors: tuple[Backend, ...] = ()
    """Backends that get a copy of this request (their answers are dropped); a request with
    a body only when it is held whole (``replay.py``)."""


@dataclass(frozen=True, kw_only=True)
class NoRoute:
    status: int = 404
    """404: no route serves the request; 503: a route does, but none of its backends is
    available now (the listener adds ``Retry-After``)."""
    reason: str
    """A stable word (the problem's ``reason``)."""
    detail: str
    """What a person should know or do."""


OutcomeKind = Literal["answered", "refused", "failed", "timeout"]


@dataclass(frozen=True, kw_only=True)
class Outcome:
    """What one attempt on a backend came to."""

    kind: OutcomeKind
    """``answered`` (a response head came back), ``refused`` (nothing was sent: no session,
    the stream was rejected), ``failed`` (the stream broke before an answer), ``timeout``."""
    status: int | None = None
    """The backend's status code when answered."""
    reason: str = ""
    """Our reason word when not answered (``cluster_offline``, ``no_ready_endpoints``...)."""
    seconds: float = 0.0
    """From the attempt's start to its outcome."""


class Router(Protocol):
    """Picks backends for a request and hears how they did."""

    def route(self, request: RequestInfo) -> Decision | NoRoute: ...

    def report(self, backend: Backend, outcome: Outcome) -> None: ...


class UnwiredRouter:
    """No routes at all: every request is answered 404 ``no_route``."""

    def route(self, request: RequestInfo) -> Decision | NoRoute:
        del request
        return NoRoute(
            reason="no_route",
            detail="no route serves this request: this gateway has no route table",
        )

    def report(self, backend: Backend, outcome: Outcome) -> None:
        del backend, outcome


class StaticRouter:
    """A fixed list of backends per ``Host`` (``"*"`` for any other); for tests and demos."""

    def __init__(self, routes: Mapping[str, Sequence[Backend]]) -> None:
        self._routes = {host.lower(): tuple(backends) for host, backends in routes.items()}
        self.reports: list[tuple[Backend, Outcome]] = []
        """Every report, oldest first (bounded: the last ``MAX_REPORTS``)."""

    MAX_REPORTS = 1000

    def route(self, request: RequestInfo) -> Decision | NoRoute:
        backends = self._routes.get(request.host) or self._routes.get("*")
        if not backends:
            return NoRoute(reason="no_route", detail=f"no backends for host {request.host!r}")
        return Decision(
            route=f"static:{request.host if request.host in self._routes else '*'}",
            backends=backends,
        )

    def report(self, backend: Backend, outcome: Outcome) -> None:
        self.reports.append((backend, outcome))
        del self.reports[: -self.MAX_REPORTS]
