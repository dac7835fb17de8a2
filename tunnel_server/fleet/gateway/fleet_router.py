"""``FleetRouter``: the gateway's ``Router`` built from the fleet's MultiClusterRoute objects.

It drives the pure core (``fleet_model.gateway``, whose docstring is the contract) with what
this process knows: the fleet store's routes, the live tunnel sessions, the node records and
the data path's reports.

Rules:

* Routes come from the fleet store's change log (``changes_since(kind=MultiClusterRoute)``,
  woken by ``FleetEvents``), never from a periodic re-read. A change of spec (a new uid or
  generation) rebuilds the ``RouteTable`` and every rule's ``Balancer`` and swaps them in; a
  status-only write (ours) rebuilds nothing. A stored route that does not parse (written by an
  older server) is left out and its status says why; the others keep serving.
* One ``HealthBoard`` for every backend the routes name. A backend is reachable while its
  cluster's agent holds a tunnel session with *this* process, or (``connected``, peer
  forwarding: ``replicas.opener.connected``) with another live replica, through which the
  data path and the checks open their streams (``forward``); on SQLite (one process) only
  the local sessions count. The session registry has no notification, so it is looked at
  where it matters: for the backends of the matched rule on every request (a dict lookup
  each, so a dead agent's share moves at the first request after its session closes) and
  for all clusters every ``refresh_seconds`` (for the status). A cluster with no session is
  ``Reachability(False)``, and so is one whose session is here but whose lease
  (``FleetHub.leases``) ran out: not renewed for ``LEASE_GRACE_FACTOR`` times its
  ManagedCluster's ``leaseDurationSeconds``, the moment its conditions say Unknown too (a
  hung agent, or a cut network whose tunnel keepalive has not fired yet, still holds a
  session). A cluster without any lease (no fleet stream) is judged by its session alone.
  A cluster another replica holds is judged as the leader judges it
  (``remote_leases.judged_here``): by that replica's holder Lease alone, never by a lease
  in this replica's memory (only the holder's stream renews it; one left here by a stream
  that ended, the agent having moved, is stale).
* Ready endpoints: the cluster's agent reports, with its lease and at once when they change
  (``Lease.ready_endpoints``, ``namespace/name:port`` -> count), the ready endpoints of the
  Service ports it serves; only the replica holding its session has them (elsewhere they
  are unknown, as below). Looked at where the session is (every request, for the matched
  rule's clusters; every pass, for all): a count of 0 is ``ReadyEndpoints(0)`` (the backend's
  weight moves away at once, before a request fails), a count > 0 ``ReadyEndpoints(count)``
  (back, with slow start). No report for the backend (an older agent, a Service port it does
  not serve, a new stream before its first lease) is unknown: requests and checks decide, as
  before; a report that drops it undoes what it said. The status shows the count
  (``backends[].readyEndpoints``).
* Passive health is the data path's ``report``: an answer >= 500 or a timeout is a server
  error, a refused or broken stream a connection error (outlier ejection, see
  ``fleet_model.gateway.health``); a refusal because the cluster is offline or unknown only
  makes the session be looked at again.
* ``route``: Gateway API precedence (``RouteTable.match``, remembered per method, host, path
  and query for a host no route matches by header; None: 404 ``no_route``), then the
  rule's balancer picks the first backend among the available ones (session affinity: the
  rule's header or cookie value, when the client sent one), then the rule's other available
  backends follow by effective weight, for the data path's retries, at most
  ``retry.attempts`` of them. No available backend: 503 ``no_healthy_backend`` naming each
  backend's health.
* Status (written on change only, through the hub; with several replicas by the leader
  only, ``lead``, as it sees the backends): ``Accepted`` (the spec parsed) and
  ``ResolvedRefs`` (every backend's cluster is registered; an unknown one is named and the
  route serves its other backends), plus ``backends``: each backend's health and, with the
  listener's metrics, its recent ``requests``, ``errors``, ``latencyP50Ms`` and
  ``latencyP99Ms`` (``figures``: refreshed every ``figures_seconds``, written only when
  they changed). A deleted route's Prometheus series are dropped when the table is rebuilt.

* Active health checks: every backend of a route with ``healthCheck`` is checked every
  ``intervalSeconds`` (``checks.probe``: a GET through the tunnel, as a request goes), one
  check in flight per backend and ``max_concurrent_checks`` in all, as named tasks of
  ``run``'s task group; a backend named by several routes is checked once, as the first
  route by name says. Results feed the board as ``CheckResult`` with the route's thresholds;
  the agent's "no ready endpoints" refusal is ``ReadyEndpoints(0)`` at once (any answer
  through the Service: ``ReadyEndpoints(1)``). Clusters without a session are not checked
  (they are ``Unreachable`` already). A backend whose checks stop (the route changed) loses
  what only checks could undo.
* Response side, handed to the data path in the ``Decision``: the rule's
  ``ResponseHeaderModifier``; a ``Set-Cookie`` when the rule has cookie affinity and the
  client sent no cookie (a fresh random token, also the key this request is balanced by);
  the retry codes and backoff; the mirror backends for this request (each ``RequestMirror``
  takes exactly ``percent`` of every 100 of the rule's requests, sent only when the mirror
  backend is available).
"""

from __future__ import annotations

import asyncio
import logging
import math
import secrets
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet_model.cluster import DEFAULT_LEASE_SECONDS, LEASE_GRACE_FACTOR
from fleet_model.cluster import parse_spec as parse_cluster_spec
from fleet_model.gateway import (
    Balancer,
    BalancerSettings,
    CheckResult,
    HealthBoard,
    HealthSettings,
    Mirror,
    Reachability,
    ReadyEndpoints,
    Request,
    RequestResult,
    Route,
    RouteRule,
    RouteTable,
    State,
    parse_route,
)
from fleet_model.gateway import (
    Outcome as HealthOutcome,
)
from fleet_model.gateway.route import (
    KIND,
    MAX_DURATION_SECONDS,
    BackendRef,
    HealthCheck,
    RouteHit,
    SessionType,
)
from fleet_model.gateway.route import (
    HeaderModifier as RouteModifier,
)
from fleet_model.gateway.route import (
    Timeouts as RouteTimeouts,
)
from fleet_model.problems import SpecError
from tunnel_server.fleet.gateway.checks import CheckOutcome, probe
from tunnel_server.fleet.gateway.headers import HeaderModifier
from tunnel_server.fleet.gateway.router import (
    Backend,
    Decision,
    NoRoute,
    Outcome,
    RequestInfo,
    Timeouts,
)
from tunnel_server.fleet.hub import remote_leases
from tunnel_server.fleet.hub.store import ChangesExpiredError, FleetStoreError, rfc3339

if TYPE_CHECKING:
    from tunnel_server.fleet.gateway.backends import Forward
    from tunnel_server.fleet.gateway.server import GatewayMetrics
    from tunnel_server.fleet.hub.hub import FleetHub
    from tunnel_server.fleet.hub.leases import Lease
    from tunnel_server.fleet.hub.store import StoredObject
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import SessionRegistry

__all__ = ["FleetRouter", "FleetRouterSettings"]

log = logging.getLogger("tunnel_server.fleet.gateway.routes")

MAX_MESSAGE = 1024
"""Characters of one condition message: a route's problems can be many."""
MAX_AFFINITY_KEY = 256
"""Characters of a session cookie or header value hashed for affinity (the rest is ignored)."""
MAX_CACHED_MATCHES = 4096
"""Requests' matches remembered (``FleetRouter._matches``); all are forgotten when full."""
MAX_CACHED_TARGET = 512
"""Characters of path and query at most for a request's match to be remembered."""
_OFFLINE = frozenset({"cluster_offline", "cluster_not_found"})
_UNSEEN: Mapping[str, int] = {}
"""``_ready_seen``'s default: no lease's counts are ever this very object."""


@dataclass(frozen=True, kw_only=True)
class FleetRouterSettings:
    refresh_seconds: float = 1.0
    """Seconds between looks at the tunnel sessions and node records for the routes' status
    when nothing else wakes the loop: neither has a notification. Requests look at the
    sessions they need themselves, so this bounds only how stale the status is."""
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)
    figures_seconds: float = 10.0
    """Seconds between refreshes of the request figures in a route's status (requests,
    errors, p50/p99): a status write per request would flood the store and its watchers."""
    max_concurrent_checks: int = 16
    """Active health checks in flight at once, all routes together: each holds a tunnel
    stream, so a fleet of many backends checks in waves rather than opening them all."""


CheckFn = Callable[[Backend, HealthCheck], Awaitable[CheckOutcome]]
"""Runs one active check of a backend (``checks.probe`` through the tunnel by default)."""


@dataclass(kw_only=True)
class _CheckPlan:
    """One backend's active checks: the ``healthCheck`` it follows and when the next is due."""

    backend: Backend
    check: HealthCheck
    due: float


def _backend(ref: BackendRef) -> Backend:
    return Backend(cluster=ref.cluster, namespace=ref.namespace, service=ref.name, port=ref.port)


def _modifier(modifier: RouteModifier | None) -> HeaderModifier:
    if modifier is None:
        return HeaderModifier()
    return HeaderModifier(set=modifier.set, add=modifier.add, remove=modifier.remove)


def _seconds(value: float | None) -> float | None:
    """A route's timeout for the data path: ``0`` (none) is the longest a route may say."""
    if value is None:
        return None
    return float(MAX_DURATION_SECONDS) if value == 0 else value


def _timeouts(timeouts: RouteTimeouts) -> Timeouts:
    return Timeouts(
        request=_seconds(timeouts.request), backend_request=_seconds(timeouts.backend_request)
    )


@dataclass(frozen=True, kw_only=True, slots=True)
class _Fixed:
    """The parts of a rule's decisions that do not change from one request to the next."""

    backends: dict[str, Backend]
    """Backend key -> the data path's ``Backend``."""
    backends_of_mirrors: tuple[Backend, ...]
    modifier: HeaderModifier
    response_modifier: HeaderModifier
    timeouts: Timeouts
    retry_codes: frozenset[int]

    @classmethod
    def of(cls, rule: RouteRule) -> _Fixed:
        return cls(
            backends={ref.key: _backend(ref) for ref in rule.backends},
            backends_of_mirrors=tuple(_backend(mirror.backend) for mirror in rule.mirrors),
            modifier=_modifier(rule.request_headers),
            response_modifier=_modifier(rule.response_headers),
            timeouts=_timeouts(rule.timeouts),
            retry_codes=frozenset(rule.retry.codes),
        )


def _parse(request: RequestInfo) -> Request:
    target = f"{request.path}?{request.query}" if request.query else request.path
    return Request.of(
        method=request.method, authority=request.host, target=target, headers=request.headers
    )


def _cookie(header: str | None, name: str) -> str | None:
    if header is None:
        return None
    for part in header.split(";"):
        key, eq, value = part.strip().partition("=")
        if eq and key == name:
            return value
    return None


def _affinity(rule: RouteRule, request: Request) -> str | None:
    session = rule.session
    if session is None:
        return None
    if session.type is SessionType.HEADER:
        value = request.header(session.session_name.lower())
    else:
        value = _cookie(request.header("cookie"), session.session_name)
    return value[:MAX_AFFINITY_KEY] if value else None


def _health_outcome(outcome: Outcome) -> HealthOutcome:
    if outcome.kind == "answered":
        status = outcome.status or 0
        return HealthOutcome.SERVER_ERROR if status >= 500 else HealthOutcome.SUCCESS
    if outcome.kind == "timeout":
        return HealthOutcome.SERVER_ERROR
    return HealthOutcome.CONNECT_ERROR


def _condition(
    kind: str, *, ok: bool, reason: str, message: str, generation: int, before: Mapping[str, Any]
) -> dict[str, Any]:
    """A condition; its ``lastTransitionTime`` kept while its status stays the same."""
    status = "True" if ok else "False"
    previous = next(
        (c for c in before.get("conditions", ()) if isinstance(c, dict) and c.get("type") == kind),
        None,
    )
    since = previous.get("lastTransitionTime") if previous is not None else None
    if previous is None or previous.get("status") != status or not isinstance(since, str):
        since = rfc3339(time.time())
    return {
        "type": kind,
        "status": status,
        "reason": reason,
        "message": message[:MAX_MESSAGE],
        "observedGeneration": generation,
        "lastTransitionTime": since,
    }


class FleetRouter:
    """Routes by the stored MultiClusterRoutes (module docstring); ``run`` keeps it current."""

    def __init__(
        self,
        *,
        hub: FleetHub,
        sessions: SessionRegistry,
        nodes: Store,
        settings: FleetRouterSettings | None = None,
        clock: Callable[[], float] = time.monotonic,
        checker: CheckFn | None = None,
        metrics: GatewayMetrics | None = None,
        wall_clock: Callable[[], float] = time.time,
        connected: Callable[[str], bool] | None = None,
        forward: Forward | None = None,
        writes_status: bool = True,
    ) -> None:
        """``checker``: runs one active check (default: ``checks.probe`` through the tunnel).

        ``metrics``: the listener's, whose figures go into the status and whose series of
        deleted routes are dropped. ``wall_clock``: the time leases are renewed in (seconds
        since the epoch, ``Lease.renewed_at``). ``connected``: whether some replica holds a
        cluster's session (asked only when this process holds none); ``forward``: how the
        checks reach such a cluster (``backends.open_backend``). None: this process only.
        ``writes_status``: False until ``lead`` runs (replicas: the leader writes the status).
        """
        self._writes_status = writes_status
        self._connected = connected
        self._forward = forward
        self._hub = hub
        self._wall = wall_clock
        self._sessions = sessions
        self._nodes = nodes
        self._settings = settings or FleetRouterSettings()
        self._clock = clock
        self._objects: dict[str, StoredObject] = {}
        self._routes: dict[str, Route] = {}
        self._problems: dict[str, str] = {}
        """Route name -> why it does not parse (it is left out of the table)."""
        self._table = RouteTable(())
        self._matches: dict[tuple[str, str, str, str], RouteHit | None] = {}
        """(method, host, path, query) -> the table's match, for hosts no route matches by
        header (``_plain``): what such a request matches depends on these alone. Emptied with
        every new table, and when full."""
        self._plain_hosts: dict[str, bool] = {}
        self._balancers: dict[tuple[str, int], Balancer] = {}
        self._fixed: dict[tuple[str, int], _Fixed] = {}
        """What a rule's decisions share, built with the table (not once per request)."""
        self._mirrors: dict[tuple[str, int], list[Mirror]] = {}
        """Rule key -> one share counter per ``RequestMirror`` of the rule, in order."""
        self._board = HealthBoard(settings=self._settings.health)
        self._by_cluster: dict[str, set[str]] = {}
        """Cluster -> the keys of its backends on the board."""
        self._reachable: dict[str, bool] = {}
        """Cluster -> what the board was last told."""
        self._registered: dict[str, bool] = {}
        self._lease_seconds: dict[str, int] = {}
        """Cluster -> its ManagedCluster's ``leaseDurationSeconds`` (read when the routes or
        the node records change: ``_resolve``)."""
        self._revision = -1
        self._node_revision = -1
        self._status_due = True
        self._loaded = False
        self._checker: CheckFn = checker or self._probe
        self._metrics = metrics
        self._figures: dict[tuple[str, str], dict[str, float | int]] = {}
        """(route, backend key) -> the figures the status shows (refreshed every
        ``figures_seconds``)."""
        self._figures_at = -math.inf
        self._plans: dict[str, _CheckPlan] = {}
        """Backend key -> its active checks (backends of routes with ``healthCheck``)."""
        self._checking: set[str] = set()
        self._plans_changed = asyncio.Event()
        self._ready_seen: dict[str, Mapping[str, int] | None] = {}
        """Cluster -> the lease's ready counts last looked at (by identity: a lease renewal
        without counts keeps the same object, so most looks cost one comparison)."""
        self._ready_told: dict[str, int] = {}
        """Backend key -> the ready count its cluster reported, as the board was told (absent:
        no report, unknown)."""

    # ------------------------------------------------------------------ the data path's side

    def route(self, request: RequestInfo) -> Decision | NoRoute:
        now = self._clock()
        parsed: Request | None = None
        key = (request.method, request.host, request.path, request.query)
        if key in self._matches:
            hit = self._matches[key]
        else:
            parsed = _parse(request)
            hit = self._table.match(parsed)
            short = len(request.path) + len(request.query) <= MAX_CACHED_TARGET
            if short and self._plain(parsed.host):
                if len(self._matches) >= MAX_CACHED_MATCHES:
                    self._matches.clear()
                self._matches[key] = hit
        if hit is None:
            return NoRoute(
                reason="no_route",
                detail=f"no MultiClusterRoute serves {request.method} "
                f"{request.host or '(no host)'}{request.path[:200]}",
            )
        rule = hit.rule
        for ref in rule.backends:
            self._look_at(ref.cluster, now)
        self._tick(now)
        balancer = self._balancers[hit.rule_key]
        available = self._board.available()
        session, cookie = rule.session, None
        affinity = _affinity(rule, parsed or _parse(request)) if session is not None else None
        if affinity is None and session is not None and session.type is SessionType.COOKIE:
            # A new session: key it by a fresh token and hand the token out as the cookie.
            affinity = secrets.token_urlsafe(16)
            cookie = session.set_cookie(affinity)
        first = balancer.pick(now=now, available=available, affinity_key=affinity)
        if first is None:
            return NoRoute(
                status=503,
                reason="no_healthy_backend",
                detail=f"route {hit.route.name} has no available backend: "
                + "; ".join(self._describe(ref) for ref in rule.backends),
            )
        fixed = self._fixed[hit.rule_key]
        if rule.retry.attempts > 0 and len(fixed.backends) > 1:
            weights = balancer.effective_weights(now=now, available=available, exclude=(first,))
            others = sorted(weights, key=lambda key: -weights[key])[: rule.retry.attempts]
            backends = tuple(fixed.backends[key] for key in (first, *others))
        else:
            backends = (fixed.backends[first],)
        mirrors = (
            tuple(
                fixed.backends_of_mirrors[index]
                for index, (mirror, share) in enumerate(
                    zip(rule.mirrors, self._mirrors[hit.rule_key], strict=True)
                )
                if share.take() and mirror.backend.key in available
            )
            if rule.mirrors
            else ()
        )
        return Decision(
            route=hit.route.name,
            backends=backends,
            modifier=fixed.modifier,
            timeouts=fixed.timeouts,
            response_modifier=fixed.response_modifier,
            set_cookie=cookie,
            retry_codes=fixed.retry_codes,
            backoff=rule.retry.backoff,
            mirrors=mirrors,
        )

    def _plain(self, host: str) -> bool:
        """Whether no route that may take ``host`` (normalized) has a header match."""
        plain = self._plain_hosts.get(host)
        if plain is None:
            if len(self._plain_hosts) >= MAX_CACHED_MATCHES:
                self._plain_hosts.clear()
            plain = not any(entry[1].headers for entry in self._table.candidates(host))
            self._plain_hosts[host] = plain
        return plain

    def report(self, backend: Backend, outcome: Outcome) -> None:
        now = self._clock()
        if outcome.kind == "refused" and outcome.reason in _OFFLINE:
            self._look_at(backend.cluster, now)
            return
        event = RequestResult(outcome=_health_outcome(outcome))
        changed = self._board.observe(str(backend), event, now=now)
        if changed is not None:
            log.info(
                "gateway backend health changed",
                extra={"kv": {"backend": str(backend), "health": changed.describe()}},
            )
            self._status_due = True

    def _describe(self, ref: BackendRef) -> str:
        if ref.weight == 0:
            return f"{ref.key}: weight 0"
        if not self._registered.get(ref.cluster, True):
            return f"{ref.key}: no registered cluster named {ref.cluster!r}"
        return f"{ref.key}: {self._board.health(ref.key).describe()}"

    def _look_at(self, cluster: str, now: float) -> None:
        """Tell the board whether ``cluster`` has a session here, if that changed."""
        session = self._sessions.get(cluster)
        here = session is not None
        lease = remote_leases.judged_here(self._hub, cluster, here=here)
        if session is not None:
            up = session.identity.kind == "cluster" and not self._lease_expired(cluster, lease)
        else:  # another replica may hold it (peer forwarding): its holder Lease says
            up = self._connected is not None and self._connected(cluster)
        self._look_at_ready(cluster, lease, now)
        if self._reachable.get(cluster) is up:
            return
        self._reachable[cluster] = up
        for key in self._by_cluster.get(cluster, ()):
            self._board.observe(key, Reachability(reachable=up), now=now)
        log.info(
            "gateway cluster reachability changed",
            extra={"kv": {"cluster": cluster, "reachable": up}},
        )
        self._status_due = True

    def _look_at_ready(self, cluster: str, lease: Lease | None, now: float) -> None:
        """Tell the board the ready counts ``cluster``'s agent reported, if they changed.

        ``lease``: the one this replica judges the cluster by (none while another replica
        holds its session: the counts are unknown here).
        """
        counts = lease.ready_endpoints if lease is not None else None
        if counts is self._ready_seen.get(cluster, _UNSEEN):
            return
        self._ready_seen[cluster] = counts
        prefix = len(cluster) + 1  # a backend key is cluster/namespace/name:port
        for key in self._by_cluster.get(cluster, ()):
            count = counts.get(key[prefix:]) if counts is not None else None
            before = self._ready_told.get(key)
            if count == before:
                continue
            self._status_due = True  # the status shows the count
            if count is None:
                del self._ready_told[key]
                if before != 0:
                    continue
                count = 1  # unknown again: what the report said must not stay
            else:
                self._ready_told[key] = count
            changed = self._board.observe(key, ReadyEndpoints(count=count), now=now)
            if changed is not None:
                log.info(
                    "gateway backend health changed",
                    extra={"kv": {"backend": key, "health": changed.describe(), "ready": count}},
                )

    def _lease_expired(self, cluster: str, lease: Lease | None) -> bool:
        """Whether the cluster's lease ran out (as its ManagedCluster's conditions count it).

        A session here whose agent stopped renewing (a hung agent, a cut network whose tunnel
        keepalive has not fired yet) is no way to the cluster. No lease at all (an agent that
        does not speak the fleet stream, or this server restarted): the session decides.
        """
        if lease is None:
            return False
        seconds = self._lease_seconds.get(cluster, DEFAULT_LEASE_SECONDS)
        return self._wall() - lease.renewed_at > LEASE_GRACE_FACTOR * seconds

    def _tick(self, now: float) -> None:
        wake = self._board.wake_at()
        if wake is not None and wake <= now and self._board.tick(now):
            self._status_due = True

    # ------------------------------------------------------------------ the loop's side

    async def lead(self) -> None:
        """Write the routes' status while this runs (as the leader's singleton), from now on.

        With several replicas each one routes by its own view (its sessions, its requests'
        figures); one status, the leader's, keeps them from overwriting each other's.
        """
        self._writes_status = self._status_due = True
        try:
            await asyncio.Event().wait()
        finally:
            self._writes_status = False

    async def run(self) -> None:
        """Follow the store and the sessions, and run the active checks, until cancelled."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._follow_loop(), name="gateway.routes.follow")
            group.create_task(self._check_loop(group), name="gateway.checks")

    async def _follow_loop(self) -> None:
        while True:
            try:
                self.sync()
            except Exception:  # one bad pass must not end the gateway's routing
                log.exception("gateway route sync failed; retrying")
                self._revision = -1
            now = self._clock()
            timeout = self._settings.refresh_seconds
            wake = self._board.wake_at()
            if wake is not None:
                timeout = max(0.01, min(timeout, wake - now))
            await self._hub.events.wait_past(self._revision, timeout)

    async def _check_loop(self, group: asyncio.TaskGroup) -> None:
        """Start each due check (one in flight per backend, bounded in all), then sleep."""
        slots = asyncio.Semaphore(self._settings.max_concurrent_checks)
        while True:
            self._plans_changed.clear()
            now = self._clock()
            wake: float | None = None
            for key, plan in self._plans.items():
                if key in self._checking:
                    continue
                if plan.due <= now and self._reachable.get(plan.backend.cluster, False):
                    plan.due = now + plan.check.interval_seconds
                    self._checking.add(key)
                    group.create_task(self._run_check(key, plan, slots), name="gateway.check")
                elif plan.due <= now:
                    # No session: the board says Unreachable already; look again next interval.
                    plan.due = now + plan.check.interval_seconds
                wake = plan.due if wake is None else min(wake, plan.due)
            timeout = self._settings.refresh_seconds if wake is None else max(0.01, wake - now)
            try:
                async with asyncio.timeout(timeout):
                    await self._plans_changed.wait()
            except TimeoutError:
                pass

    async def _run_check(self, key: str, plan: _CheckPlan, slots: asyncio.Semaphore) -> None:
        try:
            async with slots:
                outcome = await self._checker(plan.backend, plan.check)
        except Exception:  # a checker's bug must not end the router's task group
            log.exception("gateway health check of %s failed to run", key)
            return
        finally:
            self._checking.discard(key)
            self._plans_changed.set()  # the loop looks at the plans again
        self._checked(key, plan, outcome)

    def _checked(self, key: str, plan: _CheckPlan, outcome: CheckOutcome) -> None:
        """Feed one check's outcome to the board (if the backend is still checked so)."""
        if self._plans.get(key) is not plan:
            return  # the routes changed while it ran
        now = self._clock()
        events: list[CheckResult | ReadyEndpoints] = [
            CheckResult(
                ok=outcome.ok,
                unhealthy_threshold=plan.check.unhealthy_threshold,
                healthy_threshold=plan.check.healthy_threshold,
            )
        ]
        # "No ready endpoints" is known at once, not after a threshold; any answer through
        # the Service means it has one again.
        if outcome.endpoints is not None:
            events.append(ReadyEndpoints(count=1 if outcome.endpoints else 0))
        for event in events:
            changed = self._board.observe(key, event, now=now)
            if changed is not None:
                log.info(
                    "gateway backend health changed",
                    extra={
                        "kv": {
                            "backend": key,
                            "health": changed.describe(),
                            "check": outcome.detail,
                        }
                    },
                )
                self._status_due = True
        if not outcome.ok:
            log.debug("gateway check of %s failed: %s", key, outcome.detail)

    async def _probe(self, backend: Backend, check: HealthCheck) -> CheckOutcome:
        return await probe(
            backend,
            path=check.path,
            seconds=check.timeout_seconds,
            sessions=self._sessions,
            store=self._nodes,
            forward=self._forward,
        )

    def _plan_checks(self, routes: Mapping[str, Route], now: float) -> None:
        """Which backends are checked, and how.

        The first route by name with ``healthCheck`` that names a backend decides its check
        (a backend shared by routes is checked once).
        """
        plans: dict[str, _CheckPlan] = {}
        for name in sorted(routes):
            check = routes[name].spec.health_check
            if check is None:
                continue
            for key, ref in routes[name].spec.backends().items():
                if key in plans:
                    continue
                held = self._plans.get(key)
                if held is not None and held.check == check:
                    plans[key] = held
                else:
                    plans[key] = _CheckPlan(backend=_backend(ref), check=check, due=now)
        for key in self._plans.keys() - plans.keys():
            if key in self._board:
                # What only checks can undo (FailingChecks, NoReadyEndpoints) must not stay.
                self._board.observe(key, ReadyEndpoints(count=1), now=now)
                self._board.observe(key, CheckResult(ok=True, healthy_threshold=1), now=now)
                self._ready_told.pop(key, None)  # the agent's report, if any, is told again
        self._plans = plans
        self._plans_changed.set()

    def sync(self) -> None:
        """One pass: routes from the change log, sessions, node records, deadlines, status."""
        now = self._clock()
        if self._follow():
            self._rebuild(now)
        node_revision = self._nodes.revision()
        if node_revision != self._node_revision:
            self._node_revision = node_revision
            self._resolve()
        for cluster in self._by_cluster:
            self._look_at(cluster, now)
        self._tick(now)
        if now - self._figures_at >= self._settings.figures_seconds:
            self._refresh_figures(now)
        if self._status_due and self._writes_status:
            self._status_due = False
            self._write_status()

    def _forget_deleted(self, routes: Mapping[str, Route]) -> None:
        """Drop the series and figures of routes that are gone."""
        if self._metrics is not None:
            self._metrics.retain_routes(routes.keys())
        self._figures = {k: v for k, v in self._figures.items() if k[0] in routes}

    def _refresh_figures(self, now: float) -> None:
        self._figures_at = now
        if self._metrics is None:
            return
        figures = {
            (name, key): self._metrics.figures.snapshot(name, key, now=now)
            for name, route in self._routes.items()
            for key in route.spec.backends()
        }
        if figures != self._figures:
            self._figures = figures
            self._status_due = True

    def _follow(self) -> bool:
        """Apply the store's MultiClusterRoute changes; True if a spec changed."""
        store = self._hub.store
        current = store.revision()
        if self._revision < 0:
            self._objects = {obj.name: obj for obj in store.list(KIND)}
            self._revision = current
            return True
        if current == self._revision:
            return False
        try:
            changes = store.changes_since(self._revision, kind=KIND)
        except ChangesExpiredError:
            log.warning("gateway: the fleet change log expired; reading every route again")
            self._revision = -1
            return self._follow()
        moved = False
        for change in changes:
            obj = change.object
            held = self._objects.get(obj.name)
            if change.type == "DELETED":
                if held is not None and held.uid == obj.uid:
                    del self._objects[obj.name]
                    moved = True
            elif held is None or (held.uid, held.generation) != (obj.uid, obj.generation):
                self._objects[obj.name] = obj
                moved = True
            elif held.resource_version < obj.resource_version:
                self._objects[obj.name] = obj  # a status write: nothing to rebuild
        self._revision = max(current, self._revision)
        return moved

    def _rebuild(self, now: float) -> None:
        routes: dict[str, Route] = {}
        problems: dict[str, str] = {}
        for name, obj in self._objects.items():
            try:
                routes[name] = parse_route(obj.document())
            except SpecError as error:
                problems[name] = str(error)
        self._routes, self._problems = routes, problems
        self._table = RouteTable(routes.values())
        self._matches, self._plain_hosts = {}, {}
        self._balancers = {
            (route.name, index): Balancer(rule.weights, settings=self._settings.balancer)
            for route in routes.values()
            for index, rule in enumerate(route.spec.rules)
        }
        self._mirrors = {
            (route.name, index): [Mirror(mirror.percent) for mirror in rule.mirrors]
            for route in routes.values()
            for index, rule in enumerate(route.spec.rules)
        }
        self._fixed = {
            (route.name, index): _Fixed.of(rule)
            for route in routes.values()
            for index, rule in enumerate(route.spec.rules)
        }
        wanted: dict[str, BackendRef] = {}
        for route in routes.values():
            for key, ref in route.spec.backends().items():
                wanted.setdefault(key, ref)
        warm = not self._loaded  # what a restarted server finds was serving: no slow start
        self._loaded = True
        for key in list(self._board):
            if key not in wanted:
                self._board.remove(key)
                self._ready_told.pop(key, None)
        self._by_cluster = {}
        for key, ref in wanted.items():
            self._by_cluster.setdefault(ref.cluster, set()).add(key)
            if key not in self._board:
                self._board.add(key, now=now, warm=warm)
                self._reachable.pop(ref.cluster, None)  # tell the new backend at once
                self._ready_told.pop(key, None)
        self._registered = {c: self._registered.get(c, True) for c in self._by_cluster}
        self._plan_checks(routes, now)
        self._ready_seen.clear()  # every cluster's counts are looked at again below
        self._forget_deleted(routes)
        self._resolve()
        for cluster in self._by_cluster:
            self._look_at(cluster, now)
        self._status_due = True
        log.info(
            "gateway routes loaded",
            extra={
                "kv": {"routes": len(routes), "invalid": len(problems), "backends": len(wanted)}
            },
        )

    def _resolve(self) -> None:
        """Which named clusters are registered (a cluster record in the node store)."""
        for cluster in self._by_cluster:
            record = self._nodes.get_node(cluster)
            known = record is not None and record.kind == "cluster"
            self._lease_seconds[cluster] = self._lease_duration(cluster)
            if self._registered.get(cluster) is not known:
                self._registered[cluster] = known
                self._status_due = True

    def _lease_duration(self, cluster: str) -> int:
        obj = self._hub.store.get("ManagedCluster", cluster)
        if obj is None:
            return DEFAULT_LEASE_SECONDS
        try:
            return parse_cluster_spec(dict(obj.spec)).lease_duration_seconds
        except SpecError:  # the API checked it; an unreadable stored spec: the default
            return DEFAULT_LEASE_SECONDS

    def _write_status(self) -> None:
        for name, obj in list(self._objects.items()):
            status = self._status(name, obj)
            if status == obj.status:
                continue
            try:
                written = self._hub.set_status(KIND, name, status)
            except FleetStoreError as error:  # deleted or rewritten meanwhile: next pass
                log.debug("gateway route status not written: %s", error)
                self._status_due = True
                continue
            self._objects[name] = written

    def _status(self, name: str, obj: StoredObject) -> dict[str, Any]:
        generation, before = obj.generation, obj.status
        route = self._routes.get(name)
        if route is None:
            problem = self._problems.get(name, "not read yet")
            accepted = _condition(
                "Accepted", ok=False, reason="Invalid", message=problem,
                generation=generation, before=before,
            )  # fmt: skip
            return {"observedGeneration": generation, "conditions": [accepted]}
        accepted = _condition(
            "Accepted", ok=True, reason="Accepted", message="the gateway serves this route",
            generation=generation, before=before,
        )  # fmt: skip
        refs = route.spec.backends()
        unknown = sorted({ref.cluster for ref in refs.values()} - self._known_clusters())
        message = "every backend names a registered cluster"
        if unknown:
            message = (
                f"no registered cluster named {', '.join(unknown)}: its backends get no "
                "requests; the route serves its other backends"
            )
        resolved = _condition(
            "ResolvedRefs", ok=not unknown,
            reason="BackendNotFound" if unknown else "ResolvedRefs", message=message,
            generation=generation, before=before,
        )  # fmt: skip
        backends = []
        for key, ref in refs.items():
            health = self._board.health(key)
            entry: dict[str, Any] = {
                "name": key,
                "state": health.state.value,
                "health": health.describe(),
            }
            if not self._registered.get(ref.cluster, True):
                entry["health"] = f"unknown cluster {ref.cluster!r}"
            if health.state is not State.HEALTHY:
                entry["reasons"] = [reason.value for reason in health.reasons]
            if key in self._ready_told:
                entry["readyEndpoints"] = self._ready_told[key]
            entry.update(self._figures.get((name, key), {}))
            backends.append(entry)
        return {
            "observedGeneration": generation,
            "conditions": [accepted, resolved],
            "backends": backends,
        }

    def _known_clusters(self) -> set[str]:
        return {cluster for cluster, known in self._registered.items() if known}
