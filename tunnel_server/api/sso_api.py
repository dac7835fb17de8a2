"""SSO sign-in over OpenID Connect (authorization code + PKCE): the console's and the CLI's.

Console: ``GET /api/v1/sso/login`` sends the browser to the provider with ``state``, ``nonce``
and a PKCE S256 challenge, and sets a short-lived cookie (``edgefleet-sso``, HttpOnly, Secure,
SameSite=Lax, path ``/api/v1/sso``) whose hash is kept with the state: the callback is only
taken from the browser that started the sign-in (no login CSRF). The cookie is no credential:
the API still authenticates by bearer token only. ``GET /api/v1/sso/callback`` takes the state
once, exchanges the code with the verifier, checks the ID token (``identity/oidc.py``), maps
the person's groups to a role and cluster scope (``identity/sso_mapping.py``, first match
wins), makes or updates the SSO user (``identity/users.py``) and sends the browser to
``/#session=<console session token>`` (a fragment never reaches a server or its logs).

CLI (``tunnel-server login --sso``, ``client/sso_login.py``): the login URL also carries
``cliPort`` (the CLI's loopback listener) and ``cliChallenge`` (S256 of a secret the CLI
keeps). The callback then sends the browser to ``http://127.0.0.1:<cliPort>/callback?code=``
with a one-time code, and the CLI trades code + secret for the session at
``POST /api/v1/sso/exchange``: the session token never travels in a URL, and a code seen by
someone else is useless without the secret.

Pending sign-ins and CLI codes live in memory, bounded in number and time (``MAX_PENDING``,
``STATE_TTL``, ``CODE_TTL``): a server restart only makes people start again.
"""

from __future__ import annotations

import hashlib
import logging
import re
import secrets
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from aiohttp import web

from tunnel_server.api.views import iso
from tunnel_server.app_keys import API_SETTINGS_KEY, SIGNER_KEY, STORE_KEY
from tunnel_server.identity import oidc, sso_mapping, users
from tunnel_server.web.bodies import read_json_object, refuse_large_body
from tunnel_server.web.errors import ApiError

if TYPE_CHECKING:
    from collections.abc import AsyncIterator
    from pathlib import Path

log = logging.getLogger("tunnel_server.sso")

MAX_PENDING = 1024
"""Sign-ins started and not finished kept at once; the oldest is dropped past it, so a flood
of login starts costs bounded memory (a dropped person just starts again)."""
STATE_TTL = 600.0
"""Seconds a started sign-in may take at the provider (typing a password, a second factor)."""
CODE_TTL = 120.0
"""Seconds the CLI has to trade its one-time code: it waits on the loopback already."""
COOKIE = "edgefleet-sso"
COOKIE_PATH = "/api/v1/sso"
MAX_BODY = 4096
"""Bytes of an exchange request body: two short strings."""
_TOKEN = re.compile(r"[A-Za-z0-9_-]{43}")
_PARAM = re.compile(r"[A-Za-z0-9._~-]{1,2048}")


@dataclass(frozen=True, kw_only=True)
class _Pending:
    verifier: str
    nonce: str
    browser: str
    """SHA-256 of the browser's cookie."""
    started: float
    cli_port: int | None
    cli_challenge: str | None


@dataclass(frozen=True, kw_only=True)
class _CliCode:
    challenge: str
    session: dict[str, Any]
    made: float


class SsoService:
    """The provider and the sign-ins in progress of one server."""

    def __init__(self, config: sso_mapping.SsoConfig | None) -> None:
        self.config = config
        self.provider = None if config is None else oidc.Provider(config)
        self._pending: OrderedDict[str, _Pending] = OrderedDict()
        self._codes: OrderedDict[str, _CliCode] = OrderedDict()

    def remember(self, state: str, pending: _Pending, *, now: float) -> None:
        self._expire(now)
        self._pending[state] = pending
        while len(self._pending) > MAX_PENDING:
            self._pending.popitem(last=False)

    def take(self, state: str, *, now: float) -> _Pending | None:
        """The sign-in ``state`` started, once: a second callback with it finds nothing."""
        self._expire(now)
        return self._pending.pop(state, None)

    def remember_code(self, code: str, entry: _CliCode, *, now: float) -> None:
        self._expire(now)
        self._codes[code] = entry
        while len(self._codes) > MAX_PENDING:
            self._codes.popitem(last=False)

    def take_code(self, code: str, *, now: float) -> _CliCode | None:
        self._expire(now)
        return self._codes.pop(code, None)

    def _expire(self, now: float) -> None:
        while self._pending and next(iter(self._pending.values())).started < now - STATE_TTL:
            self._pending.popitem(last=False)
        while self._codes and next(iter(self._codes.values())).made < now - CODE_TTL:
            self._codes.popitem(last=False)


SSO_KEY = web.AppKey("sso", SsoService)


def _service(request: web.Request) -> tuple[SsoService, sso_mapping.SsoConfig, oidc.Provider]:
    service = request.app[SSO_KEY]
    if service.config is None or service.provider is None:
        raise ApiError(
            404,
            "sso_not_configured",
            "this server has no SSO sign-in: sign in with a token, or start the server with"
            " `tunnel-server run --sso-config FILE` (docs/sso.md)",
        )
    return service, service.config, service.provider


def _hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


async def sso_info(request: web.Request) -> web.Response:
    """Whether SSO sign-in is offered, and the provider's name for the sign-in button."""
    await refuse_large_body(request)
    config = request.app[SSO_KEY].config
    return web.json_response(
        {
            "enabled": config is not None,
            "providerName": None if config is None else config.provider_name,
        }
    )


async def sso_login(request: web.Request) -> web.Response:
    """Send the browser to the provider, with state, nonce and a PKCE S256 challenge."""
    await refuse_large_body(request)
    service, _config, provider = _service(request)
    cli_port, cli_challenge = _cli_params(request)
    browser = request.cookies.get(COOKIE, "")
    if not _TOKEN.fullmatch(browser):  # one cookie serves every sign-in of this browser
        browser = secrets.token_urlsafe(32)
    state, nonce = secrets.token_urlsafe(32), secrets.token_urlsafe(32)
    verifier, challenge = oidc.pkce_pair()
    try:
        location = await provider.authorization_url(state=state, nonce=nonce, challenge=challenge)
    except oidc.OidcError as exc:
        raise _provider_error(exc) from None
    now = time.time()
    service.remember(
        state,
        _Pending(
            verifier=verifier,
            nonce=nonce,
            browser=_hash(browser),
            started=now,
            cli_port=cli_port,
            cli_challenge=cli_challenge,
        ),
        now=now,
    )
    response = web.Response(status=302, headers={"Location": location})
    response.set_cookie(
        COOKIE,
        browser,
        path=COOKIE_PATH,
        max_age=int(STATE_TTL),
        secure=True,
        httponly=True,
        samesite="Lax",
    )
    log.info("sso sign-in started", extra={"kv": {"peer": request.remote, "cli": bool(cli_port)}})
    return response


def _cli_params(request: web.Request) -> tuple[int | None, str | None]:
    port, challenge = request.query.get("cliPort"), request.query.get("cliChallenge")
    if port is None and challenge is None:
        return None, None
    if (
        port is None
        or challenge is None
        or not port.isdigit()
        or not 1024 <= int(port) <= 65535
        or not _TOKEN.fullmatch(challenge)
    ):
        raise ApiError(
            400,
            "bad_request",
            "cliPort (1024-65535) and cliChallenge (43 characters, base64url of SHA-256) go"
            " together: use `tunnel-server login --sso`, which sends both",
        )
    return int(port), challenge


async def sso_callback(request: web.Request) -> web.Response:
    """Finish a sign-in: check it, map the groups, issue a session, hand it to the console/CLI."""
    await refuse_large_body(request)
    service, config, provider = _service(request)
    now = time.time()
    state = request.query.get("state", "")
    pending = service.take(state, now=now) if _PARAM.fullmatch(state) else None
    cookie = request.cookies.get(COOKIE, "")
    if pending is None or not secrets.compare_digest(_hash(cookie), pending.browser):
        log.warning("sso callback refused: unknown state", extra={"kv": {"peer": request.remote}})
        raise ApiError(
            400,
            "sso_state_invalid",
            "this sign-in is unknown, expired (10 minutes), was finished already, or was started"
            " in another browser: start again with 'Sign in with SSO'",
        )
    if "error" in request.query:
        reason = re.sub(r"[^\w .,:-]", "", request.query.get("error", ""))[:100]
        raise ApiError(
            401,
            "sso_denied",
            f"the identity provider did not sign you in ({reason}): start again, or ask its"
            " admin whether this application may be used",
        )
    code = request.query.get("code", "")
    if not _PARAM.fullmatch(code):
        raise ApiError(400, "bad_request", "the callback carries no code: start again")
    try:
        claims = await provider.exchange(code=code, verifier=pending.verifier, nonce=pending.nonce)
    except oidc.OidcError as exc:
        raise _provider_error(exc) from None
    groups = _groups(claims.get(config.groups_claim))
    hint = _hint(claims, config.username_claim)
    grant = config.grant(groups)
    if grant is None:
        log.warning(
            "sso sign-in refused: no mapped group",
            extra={"kv": {"subject": hint, "groups": groups[:20]}},
        )
        raise ApiError(
            403,
            "sso_group_unmapped",
            f"you are signed in at {config.provider_name} as {hint!r}, but none of your groups"
            f" ({', '.join(groups[:20]) or 'none'}) is mapped to a role here: ask an EdgeFleet"
            " admin to add one of them to the SSO config's groups",
        )
    session = _issue_session(request, config, claims, grant, hint=hint, now=now)
    headers = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}
    if pending.cli_port is not None and pending.cli_challenge is not None:
        one_time = secrets.token_urlsafe(32)
        service.remember_code(
            one_time, _CliCode(challenge=pending.cli_challenge, session=session, made=now), now=now
        )
        location = f"http://127.0.0.1:{pending.cli_port}/callback?code={one_time}"
    else:
        location = f"/#session={session['token']}"
    response = web.Response(status=302, headers={"Location": location, **headers})
    response.del_cookie(COOKIE, path=COOKIE_PATH, secure=True, httponly=True, samesite="Lax")
    return response


def _groups(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [g for g in value[:1000] if isinstance(g, str)]
    return []


def _hint(claims: dict[str, Any], claim: str) -> str:
    for key in (claim, "preferred_username", "email", "sub"):
        value = claims.get(key)
        if isinstance(value, str) and value.strip():
            return value.strip()[:200]
    return "user"


def _issue_session(
    request: web.Request,
    config: sso_mapping.SsoConfig,
    claims: dict[str, Any],
    grant: sso_mapping.Grant,
    *,
    hint: str,
    now: float,
) -> dict[str, Any]:
    settings = request.app[API_SETTINGS_KEY]
    name = users.sso_user_name(issuer=config.issuer, subject=str(claims["sub"]), hint=hint)
    try:
        user = users.provision_sso_user(
            request.app[STORE_KEY],
            name,
            role=grant.role,
            clusters=grant.clusters,
            now=now,
            least=settings.session_ttl,
        )
    except users.UserError as exc:  # a sign-in of the same person at the same moment
        raise ApiError(409, "sso_conflict", f"{exc}") from None
    ttl = min(settings.session_ttl, user.expires_at - now)
    token, expires = request.app[SIGNER_KEY].issue(now=now, ttl=ttl, principal=user.id)
    log.info(
        "sso sign-in",
        extra={
            "kv": {
                "peer": request.remote,
                "user": user.name,
                "role": user.role,
                "group": grant.group,
                "clusters": user.clusters,
            }
        },
    )
    return {
        "token": token,
        "expiresAt": iso(expires),
        "ttlSeconds": round(expires - now),
        "user": user.name,
        "role": user.role,
        "clusters": None if user.clusters is None else sorted(user.clusters),
    }


async def sso_exchange(request: web.Request) -> web.Response:
    """The CLI trades its one-time code and secret for the session the callback made."""
    service = request.app[SSO_KEY]
    _service(request)
    body = await read_json_object(request, limit=MAX_BODY)
    unknown = sorted(set(body) - {"code", "verifier"})
    if unknown:
        raise ApiError(
            400, "unknown_field", f"unknown field(s) {', '.join(unknown)}: send code and verifier"
        )
    code, verifier = body.get("code"), body.get("verifier")
    if not isinstance(code, str) or not isinstance(verifier, str) or len(verifier) > 128:
        raise ApiError(400, "bad_request", "send {code, verifier} as strings")
    entry = service.take_code(code, now=time.time()) if _TOKEN.fullmatch(code) else None
    if entry is None or not secrets.compare_digest(oidc.s256(verifier), entry.challenge):
        raise ApiError(
            400,
            "sso_code_invalid",
            "this sign-in code is unknown, expired (2 minutes) or used already: run"
            " `tunnel-server login --sso` again",
        )
    return web.json_response(entry.session, status=201)


def _provider_error(exc: oidc.OidcError) -> ApiError:
    log.warning("sso provider: %s", exc)
    if exc.code == "sso_code_refused":
        return ApiError(400, exc.code, str(exc))
    if exc.code == "sso_token_invalid":
        return ApiError(401, exc.code, f"{exc}: sign in again")
    return ApiError(
        502, exc.code, f"{exc}; the identity provider is unusable: try again later or tell an admin"
    )


def setup(app: web.Application, *, config_path: Path | None) -> None:
    """Mount the SSO routes; with no ``config_path`` they answer that SSO is off."""
    config = None if config_path is None else sso_mapping.load(config_path)
    service = SsoService(config)
    if config is not None:
        log.info(
            "sso sign-in enabled",
            extra={"kv": {"issuer": config.issuer, "groups": len(config.rules)}},
        )
    app[SSO_KEY] = service

    async def close_provider(_app: web.Application) -> AsyncIterator[None]:
        yield
        if service.provider is not None:
            await service.provider.close()

    app.cleanup_ctx.append(close_provider)
    app.router.add_get("/api/v1/sso", sso_info)
    app.router.add_get("/api/v1/sso/login", sso_login)
    app.router.add_get("/api/v1/sso/callback", sso_callback)
    app.router.add_post("/api/v1/sso/exchange", sso_exchange)
