"""How the agent reaches its member API server: address, TLS trust and its own credential.

Two sources, as ``[cluster]`` says:

* ``in_cluster``: the pod's service account (``token`` and ``ca.crt`` in
  ``service_account_dir``), the address from ``KUBERNETES_SERVICE_HOST``/``_PORT``;
* ``kubeconfig`` (+ ``context``): a bearer ``token``, a ``tokenFile`` or a client certificate
  (``client-certificate``/``client-key``, files or ``-data``), and the cluster's CA.

The server's certificate is always verified: against the member's CA when one is given (the
service account's ``ca.crt``, the kubeconfig's ``certificate-authority``), else the system
store, as kubectl does. ``insecure-skip-tls-verify`` and credential plugins (``exec``,
``auth-provider``) are refused: the agent holds credentials that may impersonate cloud users,
and must know whom it gives them to. Token files are read again every ``token_reload``
seconds (projected service account tokens rotate).
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

import yaml

from edge_agent.cluster.settings import ClusterSettings

MAX_KUBECONFIG_BYTES = 1024 * 1024
"""A kubeconfig with a few embedded certificates is a few KB; this much is not one."""
MAX_TOKEN_BYTES = 64 * 1024
"""A service account token (a JWT) is about 1 KB."""


class CredentialsError(ValueError):
    """The member API server cannot be reached as configured: the message says what to fix."""


@dataclass(kw_only=True)
class TokenSource:
    """A bearer token, inline or read from a file at most every ``reload`` seconds."""

    token: str = ""
    path: Path | None = None
    reload: float = 60.0
    clock: Callable[[], float] = time.monotonic
    _read_at: float | None = field(default=None, repr=False)

    def value(self) -> str:
        """The current token ("" when the credential is a client certificate)."""
        if self.path is None:
            return self.token
        now = self.clock()
        if self._read_at is None or now - self._read_at >= self.reload:
            self.token = _read_token(self.path)
            self._read_at = now
        return self.token


def _read_token(path: Path) -> str:
    try:
        with path.open("rb") as file:
            data = file.read(MAX_TOKEN_BYTES + 1)
    except OSError as error:
        raise CredentialsError(f"cannot read the token file {path}: {error.strerror}") from None
    if len(data) > MAX_TOKEN_BYTES:
        raise CredentialsError(f"the token file {path} is larger than {MAX_TOKEN_BYTES} bytes")
    token = data.decode("utf-8", errors="replace").strip()
    if not token or any(c in token for c in "\r\n\0"):
        raise CredentialsError(f"the token file {path} holds no usable token")
    return token


@dataclass(kw_only=True)
class MemberCredentials:
    """Everything needed to open an authenticated connection to the member API server."""

    server: str
    """``https://host:port`` (no trailing slash), for messages and ``GetJson`` URLs."""
    host: str
    port: int
    ssl_context: ssl.SSLContext
    """Verifies the server against the member's CA; carries the client certificate, if any."""
    token: TokenSource
    """The agent's bearer token; empty for client-certificate credentials."""

    @property
    def host_header(self) -> str:
        """The ``Host`` the member API server expects (IPv6 in brackets)."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return host if self.port == 443 else f"{host}:{self.port}"

    def authorization(self) -> str | None:
        """The ``Authorization`` value to send, or None (client certificate)."""
        token = self.token.value()
        return f"Bearer {token}" if token else None


def load(
    settings: ClusterSettings, *, environ: Mapping[str, str] | None = None
) -> MemberCredentials:
    """The credentials ``[cluster]`` names. Raises CredentialsError saying what is wrong."""
    if settings.in_cluster:
        return _in_cluster(settings, os.environ if environ is None else environ)
    if settings.kubeconfig is None:  # config.py refuses this; a programming error otherwise
        raise CredentialsError("[cluster] needs in_cluster = true or kubeconfig")
    return _from_kubeconfig(settings.kubeconfig, settings.context or None, settings.token_reload)


def _split_server(server: str, where: str) -> tuple[str, int]:
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise CredentialsError(
            f"{where}: the member API server must be an https:// URL, got {server!r}"
        )
    if parts.path not in ("", "/"):
        raise CredentialsError(f"{where}: a server URL with a path ({server!r}) is not supported")
    try:
        port = parts.port or 443
    except ValueError:
        raise CredentialsError(f"{where}: bad port in {server!r}") from None
    return parts.hostname, port


def _in_cluster(settings: ClusterSettings, environ: Mapping[str, str]) -> MemberCredentials:
    host = environ.get("KUBERNETES_SERVICE_HOST", "")
    port = environ.get("KUBERNETES_SERVICE_PORT", "")
    if not host or not port.isdigit():
        raise CredentialsError(
            "[cluster] in_cluster = true, but KUBERNETES_SERVICE_HOST/KUBERNETES_SERVICE_PORT "
            "are not set: the agent is not running in a pod; use kubeconfig = PATH instead"
        )
    folder = settings.service_account_dir
    ca = folder / "ca.crt"
    token = TokenSource(path=folder / "token", reload=settings.token_reload)
    token.value()  # read once now, so a missing token is an error at start, not later
    try:
        context = ssl.create_default_context(cafile=str(ca))
    except (OSError, ssl.SSLError) as error:
        raise CredentialsError(f"cannot use the service account CA {ca}: {error}") from None
    with_brackets = f"[{host}]" if _is_ipv6(host) else host
    return MemberCredentials(
        server=f"https://{with_brackets}:{port}",
        host=host,
        port=int(port),
        ssl_context=context,
        token=token,
    )


def _is_ipv6(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).version == 6
    except ValueError:
        return False


def _named(items: object, name: str, what: str, path: Path) -> dict[str, Any]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if isinstance(body, dict):
                return body
    raise CredentialsError(f"kubeconfig {path} has no {what} named {name!r}")


def _from_kubeconfig(path: Path, context: str | None, reload: float) -> MemberCredentials:
    try:
        raw = path.read_bytes()
    except OSError as error:
        raise CredentialsError(f"cannot read kubeconfig {path}: {error.strerror}") from None
    if len(raw) > MAX_KUBECONFIG_BYTES:
        raise CredentialsError(f"kubeconfig {path} is larger than {MAX_KUBECONFIG_BYTES} bytes")
    try:
        config = yaml.safe_load(raw)
    except yaml.YAMLError as error:
        raise CredentialsError(f"kubeconfig {path} is not YAML: {error}") from None
    if not isinstance(config, dict):
        raise CredentialsError(f"{path} is not a kubeconfig")
    chosen = context or config.get("current-context")
    if not chosen:
        raise CredentialsError(f"kubeconfig {path} has no current-context; set [cluster] context")
    ctx = _named(config.get("contexts"), str(chosen), "context", path)
    cluster = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster", path)
    user = _named(config.get("users"), str(ctx.get("user")), "user", path)
    server = str(cluster.get("server") or "").rstrip("/")
    host, port = _split_server(server, f"kubeconfig {path}")
    if cluster.get("insecure-skip-tls-verify"):
        raise CredentialsError(
            f"kubeconfig {path}: insecure-skip-tls-verify is refused: the agent sends a "
            "credential that may impersonate cloud users, so it verifies the server; give "
            "certificate-authority (or -data)"
        )
    for plugin in ("exec", "auth-provider"):
        if user.get(plugin):
            raise CredentialsError(
                f"kubeconfig {path}: user credential plugins ({plugin}) are not supported; "
                "give a token, tokenFile or client-certificate/client-key"
            )
    context_ssl = _ssl_context(cluster, user, path)
    token = _user_token(user, path, reload, str(ctx.get("user")))
    return MemberCredentials(
        server=server, host=host, port=port, ssl_context=context_ssl, token=token
    )


def _user_token(user: dict[str, Any], path: Path, reload: float, name: str) -> TokenSource:
    """The user's bearer token (inline or a file); empty for a client certificate."""
    token = TokenSource(reload=reload)
    if user.get("token"):
        token.token = str(user["token"]).strip()
    elif user.get("tokenFile"):
        token.path = (path.parent / str(user["tokenFile"])).resolve()
        token.value()
    elif not user.get("client-certificate") and not user.get("client-certificate-data"):
        raise CredentialsError(
            f"kubeconfig {path}: user {name!r} has no credential the agent can use "
            "(token, tokenFile or client-certificate + client-key)"
        )
    return token


def _material(base: Path, entry: dict[str, Any], key: str, folder: Path) -> str | None:
    """A file path for ``key`` of a kubeconfig entry: the file, or ``key-data`` written out."""
    data = entry.get(f"{key}-data")
    if data:
        try:
            decoded = base64.b64decode(str(data), validate=True)
        except (binascii.Error, ValueError):
            raise CredentialsError(f"kubeconfig: {key}-data is not base64") from None
        target = folder / key
        target.write_bytes(decoded)
        target.chmod(0o600)
        return str(target)
    value = entry.get(key)
    return str((base / str(value)).resolve()) if value else None


def _ssl_context(cluster: dict[str, Any], user: dict[str, Any], path: Path) -> ssl.SSLContext:
    with tempfile.TemporaryDirectory(prefix="edge-cluster-") as scratch:
        folder = Path(scratch)
        try:
            ca = _material(path.parent, cluster, "certificate-authority", folder)
            context = ssl.create_default_context(cafile=ca)
            cert = _material(path.parent, user, "client-certificate", folder)
            key = _material(path.parent, user, "client-key", folder)
            if cert and key:
                context.load_cert_chain(cert, key)
            elif cert or key:
                raise CredentialsError(
                    f"kubeconfig {path}: a client certificate needs both client-certificate "
                    "and client-key"
                )
        except (OSError, ssl.SSLError) as error:
            raise CredentialsError(f"kubeconfig {path}: unusable TLS material: {error}") from None
    return context


def own_namespace(settings: ClusterSettings) -> str | None:
    """The agent's own namespace (``in_cluster``: the service account's ``namespace`` file).

    None for an agent outside the member cluster, or when the file is missing or odd: the
    caller then simply does not exclude its own namespace (the webhook's namespaceSelector).
    """
    if not settings.in_cluster:
        return None
    try:
        text = (settings.service_account_dir / "namespace").read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    name = text.strip()
    return name if 0 < len(name) <= 63 and name.replace("-", "").isalnum() else None
