"""``/clusters/{name}/...``: any Kubernetes API request to a registered cluster, through its tunnel.

Rules:

* The caller authenticates and is authorized for the cluster (``access.require(request,
  "read", cluster=name)``) before anything leaves the cloud. Read vs write is the member's
  RBAC to decide: the cloud impersonates its caller there.
* The caller's ``Authorization`` and every ``Impersonate-*`` it sent are dropped; the cloud adds
  the scheme's headers for the caller (``Impersonate-User``/``-Group: edgefleet:<role>``,
  ``Impersonate-Extra-user.edgefleet.io: <user name, percent-encoded>``). The cluster agent
  adds its own credential and checks the impersonation again.
* A stream is opened only to the target ``kube-apiserver`` of a session whose certificate says
  ``cluster``; a node's name is answered 404 (saying it is a node), an offline cluster 503.
* The path after ``/clusters/{name}`` is forwarded raw (as the caller wrote it), the exchange
  as HTTP/1.1 over the stream (``http_over_stream``): bodies and watches stream, upgrades
  (exec, attach, port-forward over WebSocket or SPDY) pass untouched.
* With replicas (docs/ha.md) a cluster whose session another replica holds is reached through
  that replica's peer link (``replicas.opener``), streaming and upgrades included.
* Every error of ours is a Kubernetes ``Status`` (kind Status, apiVersion v1, status Failure,
  message, reason, code), so kubectl prints its message.
"""

from __future__ import annotations

import json
import logging
import time
from urllib.parse import quote, unquote

import h11
import prometheus_client
from aiohttp import web

from tunnel_aio import StreamError, StreamRejectedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.api import access
from tunnel_server.app_keys import (
    CLUSTER_PROXY_REQUESTS_KEY,
    CLUSTER_PROXY_SETTINGS_KEY,
    REGISTRY_KEY,
    SESSIONS_KEY,
    STORE_KEY,
)
from tunnel_server.replicas import opener
from tunnel_server.settings import ClusterProxySettings
from tunnel_server.tunnel.http_over_stream import (
    UnsendableRequestError,
    UpstreamError,
    encode_request,
    forward,
    origin_form,
    request_head,
    unsendable,
)
from tunnel_server.web.errors import ApiError

log = logging.getLogger("tunnel_server.fleet.cluster_proxy")

TARGET = "kube-apiserver"
"""The tunnel target a cluster agent serves (its member API server)."""
EXTRA_USER_HEADER = "Impersonate-Extra-user.edgefleet.io"
_IMPERSONATE = "impersonate-"
REASONS = {
    400: "BadRequest",
    401: "Unauthorized",
    403: "Forbidden",
    404: "NotFound",
    431: "RequestHeaderFieldsTooLarge",
    502: "InternalError",
    503: "ServiceUnavailable",
}


class ClusterProxyError(Exception):
    """An answer of ours for the caller, shown as a Kubernetes ``Status``."""

    def __init__(self, code: int, message: str, *, retry_after: int | None = None) -> None:
        super().__init__(message)
        self.code = code
        self.retry_after = retry_after

    def response(self) -> web.Response:
        return status_response(self.code, str(self), retry_after=self.retry_after)


def status_response(code: int, message: str, *, retry_after: int | None = None) -> web.Response:
    """A Kubernetes ``Status`` (what kubectl prints as ``Error from server``).

    ``retry_after``: seconds, as the API server says it (``Retry-After`` and
    ``details.retryAfterSeconds``): client-go retries a 5xx that has it.
    """
    body: dict[str, object] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": REASONS.get(code, "Unknown"),
        "code": code,
    }
    headers = {"Cache-Control": "no-store", "X-Content-Type-Options": "nosniff"}
    if retry_after is not None:
        body["details"] = {"retryAfterSeconds": retry_after}
        headers["Retry-After"] = str(retry_after)
    return web.Response(
        body=json.dumps(body).encode(),
        status=code,
        content_type="application/json",
        headers=headers,
    )


def _forwarded_target(request: web.Request, name: str) -> str:
    """The path and query after ``/clusters/{name}``, exactly as the caller wrote them."""
    path, mark, query = origin_form(request).partition("?")
    parts = path.split("/", 3)  # "", "clusters", name, and the rest: what we send on
    if len(parts) < 3 or unquote(parts[2]) != name:
        raise ClusterProxyError(
            400, "the cluster name must be a plain path segment (no encoded slashes)"
        )
    forwarded = "/" + (parts[3] if len(parts) > 3 else "") + mark + query
    bad = unsendable(forwarded)
    if bad is not None:
        raise ClusterProxyError(
            400,
            f"the path or query holds {bad!r}, which is not sent on: percent-encode "
            "non-ASCII bytes and spaces; NUL, CR and LF are refused even encoded",
        )
    return forwarded


def _check_header_size(request: web.Request, settings: ClusterProxySettings) -> None:
    raw = request.raw_headers
    size = sum(len(name) + len(value) + 4 for name, value in raw)
    if len(raw) > settings.max_headers or size > settings.max_header_bytes:
        raise ClusterProxyError(
            431,
            f"request headers too large ({len(raw)} headers, {size} bytes): the cluster proxy "
            f"takes at most {settings.max_headers} headers and {settings.max_header_bytes} bytes",
        )


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "it never connected"
    return "since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _check_cluster(request: web.Request, name: str) -> None:
    """A cluster whose session this replica or a peer holds: 404 for none (or a node), else 503."""
    record = request.app[STORE_KEY].get_node(name)
    if record is None:
        raise ClusterProxyError(404, f"no cluster named {name!r}: see GET /api/v1/clusters")
    if record.kind != "cluster":
        raise ClusterProxyError(
            404,
            f"{name!r} is a node, not a cluster: the cluster proxy reaches registered clusters "
            f"only (a node's services are under /api/v1/nodes/{name}/proxy/)",
        )
    session = request.app[SESSIONS_KEY].get(name)
    if session is not None and session.identity.kind != "cluster":
        session = None  # a stale record: never a node's session under a cluster's name
    if (
        session is None
        and opener.holder(request.app, name) is None
        and not opener.reconnecting(request.app, name)
    ):
        raise _offline(name, record.last_seen, record.state)


def _offline(name: str, last_seen: float | None, state: str) -> ClusterProxyError:
    return ClusterProxyError(
        503,
        f"cluster {name} is offline {_when(last_seen)}: its agent has no tunnel "
        f"session now (state {state}); it reconnects by itself when it can",
    )


def impersonation(caller: access.Caller) -> list[tuple[str, str]]:
    """The headers that make the member see ``caller`` (docs/clusters.md, "Impersonation")."""
    name = f"edgefleet:{caller.role}"
    return [
        ("Impersonate-User", name),
        ("Impersonate-Group", name),
        (EXTRA_USER_HEADER, quote(caller.name, safe="")),
    ]


def _head(request: web.Request, path: str, caller: access.Caller) -> tuple[h11.Request, bool]:
    """The head to send: the caller's minus its credentials and impersonation, plus ours."""
    drop = frozenset(
        {"authorization"}
        | {n.lower() for n in request.headers if n.lower().startswith(_IMPERSONATE)}
    )
    try:
        head, upgrade = request_head(request, path=path, host=TARGET, drop=drop)
        headers = [(n.decode("latin-1"), v.decode("latin-1")) for n, v in head.headers.raw_items()]
        with_ours = h11.Request(
            method=head.method, target=head.target, headers=headers + impersonation(caller)
        )
    except (UnsendableRequestError, h11.LocalProtocolError) as error:
        raise ClusterProxyError(400, f"this request cannot be sent on: {error}") from None
    return with_ours, upgrade


async def _open(request: web.Request, name: str, early_data: bytes) -> TunnelStream:
    try:
        return await opener.open_agent_stream(
            request.app,
            name,
            TARGET,
            timeout=request.app[CLUSTER_PROXY_SETTINGS_KEY].open_timeout,
            early_data=early_data,
        )
    except opener.AgentReconnectingError as moving:
        raise ClusterProxyError(503, str(moving), retry_after=moving.retry_after) from None
    except opener.AgentNotConnectedError:
        raise _offline(name, None, "approved") from None
    except StreamRejectedError as rejected:
        if rejected.code is ErrorCode.TARGET_NOT_ALLOWED:
            raise ClusterProxyError(
                503,
                f"the agent of cluster {name} does not serve its API server: run it with a "
                "[cluster] section (docs/clusters.md)",
            ) from None
        raise ClusterProxyError(503, f"the agent of cluster {name} refused: {rejected}") from None
    except StreamError as failed:
        raise ClusterProxyError(503, f"the tunnel to cluster {name} failed: {failed}") from None


async def proxy(request: web.Request) -> web.StreamResponse:
    """Forward one request to the cluster's API server; errors as Kubernetes ``Status``."""
    name = request.match_info["name"]
    requests = request.app[CLUSTER_PROXY_REQUESTS_KEY]
    try:
        caller = access.require(request, "read", cluster=name, cached=True)
        _check_header_size(request, request.app[CLUSTER_PROXY_SETTINGS_KEY])
        path = _forwarded_target(request, name)
        head, upgrade = _head(request, path, caller)
        _check_cluster(request, name)
        sent, early_data = encode_request(request, head, upgrade=upgrade)  # with the OPEN
        stream = await _open(request, name, early_data)
    except ApiError as refused:
        requests.labels(str(refused.status)).inc()
        return status_response(refused.status, refused.message)
    except ClusterProxyError as refused:
        requests.labels(str(refused.code)).inc()
        return refused.response()
    requests.labels("forwarded").inc()
    try:
        return await forward(request, stream, head, upgrade=upgrade, sent=sent)
    except UpstreamError as bad:
        return status_response(502, f"cluster {name}: the API server's answer is invalid: {bad}")
    except StreamError as failed:
        return status_response(502, f"cluster {name}: the tunnel stream failed: {failed}")
    finally:
        stream.reset(ErrorCode.CANCEL, "exchange over")  # a no-op once both ends closed


def setup(app: web.Application, *, settings: ClusterProxySettings) -> None:
    """Mount ``/clusters/{name}/...`` (every method)."""
    app[CLUSTER_PROXY_SETTINGS_KEY] = settings
    app[CLUSTER_PROXY_REQUESTS_KEY] = prometheus_client.Counter(
        "tunnel_server_cluster_proxy_requests",
        "Requests to /clusters/{name}/..., by outcome (forwarded, or our error's code)",
        ["result"],
        registry=app[REGISTRY_KEY],
    )
    app.router.add_route("*", "/clusters/{name}/{path:.*}", proxy)
    app.router.add_route("*", "/clusters/{name}", proxy)


__all__ = [
    "TARGET",
    "ClusterProxyError",
    "impersonation",
    "proxy",
    "setup",
    "status_response",
]
