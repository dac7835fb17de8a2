"""``/api/v1/nodes/{name}/proxy/{target}/{path}``: reach a service on an edge node.

The caller needs role operator or admin (``access.require(..., "write")``), whatever the
method: a GET through here reaches into a machine (a local admin page, a metrics endpoint
with secrets in it), not into data the cloud holds. The request goes through the node's
tunnel session to ``target``, which the *agent* resolves in its own allow-list: the cloud
names a target, it never gives the agent an address to dial. Only sessions of kind ``node``
are reached: a registered cluster's agent is answered as not a node (its API server is
``/clusters/{name}/``). The caller's credentials are not forwarded.

With replicas (docs/ha.md), a node whose session another replica holds is reached through
it (``replicas.opener``): same answers, plus 503 ``agent_reconnecting`` with ``Retry-After``
while the holding replica died and its agent is not back on another one yet (within its
backoff), and 502 ``replica_unreachable`` when the holding replica answers but refuses the
peer link.
"""

from __future__ import annotations

import logging
from urllib.parse import unquote

from aiohttp import web

from tunnel_aio import StreamError, StreamRejectedError, TunnelStream
from tunnel_protocol import MAX_TARGET_LENGTH, ErrorCode, is_valid_target
from tunnel_server.api import access
from tunnel_server.app_keys import METRICS_KEY, NODE_PROXY_SETTINGS_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.replicas import opener
from tunnel_server.replicas.peer_client import PeerUnreachableError
from tunnel_server.settings import NodeProxySettings
from tunnel_server.tunnel.http_over_stream import (
    UnsendableRequestError,
    UpstreamError,
    encode_request,
    forward,
    origin_form,
    request_head,
    unsendable,
)
from tunnel_server.web.errors import ApiError, error_response

log = logging.getLogger("tunnel_server.node_proxy")


class ProxyError(Exception):
    """An answer for the caller: HTTP status, a stable code, and what to do about it."""

    def __init__(
        self, status: int, code: str, message: str, *, headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.headers = headers

    def response(self) -> web.Response:
        """An RFC 9457 problem document, as every other error of the API."""
        return error_response(self.status, self.code, str(self), headers=self.headers)


def _check_node(request: web.Request, name: str) -> None:
    """A node (not a cluster) whose session this replica or a peer holds; else why not."""
    session = request.app[SESSIONS_KEY].get(name)
    if session is not None:
        if session.identity.kind != "node":
            raise _not_a_node(name)
        return
    node = request.app[STORE_KEY].get_node(name)
    if node is None:
        raise ProxyError(
            404, "node_not_found", f"no node named {name!r}: see `tunnel-server nodes`"
        )
    if node.kind != "node":
        raise _not_a_node(name)
    if not opener.connected(request.app, name) and not opener.reconnecting(request.app, name):
        raise _offline(name, node.state)


def _offline(name: str, state: str) -> ProxyError:
    return ProxyError(
        503,
        "node_offline",
        f"node {name!r} has no tunnel session now (state {state}); it reconnects by "
        "itself when it can reach this server",
    )


def _not_a_node(name: str) -> ProxyError:
    return ProxyError(
        404,
        "not_a_node",
        f"{name!r} is a registered cluster, not a node: the node proxy reaches services on "
        f"edge machines; reach the cluster's API server at /clusters/{name}/",
    )


async def _open(request: web.Request, name: str, target: str, early_data: bytes) -> TunnelStream:
    metrics = request.app[METRICS_KEY]
    try:
        stream = await opener.open_agent_stream(
            request.app,
            name,
            target,
            timeout=request.app[NODE_PROXY_SETTINGS_KEY].open_timeout,
            early_data=early_data,
        )
    except opener.AgentReconnectingError as moving:
        metrics.streams_opened.labels("failed").inc()
        raise ProxyError(
            503,
            "agent_reconnecting",
            str(moving),
            headers={"Retry-After": str(moving.retry_after)},
        ) from None
    except opener.AgentNotConnectedError:
        metrics.streams_opened.labels("failed").inc()
        raise _offline(name, "approved") from None
    except StreamRejectedError as rejected:
        metrics.streams_opened.labels("rejected").inc()
        if rejected.code is ErrorCode.TARGET_NOT_ALLOWED:
            raise ProxyError(
                403, "target_not_allowed", f"node {name!r} refused: {rejected}"
            ) from None
        raise ProxyError(
            502, "target_unreachable", f"node {name!r} could not reach it: {rejected}"
        ) from None
    except PeerUnreachableError as unreachable:
        metrics.streams_opened.labels("failed").inc()
        raise ProxyError(
            502, "replica_unreachable", f"tunnel to node {name!r} failed: {unreachable}"
        ) from None
    except StreamError as failed:
        metrics.streams_opened.labels("failed").inc()
        raise ProxyError(
            502, "tunnel_failed", f"tunnel to node {name!r} failed: {failed}"
        ) from None
    metrics.streams_opened.labels("accepted").inc()
    return stream


def _forwarded_target(request: web.Request, name: str, target: str) -> str:
    """The path and query the caller sent after ``/api/v1/nodes/{name}/proxy/{target}``, raw."""
    path, mark, query = origin_form(request).partition("?")
    # "", "api", "v1", "nodes", name, "proxy", target, and the rest: what we send on.
    parts = path.split("/", 7)
    if len(parts) < 7 or unquote(parts[4]) != name or unquote(parts[6]) != target:
        raise ProxyError(
            400,
            "bad_path",
            "the node and target must be plain path segments (no dot segments or encoded "
            "slashes before the part that is sent on)",
        )
    forwarded = "/" + (parts[7] if len(parts) > 7 else "") + mark + query
    bad = unsendable(forwarded)
    if bad is not None:
        raise ProxyError(
            400,
            "bad_path",
            f"the path or query holds {bad!r}, which is not sent on to a node: "
            "percent-encode non-ASCII bytes and spaces; NUL, CR and LF are refused even encoded",
        )
    return forwarded


def _check_target(target: str) -> None:
    if not is_valid_target(target):
        raise ProxyError(
            400,
            "bad_target",
            f"target {target!r} is not a valid target name: 1..{MAX_TARGET_LENGTH} printable "
            "ASCII characters without spaces, as in the node's [tunnel.targets]",
        )


async def proxy(request: web.Request) -> web.StreamResponse:
    name, target = request.match_info["name"], request.match_info["target"]
    try:
        access.require(request, "write", cached=True)
    except ApiError as refused:
        return refused.response()
    try:
        path = _forwarded_target(request, name, target)
        _check_target(target)
        head, upgrade = request_head(
            request, path=path, host=target, drop=frozenset({"authorization"})
        )
        _check_node(request, name)
        # The request head goes with the OPEN (early data): the agent writes it to the
        # target as soon as it has dialled, a round trip sooner than after the ACCEPT.
        sent, early_data = encode_request(request, head, upgrade=upgrade)
        stream = await _open(request, name, target, early_data)
    except ProxyError as refused:
        return refused.response()
    except UnsendableRequestError as bad:
        return ProxyError(400, "bad_request", str(bad)).response()
    try:
        return await forward(request, stream, head, upgrade=upgrade, sent=sent)
    except UpstreamError as bad:
        return ProxyError(502, "bad_upstream", f"{target} on node {name!r}: {bad}").response()
    except StreamError as failed:
        return ProxyError(502, "stream_failed", f"{target} on node {name!r}: {failed}").response()
    finally:
        stream.reset(ErrorCode.CANCEL, "exchange over")  # a no-op once both ends closed


def setup(app: web.Application, *, settings: NodeProxySettings) -> None:
    app[NODE_PROXY_SETTINGS_KEY] = settings
    app.router.add_route("*", "/api/v1/nodes/{name}/proxy/{target}/{path:.*}", proxy)
    app.router.add_route("*", "/api/v1/nodes/{name}/proxy/{target}", proxy)
