"""Services the cloud offers to agents *inside* their tunnel session (agent-opened streams).

Each service is a named target; parts of the server register theirs in
``app[AGENT_SERVICES_KEY]`` (target name -> handler) from their own ``setup()``. An agent
opening any other target is refused with TARGET_NOT_ALLOWED.

``renew``: the agent sends ``{"csr": PEM}`` and half-closes; we answer with a certificate
for the session's own identity (the name comes from the session's verified certificate, not
from the request) and end. So a certificate rotates over the live session, with no second
connection and no new trust decision.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_aio import StreamError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import AGENT_SERVICES_KEY, AUTHORITY_KEY, STORE_KEY, AgentService
from tunnel_server.identity import tls
from tunnel_server.identity.peer import PeerIdentity
from tunnel_server.identity.pki import CertificateAuthority, CSRError
from tunnel_server.web.bodies import BodyError, decode_json_object

if TYPE_CHECKING:
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import AgentSession

log = logging.getLogger("tunnel_server.agent_services")

RENEW_TARGET = "renew"
MAX_REQUEST_BYTES = 32 * 1024
"""A CSR is under 1 KB; anything past 32 KB is not a renewal request."""


async def _read_bounded(stream: TunnelStream, limit: int) -> bytes | None:
    data = bytearray()
    while chunk := await stream.read():
        data += chunk
        if len(data) > limit:
            return None
    return bytes(data)


async def _answer(stream: TunnelStream, body: dict[str, str]) -> None:
    await stream.write(json.dumps(body).encode())
    stream.end()


async def serve(stream: TunnelStream, *, session: AgentSession, app: web.Application) -> None:
    """Handle one stream an agent opened towards the cloud: route it by target name."""
    handler = app[AGENT_SERVICES_KEY].get(stream.target)
    if handler is None:
        stream.reject(ErrorCode.TARGET_NOT_ALLOWED, f"the cloud offers no {stream.target!r}")
        return
    await handler(stream, session, app)


async def _serve_renew(stream: TunnelStream, session: AgentSession, app: web.Application) -> None:
    await serve_renew(stream, session=session, store=app[STORE_KEY], authority=app[AUTHORITY_KEY])


def setup(app: web.Application) -> None:
    """Create the service table with the built-in ``renew``; other parts add theirs."""
    services: dict[str, AgentService] = {RENEW_TARGET: _serve_renew}
    app[AGENT_SERVICES_KEY] = services


async def serve_renew(
    stream: TunnelStream, *, session: AgentSession, store: Store, authority: CertificateAuthority
) -> None:
    """Rotate the session's certificate: CSR in, certificate out."""
    stream.accept()
    try:
        raw = await _read_bounded(stream, MAX_REQUEST_BYTES)
        if raw is None:
            stream.reset(ErrorCode.PROTOCOL_ERROR, f"renew request over {MAX_REQUEST_BYTES} bytes")
            return
        await _answer(stream, _renew(raw, session=session, store=store, authority=authority))
    except StreamError as error:
        log.info("renew stream failed", extra={"kv": {"node": session.name, "error": str(error)}})


def _renew(
    raw: bytes, *, session: AgentSession, store: Store, authority: CertificateAuthority
) -> dict[str, str]:
    identity = session.identity
    if not tls.is_current(store, identity):
        return {"error": "certificate_not_valid", "message": "revoked or replaced: join again"}
    try:
        csr = decode_json_object(raw).get("csr")
    except BodyError as error:
        return {"error": "bad_request", "message": f'expected {{"csr": PEM}}: {error}'}
    if not isinstance(csr, str):
        return {"error": "bad_request", "message": 'expected {"csr": PEM}: csr must be a string'}
    try:
        issued = authority.sign_csr(csr.encode(), subject_name=identity.name, kind=identity.kind)
    except CSRError as error:
        return {"error": "bad_csr", "message": str(error)}
    store.record_certificate(issued.record())
    store.touch_node(identity.name, now=time.time())
    # From now on this session stands on the new certificate: the old one may expire while
    # the session lives on, and a later renewal over this session must still be allowed.
    session.identity = PeerIdentity(
        name=identity.name, kind=identity.kind, serial=issued.serial, not_after=issued.not_after
    )
    log.info(
        "renewed certificate over the tunnel",
        extra={"kv": {"node": identity.name, "old": identity.serial, "new": issued.serial}},
    )
    return {
        "status": "issued",
        "certificate": issued.pem,
        "ca": authority.ca_pem().decode(),
        "serial": issued.serial,
        "expires": issued.not_after.isoformat(),
    }
