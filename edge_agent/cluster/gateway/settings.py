"""Settings of the gateway part of cluster mode (``[cluster.gateway]``).

Each field says its unit and why its default. ``edge_agent.config`` reads the table (checking
each key's type against its default, ``services`` as a list of patterns) and the ranges;
docs/agent-config.md lists them.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """``[cluster.gateway]``: the cloud gateway's streams to this cluster's Services."""

    enabled: bool = False
    """Serve the tunnel targets ``service/<namespace>/<name>:<port>`` at all. Off by default:
    it lets the cloud's gateway send traffic into the cluster, which an operator should ask
    for (and it watches Services and EndpointSlices, which costs two watches)."""

    services: tuple[str, ...] = ()
    """The allow-list: ``namespace/name`` or ``namespace/*`` patterns of the Services the cloud
    may reach (at most 256). Empty: none, whatever the cloud asks (DESIGN §3: the agent dials
    only what its operator listed)."""

    dial_timeout: float = 3.0
    """Seconds to connect to *some* ready endpoint, trying the next one after each failure;
    the stream is refused after that. Short: the cloud's gateway retries elsewhere, and a
    client waits for the whole of it."""

    connect_timeout: float = 1.0
    """Seconds for one TCP connect to one endpoint (capped by what is left of
    ``dial_timeout``): a pod on the cluster's network answers within milliseconds, so a
    silent one is moved past quickly rather than eating the whole dial timeout."""

    eject_after: int = 3
    """Connect failures in a row that eject an endpoint (it is skipped while ejected): a few,
    so one lost SYN does not take a healthy pod out; Envoy's consecutive-failure default is 5
    for HTTP errors, a refused connect is a clearer signal."""

    eject_base: float = 5.0
    """Seconds of the first ejection; each further ejection in a row doubles it. Short, since a
    restarting pod is back within seconds, and the EndpointSlice drops a dead one anyway."""

    eject_max: float = 60.0
    """Seconds an ejection lasts at most, however often the endpoint failed: it is retried at
    least this often, so one that recovered without changing its address is found again."""

    max_streams: int = 1024
    """Gateway streams open at once (each one TCP connection to an endpoint); beyond it a new
    one is refused (REFUSED_STREAM, so the cloud tries another backend) instead of the agent
    holding file descriptors without bound."""

    pool_per_endpoint: int = 256
    """Idle keep-alive connections kept per endpoint for the next request (0: a new connection
    per request). A dial per request cost the agent and the backend more CPU than the request
    itself, and a pool smaller than the requests in flight to an endpoint still dials and
    closes on every burst (32 did at 100 concurrent requests); the idle ones never outnumber the
    streams that were open at once, so this only caps a burst's leftovers."""

    pool_total: int = 1024
    """Idle keep-alive connections kept in all (every endpoint): bounds the agent's idle file
    descriptors whatever the number of endpoints, at the most streams that can be open at
    once (``max_streams``' default); 0: no pool."""

    pool_idle_timeout: float = 4.0
    """Seconds an idle connection is kept: below the shortest common server keep-alive
    timeouts (Node.js 5 s; gunicorn's 2 s is caught by the EOF it sends), so a connection is
    rarely reused just as its backend closes it; a request that meets one anyway is sent once
    more on a new connection when that is safe (idempotent, no body)."""
