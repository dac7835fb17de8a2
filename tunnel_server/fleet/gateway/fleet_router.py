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
  cluster's agent holds a tunnel session with *this* process (the only sessions this gateway
  can forward through; a lease renewed on another replica would not help). The session
  registry has no notification, so it is looked at where it matters: for the backends of the
  matched rule on every request (a dict lookup each, so a dead agent's share moves at the
  first request after its session closes) and for all clusters every ``refresh_seconds``
  (for the status). A cluster with no session is ``Reachability(False)``.
* Passive health is the data path's ``report``: an answer >= 500 or a timeout is a server
  error, a refused or broken stream a connection error (outlier ejection, see
  ``fleet_model.gateway.health``); a refusal because the cluster is offline or unknown only
  makes the session be looked at again.
* ``route``: Gateway API precedence (``RouteTable.match``; None: 404 ``no_route``), then the
  rule's balancer picks the first backend among the available ones (session affinity: the
  rule's header or cookie value, when the client sent one), then the rule's other available
  backends follow by effective weight, for the data path's retries, at most
  ``retry.attempts`` of them. No available backend: 503 ``no_healthy_backend`` naming each
  backend's health.
* Status (written on change only, through the hub): ``Accepted`` (the spec parsed) and
  ``ResolvedRefs`` (every backend's cluster is registered; an unknown one is named and the
  route serves its other backends), plus ``backends``: each backend's health.

Not done here (docs/gateway.md lists them): active health checks (``healthCheck``), mirrors
(``RequestMirror``), response header modifiers, retries on response codes and backoff (the
data path retries refused and broken attempts only), issuing a session cookie.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from fleet_model.gateway import (
    Balancer,
    BalancerSettings,
    HealthBoard,
    HealthSettings,
    Reachability,
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
    SessionType,
)
from fleet_model.gateway.route import (
    HeaderModifier as RouteModifier,
)
from fleet_model.gateway.route import (
    Timeouts as RouteTimeouts,
)
from fleet_model.problems import SpecError
from tunnel_server.fleet.gateway.headers import HeaderModifier
from tunnel_server.fleet.gateway.router import (
    Backend,
    Decision,
    NoRoute,
    Outcome,
    RequestInfo,
    Timeouts,
)
from tunnel_server.fleet.hub.store import ChangesExpiredError, FleetStoreError, rfc3339

if TYPE_CHECKING:
    from tunnel_server.fleet.hub.hub import FleetHub
    from tunnel_server.fleet.hub.store import StoredObject
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import SessionRegistry

__all__ = ["FleetRouter", "FleetRouterSettings"]

log = logging.getLogger("tunnel_server.fleet.gateway.routes")

MAX_MESSAGE = 1024
"""Characters of one condition message: a route's problems can be many."""
MAX_AFFINITY_KEY = 256
"""Characters of a session cookie or header value hashed for affinity (the rest is ignored)."""
_OFFLINE = frozenset({"cluster_offline", "cluster_not_found"})


@dataclass(frozen=True, kw_only=True)
class FleetRouterSettings:
    refresh_seconds: float = 1.0
    """Seconds between looks at the tunnel sessions and node records for the routes' status
    when nothing else wakes the loop: neither has a notification. Requests look at the
    sessions they need themselves, so this bounds only how stale the status is."""
    balancer: BalancerSettings = field(default_factory=BalancerSettings)
    health: HealthSettings = field(default_factory=HealthSettings)


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
    ) -> None:
        self._hub = hub
        self._sessions = sessions
        self._nodes = nodes
        self._settings = settings or FleetRouterSettings()
        self._clock = clock
        self._objects: dict[str, StoredObject] = {}
        self._routes: dict[str, Route] = {}
        self._problems: dict[str, str] = {}
        """Route name -> why it does not parse (it is left out of the table)."""
        self._table = RouteTable(())
        self._balancers: dict[tuple[str, int], Balancer] = {}
        self._board = HealthBoard(settings=self._settings.health)
        self._by_cluster: dict[str, set[str]] = {}
        """Cluster -> the keys of its backends on the board."""
        self._reachable: dict[str, bool] = {}
        """Cluster -> what the board was last told."""
        self._registered: dict[str, bool] = {}
        self._revision = -1
        self._node_revision = -1
        self._status_due = True
        self._loaded = False

    # ------------------------------------------------------------------ the data path's side

    def route(self, request: RequestInfo) -> Decision | NoRoute:
        now = self._clock()
        target = f"{request.path}?{request.query}" if request.query else request.path
        parsed = Request.of(
            method=request.method, authority=request.host, target=target, headers=request.headers
        )
        hit = self._table.match(parsed)
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
        first = balancer.pick(now=now, available=available, affinity_key=_affinity(rule, parsed))
        if first is None:
            return NoRoute(
                status=503,
                reason="no_healthy_backend",
                detail=f"route {hit.route.name} has no available backend: "
                + "; ".join(self._describe(ref) for ref in rule.backends),
            )
        weights = balancer.effective_weights(now=now, available=available, exclude=(first,))
        others = sorted(weights, key=lambda key: -weights[key])[: rule.retry.attempts]
        refs = {ref.key: ref for ref in rule.backends}
        return Decision(
            route=hit.route.name,
            backends=tuple(_backend(refs[key]) for key in (first, *others)),
            modifier=_modifier(rule.request_headers),
            timeouts=_timeouts(rule.timeouts),
        )

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
        up = session is not None and session.identity.kind == "cluster"
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

    def _tick(self, now: float) -> None:
        wake = self._board.wake_at()
        if wake is not None and wake <= now and self._board.tick(now):
            self._status_due = True

    # ------------------------------------------------------------------ the loop's side

    async def run(self) -> None:
        """Follow the store and the sessions until cancelled."""
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
        if self._status_due:
            self._status_due = False
            self._write_status()

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
        self._balancers = {
            (route.name, index): Balancer(rule.weights, settings=self._settings.balancer)
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
        self._by_cluster = {}
        for key, ref in wanted.items():
            self._by_cluster.setdefault(ref.cluster, set()).add(key)
            if key not in self._board:
                self._board.add(key, now=now, warm=warm)
                self._reachable.pop(ref.cluster, None)  # tell the new backend at once
        self._registered = {c: self._registered.get(c, True) for c in self._by_cluster}
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
            if self._registered.get(cluster) is not known:
                self._registered[cluster] = known
                self._status_due = True

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
            backends.append(entry)
        return {
            "observedGeneration": generation,
            "conditions": [accepted, resolved],
            "backends": backends,
        }

    def _known_clusters(self) -> set[str]:
        return {cluster for cluster, known in self._registered.items() if known}
