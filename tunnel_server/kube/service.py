"""The ``kube`` agent service: a node reaches the cloud's API server through its tunnel.

The node speaks plain HTTP/1.1 into the stream (its loopback side adds no credentials). We
parse each request with h11, drop any credentials and impersonation headers it carries, and
send it to the configured API server with the server's own credentials plus impersonation of
the node's verified identity: ``system:node:<name>`` in ``system:nodes``. RBAC in the cluster
then decides what the node may do, exactly as for a kubelet with its own certificate. Only
sessions of kind ``node`` get this service.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import TYPE_CHECKING

import aiohttp
import h11
from aiohttp import web

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import AGENT_SERVICES_KEY, UPSTREAM_KEY
from tunnel_server.kube.upstream import KubeUpstream, open_upstream
from tunnel_server.tunnel.http_over_stream import HOP_BY_HOP

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.tunnel.sessions import AgentSession

log = logging.getLogger("tunnel_server.kube_service")

KUBE_TARGET = "kube"
MAX_HEAD = 64 * 1024
"""Bytes of one request head; kube clients send a few hundred."""
MAX_BODY = 3 * 1024 * 1024
"""Bytes of one request body: the API server's own limit for most objects (3 MiB)."""
_DROPPED = frozenset({"authorization", "host"})


def _forwarded_headers(request: h11.Request, node: str) -> list[tuple[str, str]]:
    headers: list[tuple[str, str]] = []
    for raw_name, raw_value in request.headers:
        name = raw_name.decode("latin-1").lower()
        if name in HOP_BY_HOP or name in _DROPPED or name.startswith("impersonate-"):
            continue  # a node never chooses whom it acts as
        headers.append((name, raw_value.decode("latin-1")))
    headers += [
        ("Impersonate-User", f"system:node:{node}"),
        ("Impersonate-Group", "system:nodes"),
        ("Impersonate-Group", "system:authenticated"),
    ]
    return headers


async def _next(conn: h11.Connection, stream: TunnelStream) -> h11.Event | type[h11.PAUSED]:
    while True:
        event = conn.next_event()
        if event is not h11.NEED_DATA:
            return event  # type: ignore[return-value]
        conn.receive_data(await stream.read())


async def _read_body(conn: h11.Connection, stream: TunnelStream) -> bytes | None:
    body = bytearray()
    while True:
        event = await _next(conn, stream)
        if isinstance(event, h11.Data):
            body += event.data
            if len(body) > MAX_BODY:
                return None
        elif isinstance(event, h11.EndOfMessage):
            return bytes(body)
        else:
            raise h11.RemoteProtocolError("request ended early")


async def _simple(conn: h11.Connection, stream: TunnelStream, status: int, text: str) -> None:
    body = text.encode()
    headers = [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))]
    await stream.write(conn.send(h11.Response(status_code=status, headers=headers)))
    await stream.write(conn.send(h11.Data(data=body)))
    await stream.write(conn.send(h11.EndOfMessage()))


async def _exchange(
    conn: h11.Connection, stream: TunnelStream, request: h11.Request, node: str, up: KubeUpstream
) -> None:
    if any(name.lower() == b"upgrade" for name, _ in request.headers):
        await _simple(conn, stream, 501, "upgrades (exec, attach) do not go upstream from a node")
        return
    body = await _read_body(conn, stream)
    if body is None:
        await _simple(conn, stream, 413, f"request body over {MAX_BODY} bytes")
        return
    url = up.base_url + request.target.decode("latin-1")
    async with up.session.request(
        request.method.decode(),
        url,
        headers=_forwarded_headers(request, node),
        data=body or None,
        allow_redirects=False,
        auto_decompress=False,
    ) as answer:
        headers = [(k, v) for k, v in answer.headers.items() if k.lower() not in HOP_BY_HOP]
        if answer.content_length is None:
            headers.append(("Transfer-Encoding", "chunked"))
        await stream.write(conn.send(h11.Response(status_code=answer.status, headers=headers)))
        async for chunk in answer.content.iter_any():
            await stream.write(conn.send(h11.Data(data=chunk)))
    await stream.write(conn.send(h11.EndOfMessage()))


async def serve(stream: TunnelStream, session: AgentSession, app: web.Application) -> None:
    """Serve HTTP/1.1 requests (keep-alive) from one node stream until it ends."""
    if session.identity.kind != "node":
        stream.reject(ErrorCode.TARGET_NOT_ALLOWED, "the kube service is for nodes")
        return
    upstream = app[UPSTREAM_KEY]
    stream.accept()
    conn = h11.Connection(h11.SERVER, max_incomplete_event_size=MAX_HEAD)
    try:
        while True:
            event = await _next(conn, stream)
            if isinstance(event, h11.ConnectionClosed):
                break
            if not isinstance(event, h11.Request):
                raise h11.RemoteProtocolError(f"expected a request, got {type(event).__name__}")
            await _exchange(conn, stream, event, session.name, upstream)
            if conn.our_state is h11.MUST_CLOSE:
                break
            conn.start_next_cycle()
        stream.end()
    except (h11.ProtocolError, aiohttp.ClientError, StreamError, TimeoutError) as error:
        log.info("kube stream of %s ended: %s", session.name, error)
        stream.reset(ErrorCode.CANCEL, f"kube upstream: {error}")


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    yield
    await app[UPSTREAM_KEY].session.close()


def setup(app: web.Application, *, kubeconfig: Path) -> None:
    """Offer the ``kube`` service, reaching the API server named in ``kubeconfig``."""
    upstream = open_upstream(kubeconfig, connect_timeout=10, max_connections=256)
    app[UPSTREAM_KEY] = upstream
    base_url = upstream.base_url
    app[AGENT_SERVICES_KEY][KUBE_TARGET] = serve
    app.cleanup_ctx.append(_lifecycle)
    log.info("nodes reach the API server %s through their tunnels", base_url)
