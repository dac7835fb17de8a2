"""Multi-cluster gateway, the pure part (issue 16): routes, backend choice, health, retries.

No I/O, no clock, no randomness: callers pass the time in and get "wake me at" deadlines back.
docs/gateway.md is the user's guide to the route object. The modules:

* ``route``: the ``MultiClusterRoute`` object (Gateway API ``HTTPRoute`` shapes, a backend
  being ``cluster/namespace/service:port``): ``parse_route`` / ``parse_spec`` (every problem at
  once, every input bounded), ``Request`` (a parsed request head) and ``RouteTable`` (Gateway
  API precedence: which rule takes a request).
* ``regex``: the linear-time engine (Thompson NFA run as a lazy DFA) for ``RegularExpression``
  matches; Python's backtracking ``re`` never sees a user's pattern.
* ``balancer``: ``Balancer`` (smooth weighted round robin, slow start, affinity by rendezvous
  hash) and ``Mirror`` (a deterministic share of requests copied to a canary).
* ``health``: ``HealthBoard`` of per-backend state machines (unreachable, no ready endpoints,
  failing active checks, passive outlier ejection) with ``wake_at``.
* ``retry``: ``decide`` whether a failed attempt is tried again, and where.

How the drivers use it (the I/O comes later, elsewhere; these are the seams):

Cloud side, ``tunnel_server`` (gateway listener, ``--gateway-listen``), one event loop:

1. Routes: on every MultiClusterRoute change, ``parse_route(doc)`` each stored object and build
   a new ``RouteTable(routes)`` (immutable; swap it in). A route that does not parse keeps its
   status message (``SpecError.problems``) and is left out; the others keep serving.
2. Backends: one ``HealthBoard`` for every backend the routes name
   (``RouteSpec.backends()``; ``board.add(key, now=..., warm=True)`` at start, ``warm=False``
   later; ``board.remove`` when no route names it). Feed it, with the loop's monotonic time:
   ``Reachability`` when a cluster's tunnel session opens or closes and when its lease
   expires (an unknown cluster: ``Reachability(False)`` at once, and the route's status says
   so); ``ReadyEndpoints`` from what the agent reports per Service; ``CheckResult`` when the
   route has ``healthCheck`` (the driver runs one check per backend every
   ``interval_seconds``); ``RequestResult`` after every proxied attempt. Sleep until
   ``board.wake_at()``, then ``board.tick(now)``.
3. Per request: ``Request.of(method=, authority=, target=, headers=)`` →
   ``table.match(request)`` (None: 404) → ``hit.rule`` and ``hit.rule_key``. Keep one
   ``Balancer(rule.weights)`` per ``rule_key`` (rebuilt when the table is). Choose with
   ``balancer.pick(now=, available=board.available(), affinity_key=...)`` where the key is the
   value of the rule's ``session`` cookie or header (no cookie yet: draw a random token, pick
   with it, and send ``session.set_cookie(token)`` with the response). None: answer 503 with
   ``board.health(key).describe()`` of each backend. Apply ``rule.request_headers.apply`` to
   the request's headers and ``rule.response_headers.apply`` to the response's. For each
   ``rule.mirrors`` entry keep a ``balancer.Mirror(percent)``; when ``take()`` says so, send a
   copy to ``mirror.backend`` (if available) and drop its response.
4. Forwarding: open a tunnel stream to the agent of ``backend.cluster`` with the target
   ``{namespace, name, port}``; the agent answers "connected" or a dial error (that is
   ``Failure.CONNECT``, no request byte was delivered). After a failure call
   ``retry.decide(method=, policy=rule.retry, attempts=, candidates=balancer
   .effective_weights(...).keys(), response_started=, body_replayable=, deadline=)`` and
   retry with ``pick(exclude=decision.exclude)`` at ``decision.not_before``.
5. Slow start: also wake at ``balancer.next_change(now=, available=)`` if the driver caches
   effective weights (``pick`` itself always uses the weights of ``now``).

Cluster side, ``edge_agent/cluster`` (the agent that dials): per Service port it watches the
EndpointSlices, keeps a ``HealthBoard`` of ready endpoints (``ip:port`` keys; ready/not ready
come from the slice's conditions as ``ReadyEndpoints(1)`` / ``ReadyEndpoints(0)``; dial
failures and 5xx as ``RequestResult``) and a ``Balancer`` with weight 1 per endpoint
(round robin with outlier ejection), and reports the ready count to the cloud.

Time: every ``now`` is the same clock, in seconds (the loop's monotonic time is right; wall
time is only needed to compare ``Route.created``, which comes from the stored objects).
"""

from fleet_model.gateway.balancer import Balancer, BalancerSettings, Mirror, rendezvous
from fleet_model.gateway.health import (
    CheckResult,
    Health,
    HealthBoard,
    HealthSettings,
    Outcome,
    Reachability,
    ReadyEndpoints,
    Reason,
    RequestResult,
    State,
)
from fleet_model.gateway.retry import IDEMPOTENT_METHODS, Attempt, Failure, RetryDecision, decide
from fleet_model.gateway.route import (
    API_VERSION,
    KIND,
    BackendRef,
    Request,
    Route,
    RouteHit,
    RouteRule,
    RouteSpec,
    RouteTable,
    parse_route,
    parse_spec,
)

__all__ = [
    "API_VERSION",
    "IDEMPOTENT_METHODS",
    "KIND",
    "Attempt",
    "BackendRef",
    "Balancer",
    "BalancerSettings",
    "CheckResult",
    "Failure",
    "Health",
    "HealthBoard",
    "HealthSettings",
    "Mirror",
    "Outcome",
    "Reachability",
    "ReadyEndpoints",
    "Reason",
    "Request",
    "RequestResult",
    "RetryDecision",
    "Route",
    "RouteHit",
    "RouteRule",
    "RouteSpec",
    "RouteTable",
    "State",
    "decide",
    "parse_route",
    "parse_spec",
    "rendezvous",
]
