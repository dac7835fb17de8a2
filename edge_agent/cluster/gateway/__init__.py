"""The multi-cluster gateway, the cluster agent's side (issue 16).

The cloud's gateway forwards each HTTP request through the chosen cluster's tunnel: it opens a
stream to the target ``service/<namespace>/<name>:<port>`` and writes raw HTTP/1.1 into it. The
agent resolves the Service port to a ready endpoint from the EndpointSlices it watches and pipes
the stream to a TCP connection to it, so the cluster needs no public address.

``target``: target names and the operator's allow-list (pure); ``endpoints``: a Service port's
ready endpoints from its Service and EndpointSlices (pure); ``balancer``: round robin with
outlier ejection (sans-IO, time passed in); ``service.GatewayPart``: the informers and the
stream handler, wired into the agent with ``[cluster.gateway]`` (``settings``).
docs/agent-config.md.

Kept import-light (no module imported here) so ``edge_agent.settings`` can import ``settings``.
"""
