"""One kubeconfig loader for both daemons: where an API server is and how to authenticate.

Used by the agent's kube proxy (``[kube]``), its cluster mode (``[cluster]``) and the cloud
server's ``--kube-upstream``; the official ``kubernetes`` client is not needed to run either
daemon (it stays in the test extras as an independent client).

Two steps, so the parsing can be tested without files:

* :func:`parse_kubeconfig` (sans-IO): YAML bytes to a :class:`KubeconfigEntry` (the chosen
  context's server, TLS material and user credential, as written), validated;
  :func:`read_kubeconfig` reads the file (bounded) and parses it; :func:`in_cluster_entry`
  builds the same entry from a pod's service account and ``KUBERNETES_SERVICE_HOST``/``_PORT``.
* :func:`credentials`: an entry to :class:`Credentials` (an ``ssl.SSLContext`` and an
  ``Authorization`` value computed at each request).

The rules:

* every input is bounded: the kubeconfig (1 MiB), a token file (64 KiB), each certificate,
  key or CA file (1 MiB); errors are :class:`KubeconfigError` saying which field to fix;
* a ``tokenFile`` (and the service account's ``token``) is read again at most every
  ``token_reload`` seconds: projected service account tokens rotate (about hourly) and an
  outside refresher may rewrite the file; a token read once expires into 401s;
* credential plugins (``exec``, ``auth-provider``) are refused by both daemons. The cluster
  agent holds credentials that may impersonate cloud users and must know whom it gives them
  to; the cloud server would have to run a command named by a config file, blocking, on the
  request path, whenever the token expires. Give a ``tokenFile`` that something outside the
  daemon keeps fresh (for example a systemd timer running ``aws eks get-token``) instead;
* ``insecure-skip-tls-verify`` is honoured only when the caller says so (``allow_insecure``);
  the cluster agent refuses it;
* relative paths in a kubeconfig are relative to the kubeconfig's folder, as in kubectl;
* PyYAML is imported when a kubeconfig is parsed, not with this module: a daemon that never
  reads one (in-cluster, or no ``[kube]``) does not load it (issue 18).
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import os
import ssl
import tempfile
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

__all__ = [
    "IN_CLUSTER_DIR",
    "MAX_KUBECONFIG_BYTES",
    "MAX_PEM_BYTES",
    "MAX_TOKEN_BYTES",
    "Credentials",
    "KubeconfigEntry",
    "KubeconfigError",
    "Material",
    "TokenSource",
    "credentials",
    "in_cluster_entry",
    "load_in_cluster",
    "load_kubeconfig",
    "parse_kubeconfig",
    "read_kubeconfig",
]

MAX_KUBECONFIG_BYTES = 1024 * 1024
"""A kubeconfig with a few embedded certificates is a few KB; this much is not one."""
MAX_TOKEN_BYTES = 64 * 1024
"""A service account token (a JWT) is about 1 KB."""
MAX_PEM_BYTES = 1024 * 1024
"""A CA bundle of the whole public web is about 250 KB; a certificate or key a few KB."""
MAX_SERVER_CHARS = 2048
"""An API server URL; longer is a mistake (a pasted file), not an address."""
IN_CLUSTER_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
"""Where Kubernetes mounts a pod's service account (``token``, ``ca.crt``, ``namespace``)."""
PLUGINS = ("exec", "auth-provider")
"""User credential plugins: refused (see the module docstring)."""


class KubeconfigError(ValueError):
    """The kubeconfig (or service account) cannot be used: the message says what to fix."""


@dataclass(frozen=True, kw_only=True)
class Material:
    """A PEM certificate or key, either a file or bytes given inline (``...-data``)."""

    path: Path | None = None
    data: bytes | None = None


@dataclass(frozen=True, kw_only=True)
class KubeconfigEntry:
    """The chosen context's cluster and user, as written (no file is read to make one)."""

    source: str
    """Where it came from (``kubeconfig /path`` or ``service account /dir``), for messages."""
    server: str
    """``http(s)://host[:port][/prefix]`` without a trailing slash."""
    certificate_authority: Material | None = None
    insecure_skip_tls_verify: bool = False
    client_certificate: Material | None = None
    client_key: Material | None = None
    token: str = ""
    token_file: Path | None = None
    username: str = ""
    password: str = ""
    plugin: str = ""
    """``exec`` or ``auth-provider`` when the user has a credential plugin (refused later)."""

    @property
    def has_credential(self) -> bool:
        """Whether the user names any credential (a token, a certificate, basic auth)."""
        return bool(
            self.token
            or self.token_file
            or self.client_certificate
            or self.client_key
            or self.username
            or self.plugin
        )


def _named(items: object, name: str, what: str, source: str) -> dict[str, Any]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if isinstance(body, dict):
                return body
            raise KubeconfigError(f"{source}: the {what} named {name!r} is not a mapping")
    raise KubeconfigError(f"{source} has no {what} named {name!r}")


def _text(entry: dict[str, Any], key: str, source: str) -> str:
    value = entry.get(key)
    if value is None:
        return ""
    if not isinstance(value, str | int | float) or isinstance(value, bool):
        raise KubeconfigError(f"{source}: {key} must be a string")
    return str(value)


def _material(entry: dict[str, Any], key: str, base: Path, source: str) -> Material | None:
    """``key`` (a file, relative to ``base``) or ``key-data`` (base64 PEM) of an entry."""
    data = _text(entry, f"{key}-data", source)
    if data:
        if len(data) > MAX_PEM_BYTES * 4 // 3 + 4:
            raise KubeconfigError(f"{source}: {key}-data is larger than {MAX_PEM_BYTES} bytes")
        try:
            return Material(data=base64.b64decode(data, validate=True))
        except (binascii.Error, ValueError):
            raise KubeconfigError(f"{source}: {key}-data is not base64") from None
    path = _text(entry, key, source)
    return Material(path=(base / path).resolve()) if path else None


def _check_server(server: str, source: str) -> str:
    server = server.strip().rstrip("/")
    if not server:
        raise KubeconfigError(f"{source}: the cluster has no server")
    if len(server) > MAX_SERVER_CHARS:
        raise KubeconfigError(f"{source}: the server URL is longer than {MAX_SERVER_CHARS}")
    parts = urlsplit(server)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise KubeconfigError(f"{source}: the server must be an http(s):// URL, got {server!r}")
    try:
        _ = parts.port
    except ValueError:
        raise KubeconfigError(f"{source}: bad port in the server URL {server!r}") from None
    return server


def parse_kubeconfig(
    data: bytes, *, base: Path, context: str | None = None, source: str = "kubeconfig"
) -> KubeconfigEntry:
    """The entry of ``context`` (else ``current-context``) in a kubeconfig's bytes.

    ``base`` is the folder relative file names are resolved against (the kubeconfig's own);
    ``source`` names the kubeconfig in error messages. No file is read.
    """
    if len(data) > MAX_KUBECONFIG_BYTES:
        raise KubeconfigError(f"{source} is larger than {MAX_KUBECONFIG_BYTES} bytes")
    import yaml  # noqa: PLC0415 - see the rules on top

    try:
        config = yaml.safe_load(data)
    except yaml.YAMLError as error:
        reason = " ".join(str(error).split())
        raise KubeconfigError(f"{source} is not YAML: {reason}") from None
    if not isinstance(config, dict):
        raise KubeconfigError(f"{source} is not a kubeconfig (not a mapping)")
    chosen = context or config.get("current-context")
    if not chosen:
        raise KubeconfigError(f"{source} has no current-context; name a context")
    ctx = _named(config.get("contexts"), str(chosen), "context", source)
    cluster = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster", source)
    user_name = ctx.get("user")
    user = _named(config.get("users"), str(user_name), "user", source) if user_name else {}
    token_file = _text(user, "tokenFile", source)
    return KubeconfigEntry(
        source=source,
        server=_check_server(_text(cluster, "server", source), source),
        certificate_authority=_material(cluster, "certificate-authority", base, source),
        insecure_skip_tls_verify=cluster.get("insecure-skip-tls-verify") is True,
        client_certificate=_material(user, "client-certificate", base, source),
        client_key=_material(user, "client-key", base, source),
        token=_text(user, "token", source).strip(),
        token_file=(base / token_file).resolve() if token_file else None,
        username=_text(user, "username", source),
        password=_text(user, "password", source),
        plugin=next((name for name in PLUGINS if user.get(name)), ""),
    )


def _read_bounded(path: Path, limit: int, what: str) -> bytes:
    try:
        with path.open("rb") as file:
            data = file.read(limit + 1)
    except OSError as error:
        raise KubeconfigError(f"cannot read {what} {path}: {error.strerror}") from None
    if len(data) > limit:
        raise KubeconfigError(f"{what} {path} is larger than {limit} bytes")
    return data


def read_kubeconfig(path: Path, *, context: str | None = None) -> KubeconfigEntry:
    """Read (at most 1 MiB) and parse the kubeconfig at ``path``."""
    data = _read_bounded(path, MAX_KUBECONFIG_BYTES, "kubeconfig")
    return parse_kubeconfig(data, base=path.parent, context=context, source=f"kubeconfig {path}")


def in_cluster_entry(
    *, service_account_dir: Path = IN_CLUSTER_DIR, environ: Mapping[str, str] | None = None
) -> KubeconfigEntry:
    """The entry of a pod's own service account, as client-go's in-cluster config builds it."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST", "")
    port = env.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise KubeconfigError(
            "in-cluster config needs KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT: "
            "the daemon is not running in a pod; give a kubeconfig instead"
        )
    try:
        bracketed = f"[{host}]" if ipaddress.ip_address(host).version == 6 else host
    except ValueError:
        bracketed = host
    source = f"service account {service_account_dir}"
    return KubeconfigEntry(
        source=source,
        server=_check_server(f"https://{bracketed}:{port}", source),
        certificate_authority=Material(path=service_account_dir / "ca.crt"),
        token_file=service_account_dir / "token",
    )


def _read_token(path: Path) -> str:
    data = _read_bounded(path, MAX_TOKEN_BYTES, "the token file")
    token = data.decode("utf-8", errors="replace").strip()
    if not token or any(c in token for c in "\r\n\0"):
        raise KubeconfigError(f"the token file {path} holds no usable token")
    return token


@dataclass(kw_only=True)
class TokenSource:
    """A bearer token, inline or read from a file at most every ``reload`` seconds."""

    token: str = ""
    path: Path | None = None
    reload: float = 60.0
    """Seconds a token read from ``path`` is used before the file is read again."""
    clock: Callable[[], float] = time.monotonic
    _read_at: float | None = field(default=None, repr=False)

    def value(self) -> str:
        """The current token ("" when the credential is not a token).

        Raises KubeconfigError when the file cannot be read (or holds no token) at a re-read.
        """
        if self.path is None:
            return self.token
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.reload:
            self.token = _read_token(self.path)
            self._read_at = now
        return self.token


@dataclass(kw_only=True)
class Credentials:
    """How to reach and authenticate to one API server."""

    server: str
    """``http(s)://host[:port][/prefix]``, no trailing slash."""
    ssl_context: ssl.SSLContext | None
    """None for an ``http://`` server; else verifies it and carries the client certificate."""
    token: TokenSource
    """The bearer token; its ``value()`` is "" for a certificate or basic auth."""
    basic: str | None = None
    """A ``Basic ...`` Authorization value (kubeconfig ``username``/``password``)."""

    def authorization(self) -> str | None:
        """The ``Authorization`` value to send now, or None (client certificate, or none)."""
        token = self.token.value()
        if token:
            return f"Bearer {token}"
        return self.basic


def _pem_bytes(material: Material, what: str, source: str) -> bytes:
    if material.data is not None:
        return material.data
    assert material.path is not None  # noqa: S101 - Material holds one of the two
    return _read_bounded(material.path, MAX_PEM_BYTES, f"{source}: {what}")


def _ssl_context(entry: KubeconfigEntry, *, allow_insecure: bool) -> ssl.SSLContext:
    source = entry.source
    try:
        if entry.certificate_authority is not None:
            pem = _pem_bytes(entry.certificate_authority, "certificate-authority", source)
            context = ssl.create_default_context(cadata=pem.decode("ascii", errors="replace"))
        else:
            context = ssl.create_default_context()  # the system store, as kubectl does
        if entry.insecure_skip_tls_verify:
            if not allow_insecure:
                raise KubeconfigError(
                    f"{source}: insecure-skip-tls-verify is refused; give "
                    "certificate-authority (or -data)"
                )
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert, key = entry.client_certificate, entry.client_key
        if cert and key:
            _load_cert_chain(
                context,
                _pem_bytes(cert, "client-certificate", source),
                _pem_bytes(key, "client-key", source),
            )
        elif cert or key:
            raise KubeconfigError(
                f"{source}: a client certificate needs both client-certificate and client-key"
            )
    except (OSError, ssl.SSLError, ValueError) as error:
        if isinstance(error, KubeconfigError):
            raise
        raise KubeconfigError(f"{source}: unusable TLS material: {error}") from None
    return context


def _load_cert_chain(context: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    """``load_cert_chain`` takes files only: the PEMs live in a private folder for the call."""
    with tempfile.TemporaryDirectory(prefix="edgefleet-kubeconfig-") as scratch:
        folder = Path(scratch)  # mode 0700: the key is never readable by others
        (folder / "cert.pem").write_bytes(cert)
        key_path = folder / "key.pem"
        key_path.touch(mode=0o600)
        key_path.write_bytes(key)
        context.load_cert_chain(folder / "cert.pem", key_path)


def credentials(
    entry: KubeconfigEntry,
    *,
    token_reload: float = 60.0,
    allow_insecure: bool = False,
    clock: Callable[[], float] = time.monotonic,
) -> Credentials:
    """TLS and authentication from an entry; reads its files (a token file: now, then again).

    A token file is read once now, so a missing one is an error at start, not at the first
    request. ``allow_insecure`` lets ``insecure-skip-tls-verify`` switch verification off.
    """
    if entry.plugin:
        raise KubeconfigError(
            f"{entry.source}: user credential plugins ({entry.plugin}) are not supported; "
            "give a token, tokenFile (kept fresh by something outside the daemon) or "
            "client-certificate/client-key"
        )
    https = entry.server.startswith("https://")
    token = TokenSource(token=entry.token, reload=token_reload, clock=clock)
    if not entry.token and entry.token_file is not None:
        token.path = entry.token_file
        try:
            token.value()
        except KubeconfigError as error:
            raise KubeconfigError(f"{entry.source}: {error}") from None
    basic = None
    if entry.username and not entry.token and entry.token_file is None:
        pair = f"{entry.username}:{entry.password}".encode()
        basic = f"Basic {base64.b64encode(pair).decode('ascii')}"
    return Credentials(
        server=entry.server,
        ssl_context=_ssl_context(entry, allow_insecure=allow_insecure) if https else None,
        token=token,
        basic=basic,
    )


def load_kubeconfig(
    path: Path,
    *,
    context: str | None = None,
    token_reload: float = 60.0,
    allow_insecure: bool = False,
) -> Credentials:
    """:func:`read_kubeconfig` then :func:`credentials`: what a daemon needs from a file."""
    entry = read_kubeconfig(path, context=context)
    return credentials(entry, token_reload=token_reload, allow_insecure=allow_insecure)


def load_in_cluster(
    *,
    service_account_dir: Path = IN_CLUSTER_DIR,
    environ: Mapping[str, str] | None = None,
    token_reload: float = 60.0,
) -> Credentials:
    """:func:`in_cluster_entry` then :func:`credentials` (TLS always verified)."""
    entry = in_cluster_entry(service_account_dir=service_account_dir, environ=environ)
    return credentials(entry, token_reload=token_reload)
