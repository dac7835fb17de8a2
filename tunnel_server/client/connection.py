"""Where the API is and who calls it.

From flags, ``EDGEFLEET_TOKEN``, the login config, or ``--data-dir`` (the shortcut on the
server machine: its URL, CA and admin token).

Precedence: ``--server``/``--token``/``--ca-file``/``--ca-hash`` flags, then
``EDGEFLEET_SERVER`` (as ``--server``, unless ``--data-dir``) and ``EDGEFLEET_TOKEN``, then
``--data-dir`` when given, then the login config (only for the server it was written for),
then the default data dir when this is the server machine.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import sqlite3
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tunnel_server.client import config, exits
from tunnel_server.client.http import TIMEOUT, ApiClient, pinned_context, unreachable

if TYPE_CHECKING:
    from cryptography import x509

TOKEN_ENV = "EDGEFLEET_TOKEN"  # noqa: S105 - the name of a variable, no secret
SERVER_ENV = "EDGEFLEET_SERVER"
_CA_HASH = re.compile(r"sha256:[0-9a-f]{64}")
_MAX_CA_BYTES = 64 * 1024
_STORE_FILE = "store.db"
_ADMIN_FILE = "admin-token"
_NOT_CONFIGURED = (
    "no server to talk to: log in once with `tunnel-server login --server URL --ca-hash"
    " sha256:... --token T`, or give --server URL --token T --ca-file FILE, or --data-dir DIR"
    " on the server machine"
)


@dataclass(frozen=True, kw_only=True)
class Target:
    server: str
    ca_pem: str
    token: str | None
    data_dir: Path | None = None
    """Set when the target came from ``--data-dir`` (the admin token of that server)."""

    def client(self) -> ApiClient:
        return ApiClient(server=self.server, token=self.token, context=pinned_context(self.ca_pem))


def server_url(value: str) -> str:
    """``https://HOST[:PORT]`` as typed; anything else is a usage error."""
    try:
        parts = urlsplit(value.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not 0-65535
    except ValueError:
        parts = None
    if parts is None or parts.scheme != "https" or not parts.hostname or parts.path.strip("/"):
        msg = f"expected https://HOST[:PORT] such as https://cloud.example.com:8443, got {value!r}"
        raise ValueError(msg)
    return f"https://{parts.netloc}"


def check_ca_hash(value: str) -> str:
    text = value.strip().lower()
    if not _CA_HASH.fullmatch(text):
        msg = (
            f"expected sha256: and 64 hex digits (`tunnel-server ca-hash` prints it), got {value!r}"
        )
        raise ValueError(msg)
    return text


def resolve(args: Any, *, need_token: bool = True) -> Target:  # noqa: ANN401 - argparse's Namespace
    token: str | None = getattr(args, "token", None)
    ca_file: Path | None = getattr(args, "ca_file", None)
    ca_hash: str | None = getattr(args, "ca_hash", None)
    data_dir: Path | None = getattr(args, "data_dir", None)
    server: str | None = getattr(args, "server", None) or _server_from_env(data_dir)
    base: Target | None = None
    if data_dir is not None:
        base = from_data_dir(data_dir)
    else:
        saved = config.load()
        if saved is not None and server in (None, saved.server):
            base = Target(server=saved.server, ca_pem=saved.ca_pem, token=saved.token)
        elif saved is None and server is None:
            base = _default_data_dir()
    if server is None and base is None:
        raise exits.ClientError(_NOT_CONFIGURED, exits.USAGE)
    url = server or (base.server if base else "")
    if ca_file is not None:
        ca_pem = read_ca_file(ca_file)
    elif ca_hash is not None:
        ca_pem = fetch_ca(url, ca_hash)
    elif base is not None and base.server == url:
        ca_pem = base.ca_pem
    else:
        raise exits.ClientError(
            f"no CA to check {url} with: give --ca-hash sha256:... (`tunnel-server ca-hash` on"
            " the server prints it) or --ca-file (its ca.crt), or log in to it first",
            exits.USAGE,
        )
    # --data-dir is a flag: its admin token beats the environment's; a login config does not.
    if token is None and data_dir is not None and base is not None:
        token = base.token
    token = token or os.environ.get(TOKEN_ENV) or (base.token if base is not None else None)
    if need_token and not token:
        raise exits.ClientError(
            f"no token for {url}: give --token T, set {TOKEN_ENV}, or log in first", exits.USAGE
        )
    return Target(server=url, ca_pem=ca_pem, token=token, data_dir=base.data_dir if base else None)


def _server_from_env(data_dir: Path | None) -> str | None:
    """``$EDGEFLEET_SERVER`` as if given as ``--server``; flags (``--data-dir``) win."""
    value = os.environ.get(SERVER_ENV, "").strip()
    if not value or data_dir is not None:
        return None
    try:
        return server_url(value)
    except ValueError as exc:
        raise exits.ClientError(f"${SERVER_ENV}: {exc}", exits.USAGE) from None


def read_ca_file(file: Path) -> str:
    try:
        with file.open("rb") as handle:
            data = handle.read(_MAX_CA_BYTES + 1)
    except OSError as exc:
        raise exits.ClientError(f"--ca-file {file}: {exc.strerror or exc}", exits.USAGE) from None
    if len(data) > _MAX_CA_BYTES or b"-----BEGIN CERTIFICATE-----" not in data:
        raise exits.ClientError(
            f"--ca-file {file} is no PEM certificate: give the server's ca.crt", exits.USAGE
        )
    return data.decode("ascii", "replace")


def fetch_ca(server: str, expected: str) -> str:
    """The server's CA from ``GET /api/v1/ca``, accepted only if its hash is ``expected``.

    Fetched without verification (we have nothing to verify with yet); the hash is the trust:
    a server that sends another CA is refused before any token is sent.
    """
    from tunnel_server.identity.pki import spki_hash  # noqa: PLC0415 - see above

    parts = urlsplit(server)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE  # see above: the CA's hash is checked below
    connection = http.client.HTTPSConnection(
        parts.hostname or "", parts.port or 443, timeout=TIMEOUT, context=context
    )
    with contextlib.closing(connection):
        try:
            connection.request("GET", "/api/v1/ca")
            response = connection.getresponse()
            data = response.read(_MAX_CA_BYTES + 1)
        except (OSError, http.client.HTTPException) as exc:
            raise unreachable(server, exc) from None
    try:
        certificate = _ca_certificate(response.status, data)
    except ValueError:
        raise exits.ClientError(
            f"{server}/api/v1/ca gave no CA certificate (HTTP {response.status}): is --server"
            " an EdgeFleet tunnel server?",
            exits.UNREACHABLE,
        ) from None
    actual = spki_hash(certificate)
    if actual != expected:
        raise exits.ClientError(
            f"the CA of {server} has hash {actual}, not the {expected} given: this is not the"
            " server you meant (or someone is in between); check --server and the hash"
            " (`tunnel-server ca-hash` on the server)",
            exits.UNREACHABLE,
        )
    return data.decode("ascii")


def _ca_certificate(status: int, data: bytes) -> x509.Certificate:
    from cryptography import x509  # noqa: PLC0415 - see fetch_ca

    if status != 200 or len(data) > _MAX_CA_BYTES:
        raise ValueError(status)
    return x509.load_pem_x509_certificate(data)


def from_data_dir(data_dir: Path) -> Target:
    """The running server of a data dir on this machine: its URL, CA and admin token."""
    existing = next((p for p in (data_dir, *data_dir.parents) if p.exists()), data_dir)
    if existing.exists() and not existing.is_dir():
        raise exits.ClientError(
            f"--data-dir {data_dir} is not a folder: give the server's data folder", exits.USAGE
        )
    ca_file = data_dir / "ca.crt"
    if not ca_file.exists():
        raise exits.ClientError(
            f"data dir {data_dir} has no CA: run `tunnel-server run --data-dir {data_dir}`"
            " first (management commands talk to the running server), or reach a server"
            " elsewhere with --server or `tunnel-server login`",
            exits.USAGE,
        )
    ca_pem = read_ca_file(ca_file)
    try:
        token = (data_dir / _ADMIN_FILE).read_text().strip()
    except OSError as exc:
        raise exits.ClientError(
            f"cannot read {data_dir / _ADMIN_FILE} ({exc.strerror}): run as the server's user,"
            " or use --server and --token",
            exits.USAGE,
        ) from None
    return Target(server=_public_url(data_dir), ca_pem=ca_pem, token=token, data_dir=data_dir)


def _public_url(data_dir: Path) -> str:
    """The URL ``tunnel-server run`` recorded in its store (read-only: we never write it)."""
    store = data_dir / _STORE_FILE
    if not store.exists():
        raise exits.ClientError(
            f"the server of {data_dir} has never run: start `tunnel-server run --data-dir"
            f" {data_dir}` (management commands talk to the running server)",
            exits.UNREACHABLE,
        )
    try:
        with contextlib.closing(
            sqlite3.connect(f"file:{store}?mode=ro", uri=True, timeout=5.0)
        ) as db:
            row = db.execute("SELECT value FROM meta WHERE key = 'public_url'").fetchone()
    except sqlite3.Error as exc:
        raise exits.ClientError(
            f"cannot read the server's URL from {store} ({exc}): run as the server's user, or"
            " use --server",
            exits.USAGE,
        ) from None
    if row is None:
        raise exits.ClientError(
            f"the server of {data_dir} has not recorded its URL yet: start `tunnel-server run`",
            exits.UNREACHABLE,
        )
    return str(row[0])


def _default_data_dir() -> Target | None:
    """On the server machine with no login: its default data dir, when readable."""
    from tunnel_server.settings import ServerSettings  # noqa: PLC0415 - the default only

    data_dir = ServerSettings().data_dir
    if not (data_dir / "ca.crt").exists() or not os.access(data_dir / _ADMIN_FILE, os.R_OK):
        return None
    return from_data_dir(data_dir)
