"""An OpenID Connect relying party: discovery, the code exchange, ID token checks.

Only the authorization code flow with PKCE (S256) is spoken. The provider's discovery
document and JWKS are fetched on first use and kept (the JWKS fetched again, at most once a
minute, when a token names a key it does not hold: key rotation). An ID token is accepted only
if its signature verifies with a key of the issuer's JWKS under an asymmetric algorithm, and
``iss``, ``aud`` (and ``azp`` when several audiences), ``exp``, ``iat`` and ``nonce`` are right.
Every answer read from the provider is bounded (``MAX_ANSWER``) and timed out (``TIMEOUT``).
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import secrets
import ssl
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

import aiohttp
import jwt

if TYPE_CHECKING:
    from tunnel_server.identity.sso_mapping import SsoConfig

log = logging.getLogger("tunnel_server.sso")

MAX_ANSWER = 256 * 1024
"""Largest discovery document, JWKS or token answer read, in bytes (real ones are a few KiB)."""
TIMEOUT = 10.0
"""Seconds for one call to the provider: the person is waiting in the browser."""
JWKS_REFRESH = 60.0
"""Least seconds between two JWKS fetches for an unknown key id, so forged key ids cannot make
us hammer the provider."""
LEEWAY = 60.0
"""Seconds of clock skew allowed between the provider and us on ``exp``/``iat``."""
_ALGORITHMS = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"]


class OidcError(Exception):
    """The provider could not be used or its answer is not acceptable; ``code`` is the reason."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code


def pkce_pair() -> tuple[str, str]:
    """A PKCE code verifier (43 characters, 256 bits) and its S256 challenge."""
    verifier = secrets.token_urlsafe(32)
    return verifier, s256(verifier)


def s256(verifier: str) -> str:
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).decode("ascii").rstrip("=")


@dataclass(frozen=True, kw_only=True)
class Endpoints:
    authorization: str
    token: str
    jwks: str


class Provider:
    """One configured OpenID provider; ``close()`` when the server stops."""

    def __init__(self, config: SsoConfig) -> None:
        self.config = config
        self._endpoints: Endpoints | None = None
        self._keys: dict[str, jwt.PyJWK] = {}
        self._keys_fetched = 0.0
        self._session: aiohttp.ClientSession | None = None

    def _client(self) -> aiohttp.ClientSession:
        if self._session is None:
            context = ssl.create_default_context(
                cafile=None if self.config.ca_file is None else str(self.config.ca_file)
            )
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(ssl=context, limit=16),
                timeout=aiohttp.ClientTimeout(total=TIMEOUT),
            )
        return self._session

    async def close(self) -> None:
        if self._session is not None:
            await self._session.close()

    async def _get_json(self, url: str) -> dict[str, Any]:
        try:
            async with self._client().get(url, allow_redirects=False) as response:
                body = await response.content.read(MAX_ANSWER + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OidcError(
                "sso_provider_unreachable", f"cannot reach {url}: {_why(exc)}"
            ) from None
        return _decode(url, status, body)

    async def endpoints(self) -> Endpoints:
        if self._endpoints is None:
            url = self.config.issuer.rstrip("/") + "/.well-known/openid-configuration"
            doc = await self._get_json(url)
            if doc.get("issuer") != self.config.issuer:
                raise OidcError(
                    "sso_provider_invalid",
                    f"the provider's discovery document names issuer {doc.get('issuer')!r}, not"
                    f" {self.config.issuer!r}: set issuer in the SSO config to exactly its value",
                )
            fields = ("authorization_endpoint", "token_endpoint", "jwks_uri")
            if not all(isinstance(doc.get(f), str) for f in fields):
                raise OidcError("sso_provider_invalid", f"{url} lacks one of {', '.join(fields)}")
            self._endpoints = Endpoints(
                authorization=doc["authorization_endpoint"],
                token=doc["token_endpoint"],
                jwks=doc["jwks_uri"],
            )
        return self._endpoints

    async def authorization_url(self, *, state: str, nonce: str, challenge: str) -> str:
        endpoints = await self.endpoints()
        query = urlencode(
            {
                "response_type": "code",
                "client_id": self.config.client_id,
                "redirect_uri": self.config.redirect_url,
                "scope": " ".join(self.config.scopes),
                "state": state,
                "nonce": nonce,
                "code_challenge": challenge,
                "code_challenge_method": "S256",
            }
        )
        separator = "&" if "?" in endpoints.authorization else "?"
        return f"{endpoints.authorization}{separator}{query}"

    async def exchange(self, *, code: str, verifier: str, nonce: str) -> dict[str, Any]:
        """The checked ID token claims for an authorization ``code``; OidcError if refused."""
        endpoints = await self.endpoints()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": self.config.redirect_url,
            "code_verifier": verifier,
        }
        auth = aiohttp.BasicAuth(self.config.client_id, self.config.client_secret)
        try:
            async with self._client().post(
                endpoints.token, data=form, auth=auth, allow_redirects=False
            ) as response:
                body = await response.content.read(MAX_ANSWER + 1)
                status = response.status
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise OidcError(
                "sso_provider_unreachable",
                f"cannot reach {endpoints.token}: {_why(exc)}",
            ) from None
        if status != 200:
            log.warning("token endpoint refused the code: %s %s", status, body[:300])
            raise OidcError(
                "sso_code_refused",
                "the identity provider refused the sign-in code (used already, expired, or not"
                " ours): sign in again from the start",
            )
        answer = _decode(endpoints.token, status, body)
        id_token = answer.get("id_token")
        if not isinstance(id_token, str):
            raise OidcError("sso_provider_invalid", "the token answer holds no id_token")
        return await self.check_id_token(id_token, nonce=nonce)

    async def check_id_token(self, id_token: str, *, nonce: str) -> dict[str, Any]:
        try:
            header = jwt.get_unverified_header(id_token)
        except jwt.PyJWTError as exc:
            raise OidcError("sso_token_invalid", f"the ID token is malformed: {exc}") from None
        key = await self._key(header.get("kid"))
        if header.get("alg") not in _ALGORITHMS:
            raise OidcError("sso_token_invalid", f"ID token algorithm {header.get('alg')!r}")
        try:
            claims: dict[str, Any] = jwt.decode(
                id_token,
                key=key,
                algorithms=_ALGORITHMS,
                audience=self.config.client_id,
                issuer=self.config.issuer,
                leeway=LEEWAY,
                options={"require": ["exp", "iat", "iss", "aud", "sub"]},
            )
        except jwt.PyJWTError as exc:
            raise OidcError("sso_token_invalid", f"the ID token is not acceptable: {exc}") from None
        audiences = claims["aud"] if isinstance(claims["aud"], list) else [claims["aud"]]
        if len(audiences) > 1 and claims.get("azp") != self.config.client_id:
            raise OidcError("sso_token_invalid", "the ID token is for another party (azp)")
        if not isinstance(claims.get("nonce"), str) or not secrets.compare_digest(
            claims["nonce"], nonce
        ):
            raise OidcError("sso_token_invalid", "the ID token's nonce is not this sign-in's")
        return claims

    async def _key(self, kid: object) -> jwt.PyJWK:
        if not isinstance(kid, str) and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        if isinstance(kid, str) and kid in self._keys:
            return self._keys[kid]
        now = time.monotonic()
        if not self._keys or now - self._keys_fetched >= JWKS_REFRESH:
            self._keys_fetched = now
            endpoints = await self.endpoints()
            self._keys = _keys(await self._get_json(endpoints.jwks))
        if isinstance(kid, str) and kid in self._keys:
            return self._keys[kid]
        if kid is None and len(self._keys) == 1:
            return next(iter(self._keys.values()))
        raise OidcError("sso_token_invalid", f"the ID token's key {kid!r} is not the issuer's")


def _why(exc: BaseException) -> str:
    """The error's text, or its type's name when it has none (a timeout)."""
    return str(exc) or type(exc).__name__


def _decode(url: str, status: int, body: bytes) -> dict[str, Any]:
    if len(body) > MAX_ANSWER:
        raise OidcError("sso_provider_invalid", f"{url} answered more than {MAX_ANSWER} bytes")
    if status != 200:
        raise OidcError("sso_provider_invalid", f"{url} answered HTTP {status}")
    try:
        doc = json.loads(body)
    except ValueError:
        raise OidcError("sso_provider_invalid", f"{url} did not answer JSON") from None
    if not isinstance(doc, dict):
        raise OidcError("sso_provider_invalid", f"{url} did not answer a JSON object")
    return doc


def _keys(jwks: dict[str, Any]) -> dict[str, jwt.PyJWK]:
    keys: dict[str, jwt.PyJWK] = {}
    for index, entry in enumerate(jwks.get("keys") or []):
        if not isinstance(entry, dict) or entry.get("use", "sig") != "sig":
            continue
        try:
            key = jwt.PyJWK.from_dict(entry)
        except jwt.PyJWTError:
            continue  # a key type we do not use
        keys[str(entry.get("kid", index))] = key
    if not keys:
        raise OidcError("sso_provider_invalid", "the provider's JWKS holds no usable signing key")
    return keys
