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

Reading and TLS are the daemons' one loader, :mod:`daemon_support.kubeconfig`; this module adds
the cluster agent's policy (https only, no path, no insecure-skip-tls-verify, no basic auth).
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Mapping
from dataclasses import dataclass
from urllib.parse import urlsplit

from daemon_support import kubeconfig
from daemon_support.kubeconfig import MAX_KUBECONFIG_BYTES, MAX_TOKEN_BYTES, TokenSource
from edge_agent.cluster.settings import ClusterSettings

__all__ = [
    "MAX_KUBECONFIG_BYTES",
    "MAX_TOKEN_BYTES",
    "CredentialsError",
    "MemberCredentials",
    "TokenSource",
    "load",
    "own_namespace",
]

CredentialsError = kubeconfig.KubeconfigError
"""The member API server cannot be reached as configured: the message says what to fix.

The shared loader's error itself, so a token file that turns unreadable at a re-read (raised
by :class:`TokenSource` inside a request) is caught where the agent catches this one."""


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
        try:
            entry = kubeconfig.in_cluster_entry(
                service_account_dir=settings.service_account_dir,
                environ=os.environ if environ is None else environ,
            )
        except CredentialsError as error:
            raise CredentialsError(f"[cluster] in_cluster = true, but {error}") from None
    elif settings.kubeconfig is None:  # config.py refuses this; a programming error otherwise
        raise CredentialsError("[cluster] needs in_cluster = true or kubeconfig")
    else:
        entry = kubeconfig.read_kubeconfig(settings.kubeconfig, context=settings.context or None)
        _check_policy(entry)
    host, port = _split_server(entry.server, entry.source)
    loaded = kubeconfig.credentials(entry, token_reload=settings.token_reload)
    if loaded.ssl_context is None:  # _split_server refuses http://; a programming error
        raise CredentialsError(f"{entry.source}: the member API server must be https://")
    return MemberCredentials(
        server=entry.server, host=host, port=port, ssl_context=loaded.ssl_context,
        token=loaded.token,
    )  # fmt: skip


def _check_policy(entry: kubeconfig.KubeconfigEntry) -> None:
    """What the agent refuses of a member kubeconfig the shared loader would take."""
    if entry.insecure_skip_tls_verify:
        raise CredentialsError(
            f"{entry.source}: insecure-skip-tls-verify is refused: the agent sends a "
            "credential that may impersonate cloud users, so it verifies the server; give "
            "certificate-authority (or -data)"
        )
    if entry.username and not (entry.token or entry.token_file or entry.client_certificate):
        raise CredentialsError(
            f"{entry.source}: basic auth (username/password) is not supported; give a token, "
            "tokenFile or client-certificate + client-key"
        )
    if not entry.has_credential:
        raise CredentialsError(
            f"{entry.source}: the user has no credential the agent can use "
            "(token, tokenFile or client-certificate + client-key)"
        )


def _split_server(server: str, where: str) -> tuple[str, int]:
    parts = urlsplit(server)
    if parts.scheme != "https" or not parts.hostname:
        raise CredentialsError(
            f"{where}: the member API server must be an https:// URL, got {server!r}"
        )
    if parts.path not in ("", "/"):
        raise CredentialsError(f"{where}: a server URL with a path ({server!r}) is not supported")
    return parts.hostname, parts.port or 443


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
