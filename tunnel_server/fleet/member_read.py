"""One bounded GET to a registered cluster's API server through its tunnel, as the caller.

For REST routes that show what lives in a member cluster (``elastic_view``): the same way and
the same identity as ``/clusters/{name}/...`` (``cluster_proxy``), but the answer is read
whole, bounded, for the route to shape, instead of being relayed.

Rules:

* The route has authorized its caller for the cluster first (``access.require(request,
  "read", cluster=name)``). The request carries exactly the cluster proxy's impersonation
  (``cluster_proxy.impersonation``: ``edgefleet:<role>`` and the user's name), never the
  agent's own rights: the member's RBAC decides what the caller may read.
* GET only, with a path the route built from validated parts; one exchange per stream
  (``Connection: close``), to the target ``kube-apiserver`` of a session whose certificate
  says ``cluster``.
* Bounded: the agent must accept the stream within the cluster proxy's ``open_timeout``;
  the whole answer must arrive within ``answer_timeout`` (else 504 ``member_timeout``) and
  be at most ``max_answer_bytes`` (else 502 ``member_answer_too_large``, read no further),
  its head at most ``MAX_RESPONSE_HEAD``.
* Our refusals are problem documents: 404 ``cluster_not_found`` (also for a node's name),
  503 ``cluster_offline`` (no tunnel session now), 404 ``apiserver_not_served`` (the agent
  runs without ``[cluster]``: a registered cluster whose API is not offered to the cloud has
  no objects to show, as a cluster without the CRDs; a setting, not a failure), 502
  ``cluster_unreachable`` (the agent refused the stream otherwise, or the tunnel failed), 502
  ``bad_upstream`` (the answer is not HTTP).
  What the member answered, error or not, is the route's to interpret.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

import h11
from aiohttp import web

from tunnel_aio import StreamError, StreamRejectedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.api.caller import Caller
from tunnel_server.app_keys import CLUSTER_PROXY_SETTINGS_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.fleet.cluster_proxy import TARGET, impersonation
from tunnel_server.replicas import opener
from tunnel_server.tunnel.http_over_stream import MAX_RESPONSE_HEAD
from tunnel_server.web.errors import ApiError

__all__ = [
    "MEMBER_READ_SETTINGS_KEY",
    "MemberAnswer",
    "MemberReadSettings",
    "member_get",
]

log = logging.getLogger("tunnel_server.fleet.member_read")

USER_AGENT = "edgefleet-cloud/member-read"
"""What the member's audit log shows as the client of these reads."""


@dataclass(frozen=True, kw_only=True)
class MemberReadSettings:
    answer_timeout: float = 15.0
    """Seconds for the whole answer (head and body) once the stream is open. A list of 500
    small custom resources from a kine-backed API server takes well under a second; the rest
    is a slow uplink. A console page waiting longer than this is broken anyway."""

    max_answer_bytes: int = 8 * 1024 * 1024
    """Bytes of one answer's body read at most. 500 NodePools with full status (16 conditions
    of 1 KiB messages) are ~10 KB each, so a default page of 500 is ~5 MB at worst; more is
    refused, not buffered (ask for a smaller ``limit``)."""


MEMBER_READ_SETTINGS_KEY: web.AppKey[MemberReadSettings] = web.AppKey(
    "member_read_settings", MemberReadSettings
)


@dataclass(frozen=True, kw_only=True)
class MemberAnswer:
    status: int
    content_type: str
    body: bytes


class _TooLargeError(Exception):
    pass


def _when(seconds: float | None) -> str:
    if seconds is None:
        return "it never connected"
    return "since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _check_cluster(app: web.Application, name: str) -> None:
    record = app[STORE_KEY].get_node(name)
    if record is None or record.kind != "cluster":
        hint = (
            f"{name!r} is a node, not a cluster: see GET /api/v1/nodes/{name}"
            if record is not None
            else f"no cluster named {name!r}: see GET /api/v1/clusters"
        )
        raise ApiError(404, "cluster_not_found", hint)
    session = app[SESSIONS_KEY].get(name)
    if session is not None and session.identity.kind != "cluster":
        session = None  # a stale record: never a node's session under a cluster's name
    if session is None and opener.holder(app, name) is None:
        raise _offline(name, record.last_seen, record.state)


def _offline(name: str, last_seen: float | None, state: str) -> ApiError:
    return ApiError(
        503,
        "cluster_offline",
        f"cluster {name} is offline {_when(last_seen)}: its agent has no tunnel "
        f"session now (state {state}), so what is in the cluster cannot be read; "
        "it reconnects by itself when it can",
    )


async def _open(app: web.Application, name: str) -> TunnelStream:
    try:
        return await opener.open_agent_stream(
            app, name, TARGET, timeout=app[CLUSTER_PROXY_SETTINGS_KEY].open_timeout
        )
    except opener.AgentNotConnectedError:
        raise _offline(name, None, "approved") from None
    except StreamRejectedError as rejected:
        if rejected.code is ErrorCode.TARGET_NOT_ALLOWED:
            raise ApiError(
                404,
                "apiserver_not_served",
                f"the agent of cluster {name} does not serve its API server (it runs without "
                "a [cluster] section: docs/clusters.md), so nothing in the cluster can be read",
            ) from None
        raise ApiError(
            502, "cluster_unreachable", f"cluster {name}: its agent refused: {rejected}"
        ) from None
    except StreamError as failed:
        raise ApiError(
            502, "cluster_unreachable", f"the tunnel to cluster {name} failed: {failed}"
        ) from None


def _head(path: str, caller: Caller) -> h11.Request:
    return h11.Request(
        method="GET",
        target=path,
        headers=[
            ("Host", TARGET),
            ("Accept", "application/json"),
            ("User-Agent", USER_AGENT),
            ("Connection", "close"),
            *impersonation(caller),
        ],
    )


async def _next_event(conn: h11.Connection, stream: TunnelStream) -> h11.Event:
    while True:
        event = conn.next_event()  # h11.RemoteProtocolError: the caller makes it a 502
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await stream.read())


async def _exchange(stream: TunnelStream, head: h11.Request, *, limit: int) -> MemberAnswer:
    conn = h11.Connection(h11.CLIENT, max_incomplete_event_size=MAX_RESPONSE_HEAD)
    await stream.write(conn.send(head) or b"")
    conn.send(h11.EndOfMessage())  # a GET has no body: nothing to write
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Response):
            break
        if isinstance(event, h11.ConnectionClosed):
            raise h11.RemoteProtocolError("the connection closed without an answer")
        # InformationalResponse (100, 103): wait for the real answer
    content_type = ""
    for name, value in event.headers:
        if name == b"content-type":
            content_type = value.decode("latin-1").partition(";")[0].strip().lower()
    body = await _body(conn, stream, limit=limit)
    return MemberAnswer(status=event.status_code, content_type=content_type, body=body)


async def _body(conn: h11.Connection, stream: TunnelStream, *, limit: int) -> bytes:
    body = bytearray()
    while True:
        event = await _next_event(conn, stream)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > limit:
                raise _TooLargeError
        elif isinstance(event, h11.EndOfMessage | h11.ConnectionClosed):
            return bytes(body)


async def member_get(
    request: web.Request, cluster: str, path: str, *, caller: Caller
) -> MemberAnswer:
    """GET ``path`` (origin form, built by the route) from ``cluster``'s API server, as ``caller``.

    ApiError for our refusals and failures (module docstring); any answer of the member's.
    """
    app = request.app
    settings = app[MEMBER_READ_SETTINGS_KEY]
    _check_cluster(app, cluster)
    stream = await _open(app, cluster)
    try:
        async with asyncio.timeout(settings.answer_timeout):
            return await _exchange(stream, _head(path, caller), limit=settings.max_answer_bytes)
    except TimeoutError:
        raise ApiError(
            504,
            "member_timeout",
            f"cluster {cluster} did not answer within {settings.answer_timeout:g} s",
        ) from None
    except _TooLargeError:
        raise ApiError(
            502,
            "member_answer_too_large",
            f"cluster {cluster}'s answer is over {settings.max_answer_bytes} bytes: ask for "
            "fewer items at once (limit)",
        ) from None
    except h11.ProtocolError as bad:
        raise ApiError(
            502, "bad_upstream", f"cluster {cluster}: the answer is not valid HTTP: {bad}"
        ) from None
    except StreamError as failed:
        log.debug("read from cluster %s failed: %s", cluster, failed)
        raise ApiError(
            502, "cluster_unreachable", f"cluster {cluster}: the tunnel stream failed: {failed}"
        ) from None
    finally:
        stream.reset(ErrorCode.CANCEL, "exchange over")  # a no-op once both ends closed
