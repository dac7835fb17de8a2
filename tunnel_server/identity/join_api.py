"""Join, approval polling and certificate renewal over HTTPS.

``GET  /api/v1/ca``                 the CA certificate (public; the joiner pins it by hash)
``POST /api/v1/join``               {token, csr, name?, agent_version?} -> 200 certificate,
                                    or 202 pending with a poll URL and a one-off poll secret
``GET  /api/v1/join/{request}``     ``Authorization: Bearer <poll secret>`` -> 202 / 200 / 403
``POST /api/v1/renew``              mTLS with the current certificate; {csr} -> 200 certificate

Every error is an RFC 9457 problem document (``reason``: the stable word, ``detail``: what to
do). Bodies are bounded (``JoinSettings.max_body_bytes``, and JSON nesting:
``web.bodies.read_json_object``). The
certificate's subject is always the token's (join) or the verified client certificate's (renew)
name: what the CSR or the body asks for is ignored or refused.
"""

from __future__ import annotations

import logging
import secrets
import time
from typing import TYPE_CHECKING, Any, TypeAlias

import prometheus_client
from aiohttp import web
from cryptography import x509

from tunnel_server.app_keys import (
    AUTHORITY_KEY,
    JOIN_METRIC_KEY,
    JOIN_SETTINGS_KEY,
    NODE_EVENTS_KEY,
    REGISTRY_KEY,
    STORE_KEY,
)
from tunnel_server.identity import tokens
from tunnel_server.identity.pki import CSRError, IssuedCertificate, check_csr
from tunnel_server.identity.tls import peer_certificate, peer_identity
from tunnel_server.settings import JoinSettings
from tunnel_server.store import (
    JoinRequest,
    NameTakenError,
    NodeRecord,
    NodeState,
    TokenRecord,
    TokenUsedError,
)
from tunnel_server.web.bodies import read_json_object
from tunnel_server.web.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

log = logging.getLogger("tunnel_server.join_api")

_MAX_FIELD = 64 * 1024
_TOKEN_STATUS: dict[str, int] = {
    "invalid_token": 401,
    "token_expired": 401,
    "token_used": 403,
}

Handler: TypeAlias = "Callable[[web.Request], Awaitable[web.StreamResponse]]"


def _note_join(request: web.Request) -> None:
    """Have the node events see the new row now, before an approval can follow it."""
    if (events := request.app.get(NODE_EVENTS_KEY)) is not None:
        events.sync(now=time.time())


def _endpoint(name: str, handler: Handler) -> Handler:
    """Turn ``ApiError`` into its JSON answer and count every outcome."""

    async def wrapped(request: web.Request) -> web.StreamResponse:
        try:
            response = await handler(request)
        except ApiError as exc:  # BodyError too
            request.app[JOIN_METRIC_KEY].labels(endpoint=name, result=exc.code).inc()
            log.info(
                "refused %s",
                name,
                extra={"kv": {"error": exc.code, "status": exc.status, "peer": request.remote}},
            )
            return exc.response()
        request.app[JOIN_METRIC_KEY].labels(endpoint=name, result=str(response.status)).inc()
        return response

    return wrapped


def _required(data: dict[str, Any], key: str) -> str:
    value = data.get(key)
    if not isinstance(value, str) or not value or len(value) > _MAX_FIELD:
        raise ApiError(400, "bad_request", f"field {key!r} must be a non-empty string")
    return value


def _optional(data: dict[str, Any], key: str) -> str | None:
    return None if data.get(key) is None else _required(data, key)


def _certificate_body(issued: IssuedCertificate, ca_pem: bytes) -> dict[str, str]:
    return {
        "status": "issued",
        "certificate": issued.pem,
        "ca": ca_pem.decode(),
        "name": issued.name,
        "kind": issued.kind,
        "serial": issued.serial,
        "expires": issued.not_after.isoformat(),
    }


async def get_ca(request: web.Request) -> web.Response:
    return web.Response(
        body=request.app[AUTHORITY_KEY].ca_pem(), content_type="application/x-pem-file"
    )


def _check_token(request: web.Request, text: str, now: float) -> TokenRecord:
    try:
        return tokens.check_token(request.app[STORE_KEY], text, now=now)
    except tokens.TokenError as exc:
        raise ApiError(_TOKEN_STATUS[exc.code], exc.code, str(exc)) from None


def _name_taken(name: str, state: str) -> ApiError:
    return ApiError(
        409,
        "name_taken",
        f"node {name!r} is already {state}. If this machine was reinstalled, create a new token"
        f" with `tunnel-server token create --name {name} --replace` (revokes the old node)",
    )


async def join(request: web.Request) -> web.Response:
    store, authority = request.app[STORE_KEY], request.app[AUTHORITY_KEY]
    settings = request.app[JOIN_SETTINGS_KEY]
    now = time.time()
    data = await read_json_object(request, limit=settings.max_body_bytes)
    token_text, csr = _required(data, "token"), _required(data, "csr")
    wanted, agent_version = _optional(data, "name"), _optional(data, "agent_version")
    record = _check_token(request, token_text, now)
    if wanted is not None and wanted != record.name:
        raise ApiError(
            409,
            "name_mismatch",
            f"this token is for {record.kind} {record.name!r}, not {wanted!r}:"
            f" join with --name {record.name} or create a token for {wanted!r}",
        )
    existing = store.get_node(record.name)
    if existing is not None and existing.state != "revoked":
        raise _name_taken(record.name, existing.state)
    state: NodeState = "pending" if record.require_approval else "approved"
    node = NodeRecord(
        name=record.name,
        kind=record.kind,
        state=state,
        created_at=now,
        agent_version=(agent_version or "")[:64] or None,
    )
    try:
        if record.require_approval:
            return _join_pending(request, record, node, csr, now)
        issued = authority.sign_csr(csr.encode(), subject_name=record.name, kind=record.kind)
        store.redeem_token(record.id, now=now, node=node, certificate=issued.record())
    except CSRError as exc:
        raise ApiError(400, "bad_csr", str(exc)) from None
    except TokenUsedError:
        raise ApiError(403, "token_used", "bootstrap token was already used") from None
    except NameTakenError as exc:
        raise _name_taken(exc.name, exc.state) from None
    log.info("node joined", extra={"kv": {"name": record.name, "token_id": record.id}})
    _note_join(request)
    return web.json_response(_certificate_body(issued, authority.ca_pem()))


def _join_pending(
    request: web.Request, record: TokenRecord, node: NodeRecord, csr: str, now: float
) -> web.Response:
    settings = request.app[JOIN_SETTINGS_KEY]
    check_csr(csr.encode(), max_bytes=request.app[AUTHORITY_KEY].settings.max_csr_bytes)
    poll_secret = tokens.new_poll_secret()
    pending = JoinRequest(
        id=secrets.token_hex(8),
        name=record.name,
        kind=record.kind,
        csr_pem=csr,
        poll_hash=tokens.hash_secret(poll_secret),
        created_at=now,
        expires_at=now + settings.pending_ttl,
    )
    request.app[STORE_KEY].redeem_token(record.id, now=now, node=node, request=pending)
    _note_join(request)
    log.info(
        "join waiting for approval",
        extra={"kv": {"name": record.name, "token_id": record.id, "request": pending.id}},
    )
    return web.json_response(
        {
            "status": "pending",
            "name": record.name,
            "request": pending.id,
            "poll": f"/api/v1/join/{pending.id}",
            "poll_secret": poll_secret,
            "retry_after": settings.poll_interval,
            "message": f"waiting for an operator: `tunnel-server nodes approve {record.name}`",
        },
        status=202,
    )


async def poll_join(request: web.Request) -> web.Response:
    store, authority = request.app[STORE_KEY], request.app[AUTHORITY_KEY]
    pending = store.get_join_request(request.match_info["request"])
    scheme, _, secret = request.headers.get("Authorization", "").partition(" ")
    if pending is None:
        raise ApiError(404, "unknown_request", "no such join request: join again with a new token")
    if scheme.lower() != "bearer" or not tokens.same_hash(
        tokens.hash_secret(secret.strip()), pending.poll_hash
    ):
        raise ApiError(401, "bad_poll_secret", "wrong poll secret for this join request")
    node = store.get_node(pending.name)
    if node is None or node.state == "revoked":
        raise ApiError(403, "join_rejected", f"an operator rejected the join of {pending.name!r}")
    if pending.certificate_pem is not None:  # issued before; the answer may have been lost
        certificate = x509.load_pem_x509_certificate(pending.certificate_pem.encode())
        issued = IssuedCertificate(
            pem=pending.certificate_pem,
            serial=format(certificate.serial_number, "x"),
            name=pending.name,
            kind=pending.kind,
            not_before=certificate.not_valid_before_utc,
            not_after=certificate.not_valid_after_utc,
        )
        return web.json_response(_certificate_body(issued, authority.ca_pem()))
    if time.time() > pending.expires_at:
        raise ApiError(410, "join_expired", "approval did not come in time: join again")
    if node.state == "pending":
        settings = request.app[JOIN_SETTINGS_KEY]
        return web.json_response(
            {
                "status": "pending",
                "name": pending.name,
                "retry_after": settings.poll_interval,
                "message": f"waiting for `tunnel-server nodes approve {pending.name}`",
            },
            status=202,
        )
    issued = authority.sign_csr(
        pending.csr_pem.encode(), subject_name=pending.name, kind=pending.kind
    )
    store.issue_pending(pending.id, certificate=issued.record(), certificate_pem=issued.pem)
    log.info("approved node fetched its certificate", extra={"kv": {"name": pending.name}})
    return web.json_response(_certificate_body(issued, authority.ca_pem()))


async def renew(request: web.Request) -> web.Response:
    store, authority = request.app[STORE_KEY], request.app[AUTHORITY_KEY]
    identity = peer_identity(request)
    if identity is None:
        if peer_certificate(request) is None:
            raise ApiError(
                401, "client_certificate_required", "renew needs the current client certificate"
            )
        raise ApiError(
            403,
            "certificate_not_valid",
            "this certificate is revoked, expired or replaced: join again with a new token",
        )
    data = await read_json_object(request, limit=request.app[JOIN_SETTINGS_KEY].max_body_bytes)
    csr, wanted = _required(data, "csr"), _optional(data, "name")
    if wanted is not None and wanted != identity.name:
        raise ApiError(
            403,
            "name_mismatch",
            f"a certificate for {identity.name!r} cannot renew as {wanted!r}",
        )
    try:
        issued = authority.sign_csr(csr.encode(), subject_name=identity.name, kind=identity.kind)
    except CSRError as exc:
        raise ApiError(400, "bad_csr", str(exc)) from None
    store.record_certificate(issued.record())
    store.touch_node(identity.name, now=time.time())
    log.info(
        "renewed certificate",
        extra={"kv": {"name": identity.name, "old": identity.serial, "new": issued.serial}},
    )
    return web.json_response(_certificate_body(issued, authority.ca_pem()))


def setup(app: web.Application, *, settings: JoinSettings) -> None:
    """Mount the join API; ``app`` must already hold the store, authority and registry keys."""
    app[JOIN_SETTINGS_KEY] = settings
    app[JOIN_METRIC_KEY] = prometheus_client.Counter(
        "tunnel_server_join_requests",
        "Join, poll and renew requests by endpoint and result",
        ["endpoint", "result"],
        registry=app[REGISTRY_KEY],
    )
    app.router.add_get("/api/v1/ca", get_ca)
    app.router.add_post("/api/v1/join", _endpoint("join", join))
    app.router.add_get("/api/v1/join/{request}", _endpoint("poll", poll_join))
    app.router.add_post("/api/v1/renew", _endpoint("renew", renew))
