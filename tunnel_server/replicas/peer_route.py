"""``GET /peer/v1/tunnel``: where other replicas hold their link to forward agent streams here.

Rules:

- Only a replica may hold a link: the TLS layer verified the client certificate against our
  CAs, and ``CertificateAuthority.replica_of`` accepts only a replica's (O
  ``edgefleet:replica``, CN ``replica:<name>``, client-auth usage, valid now). An agent's
  certificate, or none, is answered 401 before any WebSocket work; a replica certificate is
  refused by the agents' ``/tunnel`` in turn (its O is no node kind). The link is closed when
  the peer's certificate expires (the peer dials again with its renewed one).
- At most ``max_links_per_peer`` links per peer replica (429 beyond): one is the norm.
- Each stream the peer opens names ``<node>/<target>``. It is served only from *this*
  replica's own session of ``node``: a node this replica does not hold is refused
  (REFUSED_STREAM, its text saying ``NOT_HELD``), never forwarded on, so a stale holder record
  costs one refused open, not a loop (the caller looks for the new holder and tries once
  more). The agent's answer is passed back unchanged (a REJECT keeps its code and text).
- An accepted stream is spliced to the agent's stream byte for byte, both ways: each side is
  read only as the other side's credit allows (``TunnelStream.write`` waits for credit, and a
  stream gives credit back only when read), so what is held per stream is one chunk; an end
  (FIN) becomes an end, a reset of either side resets both.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from typing import TYPE_CHECKING

from aiohttp import web
from cryptography import x509

from tunnel_aio import StreamError, StreamRejectedError, TunnelConnection
from tunnel_protocol import ErrorCode, Role
from tunnel_protocol.frames import MAX_TEXT_LENGTH
from tunnel_server.app_keys import AUTHORITY_KEY, SESSIONS_KEY
from tunnel_server.replicas import rules
from tunnel_server.replicas.keys import PEERS_KEY
from tunnel_server.replicas.peer_client import NOT_HELD, PEER_PATH, SEPARATOR

if TYPE_CHECKING:
    from tunnel_aio import TunnelStream
    from tunnel_server.replicas.peer_client import PeerLinks

log = logging.getLogger("tunnel_server.replicas.peers")


def _replica(request: web.Request) -> tuple[str, float] | None:
    """The verified peer replica's name and its certificate's expiry (UNIX s), or None."""
    transport = request.transport
    ssl_object = None if transport is None else transport.get_extra_info("ssl_object")
    if not isinstance(ssl_object, ssl.SSLObject):
        return None
    der = ssl_object.getpeercert(binary_form=True)
    if der is None:
        return None
    try:
        certificate = x509.load_der_x509_certificate(der)
    except ValueError:
        return None
    name = request.app[AUTHORITY_KEY].replica_of(certificate)
    if name is None or not rules.valid_replica_name(name):
        return None
    return name, certificate.not_valid_after_utc.timestamp()


async def peer_tunnel(request: web.Request) -> web.StreamResponse:
    """Hold one peer replica's link until it ends."""
    links = request.app[PEERS_KEY]
    verified = _replica(request)
    if verified is None:
        links.metrics.streams.labels("in", "refused_link").inc()
        log.warning(
            "peer link refused: no replica certificate", extra={"kv": {"remote": request.remote}}
        )
        return web.json_response(
            {"error": "unauthenticated", "message": "peer links need a replica certificate"},
            status=401,
        )
    name, expires = verified
    held = links.inbound_by.get(name, 0)
    if held >= links.settings.max_links_per_peer:
        return web.json_response(
            {"error": "too_many_links", "message": f"replica {name} holds {held} links already"},
            status=429,
        )
    ws = web.WebSocketResponse(
        max_msg_size=links.tunnel.max_frame_payload + 4096, heartbeat=None, compress=False
    )
    await ws.prepare(request)

    async def on_stream(stream: TunnelStream) -> None:
        await serve(request.app, links, stream, peer=name)

    connection = TunnelConnection(
        ws,
        role=Role.SERVER,
        name=f"peer:{name}",
        on_stream=on_stream,
        settings=links.tunnel,
        logger=log,
    )
    links.inbound_by[name] = held + 1
    links.inbound.add(connection)
    log.info("peer link accepted", extra={"kv": {"peer": name, "remote": request.remote}})
    try:
        async with asyncio.TaskGroup() as group:
            expiry = group.create_task(
                _close_at(connection, expires), name=f"replicas.peer-expiry[{name}]"
            )
            await connection.run()
            expiry.cancel()
    finally:
        links.inbound.discard(connection)
        links.inbound_by[name] -= 1
        if not links.inbound_by[name]:
            del links.inbound_by[name]
        ended = connection.termination
        log.info(
            "peer link ended", extra={"kv": {"peer": name, "reason": ended.text if ended else "?"}}
        )
    return ws


async def _close_at(connection: TunnelConnection, expires: float) -> None:
    await asyncio.sleep(max(0.0, expires - time.time()))
    connection.close(ErrorCode.CANCEL, "the peer's replica certificate expired")


def _text(error: Exception) -> str:
    return str(error).encode()[: MAX_TEXT_LENGTH - 4].decode(errors="ignore")


async def serve(app: web.Application, links: PeerLinks, stream: TunnelStream, *, peer: str) -> None:
    """Serve one forwarded stream from this replica's own session of its node (see rules)."""
    metrics = links.metrics.streams
    node, sep, target = stream.target.partition(SEPARATOR)
    if not sep or not node or not target:
        metrics.labels("in", "rejected").inc()
        stream.reject(ErrorCode.PROTOCOL_ERROR, f"a peer stream names <node>{SEPARATOR}<target>")
        return
    session = app[SESSIONS_KEY].get(node)
    if session is None:
        metrics.labels("in", "not_held").inc()
        stream.reject(
            ErrorCode.REFUSED_STREAM,
            f"replica {links.name} {NOT_HELD} {node!r} (not forwarded again)",
        )
        return
    try:
        local = await session.connection.open_stream(target, timeout=links.settings.open_timeout)
    except StreamRejectedError as rejected:
        metrics.labels("in", "rejected").inc()
        stream.reject(rejected.code, _text(rejected))
        return
    except StreamError as failed:
        metrics.labels("in", "failed").inc()
        stream.reject(ErrorCode.INTERNAL_ERROR, _text(failed))
        return
    try:
        stream.accept()
    except StreamError:
        local.reset(ErrorCode.CANCEL, f"the peer replica {peer} gave the stream up")
        metrics.labels("in", "failed").inc()
        return
    metrics.labels("in", "accepted").inc()
    await splice(stream, local)


async def _copy(source: TunnelStream, sink: TunnelStream) -> None:
    while data := await source.read():
        await sink.write(data)
    sink.end()


async def splice(a: TunnelStream, b: TunnelStream) -> None:
    """Copy both ways until both ended; a failure of either resets both (see rules)."""
    try:
        async with asyncio.TaskGroup() as group:
            group.create_task(_copy(a, b), name=f"replicas.splice-{a.stream_id}-up")
            group.create_task(_copy(b, a), name=f"replicas.splice-{a.stream_id}-down")
    except* StreamError as errors:
        first = errors.exceptions[0]
        code = first.code if isinstance(first, StreamError) else ErrorCode.CANCEL
        log.debug("forwarded stream %s ended: %s", a.target, first)
        a.reset(code, _text(first))
        b.reset(code, _text(first))


async def _shutdown(app: web.Application) -> None:
    """End every peer link first, so that aiohttp need not wait its grace period for them."""
    app[PEERS_KEY].close()


def setup(app: web.Application) -> None:
    """Mount the peer route (the Kubernetes store's replicas only)."""
    app.router.add_get(PEER_PATH, peer_tunnel)
    app.on_shutdown.append(_shutdown)
