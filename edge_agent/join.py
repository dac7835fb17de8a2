"""``edge-agent join`` and certificate renewal, over HTTPS to the tunnel server.

Trust on first use, done safely (kubeadm's discovery-token-ca-cert-hash): the one request made
without verification fetches the CA certificate, whose public-key hash must equal the
``--ca-hash`` the operator copied from ``tunnel-server ca-hash``. From then on every request
trusts exactly that CA. There is no fallback to the system trust store (CVE-2024-22030).

The private key is made here and never leaves the machine: the server only sees a CSR. While a
join waits for approval, the key and the poll secret wait in ``pending.key``/``pending.json``
(0600), so running the same ``join`` again resumes instead of needing a new token.
"""

from __future__ import annotations

import asyncio
import hmac
import json
import logging
import os
import socket
import ssl
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import aiohttp

from daemon_support.files import write_atomic
from edge_agent import __version__
from edge_agent.identity import (
    NEXT_CA_FILE,
    Identity,
    generate_key,
    key_pem,
    load_key,
    make_csr,
    pinned_ssl_context,
    save_identity,
    spki_hash,
    validate_ca_hash,
    validate_name,
)
from edge_agent.settings import JoinSettings

if TYPE_CHECKING:
    from pathlib import Path

    from cryptography import x509
    from cryptography.hazmat.primitives.asymmetric import ec

# cryptography (about 8 MiB of RSS) is imported by the functions that parse certificates:
# `edge-agent run` imports this module (the tunnel client renews through it) and must not pay
# for it before a join or renewal happens (issue 18).

log = logging.getLogger("edge_agent.join")

PENDING_KEY = "pending.key"
PENDING_FILE = "pending.json"
_TOKEN_ERRORS = {"invalid_token", "token_expired", "token_used"}


class JoinError(Exception):
    """Join or renewal failed; ``exit_code`` is what ``edge-agent join`` exits with."""

    exit_code = 1


class UsageError(JoinError):
    exit_code = 2


class TrustError(JoinError):
    """The server is not the one pinned: wrong CA hash or a certificate the CA did not sign."""

    exit_code = 3


class TokenRejectedError(JoinError):
    exit_code = 4


class NameConflictError(JoinError):
    exit_code = 5


class UnreachableError(JoinError, OSError):
    exit_code = 6


class ApprovalTimeoutError(JoinError, TimeoutError):
    exit_code = 7


class JoinRejectedError(JoinError):
    exit_code = 8


EXIT_CODES = """\
exit codes:
  0  joined: key, certificate and pinned CA stored in the data dir
  1  unexpected error
  2  bad arguments (URL, hash format, name, a --data-dir that is not a folder)
  3  the server is not the pinned one: wrong --ca-hash or certificate not from that CA
  4  token rejected: unknown, expired or already used
  5  name conflict: the name is taken, or the token is for another name
  6  server unreachable
  7  still waiting for approval: approve it, then run the same command again to resume
  8  the join was rejected (node revoked) or expired while pending
130  interrupted (Ctrl-C); a join that waits for approval resumes when run again
"""
INTERRUPTED = 130
"""Exit code after Ctrl-C (SIGINT): 128 + the signal's number, as shells report it."""


@dataclass(frozen=True, kw_only=True)
class JoinOptions:
    server: str
    """Base URL, ``https://HOST[:PORT]``."""
    token: str
    ca_hash: str
    name: str
    data_dir: Path
    wait_approval: float
    """Seconds to wait for an operator's approval before giving up (resumable)."""


def normalize_server(url: str) -> str:
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "https://" + url
    example = "https://cloud:8443"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        raise UsageError(f"--server must be an https:// URL such as {example}, got {url}") from None
    if parts.scheme != "https" or not parts.hostname or parts.username is not None:
        raise UsageError(f"--server must be an https:// URL such as {example}, got {url}")
    if parts.path or parts.query or parts.fragment:
        raise UsageError(f"--server takes no path: https://{parts.netloc}")
    return f"https://{parts.netloc}"


def describe_error(error: BaseException) -> str:
    """One line for an HTTP client failure: aiohttp's own text shows the SSLContext's repr."""
    if isinstance(error, aiohttp.ClientConnectorError):
        return f"cannot connect to {error.host}:{error.port}: {_os_reason(error.os_error)}"
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, OSError):
        return _os_reason(error)
    return str(error) or type(error).__name__


def _os_reason(error: OSError) -> str:
    if isinstance(error, ssl.SSLError):
        return f"TLS failed: {error.reason or error}"
    if isinstance(error, socket.gaierror):  # its errno is not an errno: -2 and the like
        return f"cannot resolve the host name: {error.strerror}"
    if error.errno:
        where = f" ({error.filename})" if error.filename else ""
        return os.strerror(error.errno).lower() + where
    return str(error) or type(error).__name__


def check_data_dir(data_dir: Path) -> None:
    """Refuse, before anything is sent, a data dir that cannot hold the key and certificate."""
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), data_dir)
    if existing.exists() and not existing.is_dir():
        raise UsageError(f"--data-dir {data_dir} is not a folder: {existing} is a file")


def _timeout(settings: JoinSettings) -> aiohttp.ClientTimeout:
    return aiohttp.ClientTimeout(
        total=settings.request_timeout, sock_connect=settings.connect_timeout
    )


async def _read_limited(response: aiohttp.ClientResponse, limit: int) -> bytes:
    body = bytearray()
    async for chunk in response.content.iter_chunked(16 * 1024):
        body += chunk
        if len(body) > limit:
            raise JoinError(f"the server's answer is over {limit} bytes")
    return bytes(body)


async def fetch_ca(server: str, *, settings: JoinSettings) -> bytes:
    """GET the CA certificate WITHOUT verifying TLS: the caller must check it by hash."""
    unverified = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    unverified.check_hostname = False
    unverified.verify_mode = ssl.CERT_NONE  # only for this one GET; the hash check follows
    try:
        async with (
            aiohttp.ClientSession(timeout=_timeout(settings)) as session,
            session.get(f"{server}/api/v1/ca", ssl=unverified) as response,
        ):
            body = await _read_limited(response, settings.max_response_bytes)
            status = response.status
    except (aiohttp.ClientError, TimeoutError) as exc:
        raise UnreachableError(f"cannot reach {server}: {describe_error(exc)}") from None
    if status != 200:
        raise JoinError(f"{server} answered {status} for its CA: is it tunnel-server?")
    return body


def verify_ca(ca_pem: bytes, expected_hash: str) -> x509.Certificate:
    """Parse the fetched CA and check it against the pinned hash; raise TrustError if not it."""
    from cryptography import x509  # noqa: PLC0415 - see the imports on top

    try:
        certificate = x509.load_pem_x509_certificate(ca_pem)
    except ValueError:
        raise TrustError(
            "the server's CA is not a PEM certificate: is this tunnel-server?"
        ) from None
    if not hmac.compare_digest(spki_hash(certificate), expected_hash):
        raise TrustError(
            "the server's CA does not match --ca-hash: you may be talking to the wrong server"
            " or to an impostor. Check the URL and copy the hash again from"
            " `tunnel-server ca-hash` on the server. Nothing was sent."
        )
    try:
        constraints = certificate.extensions.get_extension_for_class(x509.BasicConstraints)
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is None or not constraints.value.ca:
        raise TrustError("the pinned certificate is not a CA certificate")
    return certificate


class _Client:
    """Requests to one server over a pinned TLS context, errors mapped to JoinError types."""

    def __init__(
        self,
        session: aiohttp.ClientSession,
        server: str,
        context: ssl.SSLContext,
        settings: JoinSettings,
    ) -> None:
        self.session = session
        self.server = server
        self.context = context
        self.settings = settings

    async def request(
        self,
        method: str,
        path: str,
        *,
        body: dict[str, str] | None = None,
        headers: dict[str, str] | None = None,
    ) -> tuple[int, dict[str, Any]]:
        try:
            async with self.session.request(
                method, self.server + path, json=body, headers=headers, ssl=self.context
            ) as response:
                raw = await _read_limited(response, self.settings.max_response_bytes)
                status = response.status
        except aiohttp.ClientConnectorCertificateError as exc:
            raise TrustError(
                f"{self.server} presented a certificate the pinned CA did not issue for this"
                f" host name ({exc.certificate_error}). Nothing was sent."
            ) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise UnreachableError(f"cannot reach {self.server}: {describe_error(exc)}") from None
        try:
            data = json.loads(raw)
        except ValueError:
            data = None
        if not isinstance(data, dict):
            raise JoinError(f"{self.server}{path} answered {status} without a JSON object")
        return status, data


def _raise_for(status: int, data: dict[str, Any]) -> None:
    # The server answers errors as RFC 9457 problem details (docs/api.md).
    code, message = str(data.get("reason", "")), str(data.get("detail", ""))
    if code in _TOKEN_ERRORS:
        raise TokenRejectedError(message)
    if status == 409:
        raise NameConflictError(message)
    if code in ("join_rejected", "join_expired", "unknown_request"):
        raise JoinRejectedError(message)
    if code in ("certificate_not_valid", "client_certificate_required"):
        raise TrustError(message)
    raise JoinError(f"server answered {status}: {code or 'error'}: {message}")


def check_issued(
    data: dict[str, Any], key: ec.EllipticCurvePrivateKey, name: str, ca: x509.Certificate
) -> bytes:
    """The issued certificate, after checking it is ours: our key, our name, the pinned CA."""
    from cryptography import x509  # noqa: PLC0415 - see the imports on top
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415
    from cryptography.x509.oid import NameOID  # noqa: PLC0415

    pem = str(data.get("certificate", "")).encode()
    try:
        certificate = x509.load_pem_x509_certificate(pem)
        certificate.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise JoinError(f"the server's certificate is not usable: {exc}") from None
    ours = key.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    theirs = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    names = certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if ours != theirs or [str(n.value) for n in names] != [name]:
        raise JoinError("the server issued a certificate for another key or name")
    return pem


@dataclass(frozen=True, kw_only=True)
class _Pending:
    server: str
    name: str
    ca_hash: str
    poll: str
    poll_secret: str

    def save(self, data_dir: Path) -> None:
        body = json.dumps(self.__dict__, indent=2).encode()
        write_atomic(data_dir / PENDING_FILE, body, mode=0o600)

    @classmethod
    def load(cls, data_dir: Path) -> _Pending | None:
        try:
            return cls(**json.loads((data_dir / PENDING_FILE).read_text()))
        except (FileNotFoundError, ValueError, TypeError):
            return None


def _clear_pending(data_dir: Path) -> None:
    (data_dir / PENDING_FILE).unlink(missing_ok=True)
    (data_dir / PENDING_KEY).unlink(missing_ok=True)


async def join(
    options: JoinOptions,
    *,
    settings: JoinSettings,
    progress: Callable[[str], None] = lambda _message: None,
) -> Identity:
    """Join the server as ``options.name``; return the stored identity. See module docs."""
    server = normalize_server(options.server)
    try:
        ca_hash = validate_ca_hash(options.ca_hash)
        name = validate_name(options.name)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    check_data_dir(options.data_dir)
    progress(f"fetching the CA of {server} to check it against --ca-hash")
    ca_pem = await fetch_ca(server, settings=settings)
    ca = verify_ca(ca_pem, ca_hash)
    options = replace(options, server=server, ca_hash=ca_hash, name=name)
    options.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    async with aiohttp.ClientSession(timeout=_timeout(settings)) as session:
        client = _Client(session, server, pinned_ssl_context(ca_pem=ca_pem), settings)
        resumable = _Pending.load(options.data_dir)
        if resumable is not None and (resumable.server, resumable.name) == (server, name):
            progress(f"resuming the join of {name} that waits for approval")
            key = load_key(options.data_dir / PENDING_KEY)
            data = await _wait_for_approval(client, resumable, options, progress)
        else:
            key = generate_key()
            data = await _start(client, key, options, progress)
        kind = str(data.get("kind", "node"))
        certificate_pem = check_issued(data, key, name, ca)
    # A new pin: a next CA announced by whatever server this node joined before goes.
    (options.data_dir / NEXT_CA_FILE).unlink(missing_ok=True)
    identity = save_identity(
        options.data_dir,
        server=server,
        kind=kind,
        ca_hash=ca_hash,
        key=key,
        certificate_pem=certificate_pem,
        ca_pem=ca_pem,
    )
    _clear_pending(options.data_dir)
    log.info(
        "joined", extra={"kv": {"name": name, "server": server, "expires": identity.not_after}}
    )
    return identity


async def _start(
    client: _Client,
    key: ec.EllipticCurvePrivateKey,
    options: JoinOptions,
    progress: Callable[[str], None],
) -> dict[str, Any]:
    """Send the token and the CSR; wait for approval if the token requires it."""
    status, data = await client.request(
        "POST",
        "/api/v1/join",
        body={
            "token": options.token,
            "csr": make_csr(key, options.name).decode(),
            "name": options.name,
            "agent_version": __version__,
        },
    )
    if status == 200:
        return data
    if status != 202:
        _raise_for(status, data)
    write_atomic(options.data_dir / PENDING_KEY, key_pem(key), mode=0o600)
    pending = _Pending(
        server=options.server,
        name=options.name,
        ca_hash=options.ca_hash,
        poll=str(data["poll"]),
        poll_secret=str(data["poll_secret"]),
    )
    pending.save(options.data_dir)
    progress(str(data.get("message", "waiting for approval")))
    return await _wait_for_approval(client, pending, options, progress)


async def _wait_for_approval(
    client: _Client, pending: _Pending, options: JoinOptions, progress: Callable[[str], None]
) -> dict[str, Any]:
    started = time.monotonic()
    deadline = started + options.wait_approval
    headers = {"Authorization": f"Bearer {pending.poll_secret}"}
    while True:
        try:
            status, data = await client.request("GET", pending.poll, headers=headers)
        except JoinRejectedError:
            _clear_pending(options.data_dir)
            raise
        if status == 200:
            return data
        if status != 202:
            if status in (403, 404, 410):
                _clear_pending(options.data_dir)
            _raise_for(status, data)
        waited = time.monotonic() - started
        progress(
            f"waiting for approval of {pending.name} ({waited:.0f}s of {options.wait_approval:g}s):"
            f" on the server run `tunnel-server nodes approve {pending.name}`"
        )
        if time.monotonic() >= deadline:
            raise ApprovalTimeoutError(
                f"{pending.name} is still waiting for approval after {options.wait_approval:g}s."
                f" Approve it with `tunnel-server nodes approve {pending.name}`, then run the"
                " same `edge-agent join` again: it resumes without using the token again"
            )
        retry = float(data.get("retry_after", client.settings.min_poll_interval))
        retry = min(
            max(retry, client.settings.min_poll_interval), client.settings.max_poll_interval
        )
        await asyncio.sleep(min(retry, max(deadline - time.monotonic(), 0.0)))


RenewTransport = Callable[[bytes], Awaitable[dict[str, Any]]]
"""Carries a CSR (PEM) to the server and returns its answer: a JSON object holding the issued
``certificate``. Raises JoinError (or its own transport's errors) when the server refuses."""


async def renew_certificate(identity: Identity, send_csr: RenewTransport, *, via: str) -> Identity:
    """The one renewal path, whatever carries it (``via`` names the transport in the log).

    A new key (never the old one again), its CSR handed to ``send_csr``, the issued
    certificate checked as at join (our key, our name, the pinned CA, or during a CA rotation
    the announced next CA: then that one becomes the pin), then saved as the current
    identity. The CAs are read before anything is sent: a data dir whose CA cannot be read
    must not make the server issue a certificate that is then thrown away.
    """
    from cryptography.hazmat.primitives import serialization  # noqa: PLC0415 - see the top

    key = generate_key()
    anchors = identity.trusted_cas()
    answer = await send_csr(make_csr(key, identity.name))
    ca = _issuer(answer, anchors)
    certificate_pem = check_issued(answer, key, identity.name, ca)
    ca_hash = spki_hash(ca)
    renewed = save_identity(
        identity.data_dir,
        server=identity.server,
        kind=identity.kind,
        ca_hash=ca_hash,
        key=key,
        certificate_pem=certificate_pem,
        ca_pem=ca.public_bytes(serialization.Encoding.PEM),
    )
    if ca_hash != identity.ca_hash:
        # Only the announced next CA, which the pinned one endorsed, can get here.
        log.warning("CA rotation: this node now pins %s (was %s)", ca_hash, identity.ca_hash)
    log.info("certificate renewed %s, valid until %s", via, renewed.not_after.isoformat())
    return renewed


def _issuer(answer: dict[str, Any], anchors: list[x509.Certificate]) -> x509.Certificate:
    """Which trusted CA signed the issued certificate (the pinned one, else the next one)."""
    from cryptography import x509  # noqa: PLC0415 - see the imports on top
    from cryptography.exceptions import InvalidSignature  # noqa: PLC0415

    try:
        certificate = x509.load_pem_x509_certificate(str(answer.get("certificate", "")).encode())
    except ValueError as exc:
        raise JoinError(f"the server's certificate is not usable: {exc}") from None
    for anchor in anchors:
        try:
            certificate.verify_directly_issued_by(anchor)
        except (ValueError, TypeError, InvalidSignature):
            continue
        return anchor
    return anchors[0]  # check_issued says why it does not verify


async def renew(identity: Identity, *, settings: JoinSettings) -> Identity:
    """Renew over HTTPS: ``POST /api/v1/renew`` over mTLS with the current certificate."""
    async with aiohttp.ClientSession(timeout=_timeout(settings)) as session:
        client = _Client(session, identity.server, identity.client_ssl_context(), settings)

        async def post_csr(csr: bytes) -> dict[str, Any]:
            status, data = await client.request("POST", "/api/v1/renew", body={"csr": csr.decode()})
            if status != 200:
                _raise_for(status, data)
            return data

        return await renew_certificate(identity, post_csr, via="over HTTPS")
