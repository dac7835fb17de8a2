# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Where the proxy sends requests: anything that gives an aiohttp session and a base URL.

The proxy only needs :class:`Upstream`: ``session`` (an ``aiohttp.ClientSession`` that already
carries credentials and TLS settings) and ``base_url``. Two implementations are planned:

* :class:`DirectUpstream`, here: a kubeconfig to a reachable API server (token, client
  certificate or basic auth; CA from a file or inline data).
* a tunnel-backed upstream (reverse tunnel issue): an ``aiohttp.ClientSession`` whose connector
  opens a tunnel stream per connection, with a base URL such as ``http://kube-upstream``. It
  needs nothing from this package beyond satisfying the protocol.

The proxy never closes an upstream; whoever opened it does (``open_direct_upstream`` is an
async context manager).
"""

from __future__ import annotations

import base64
import contextlib
import ssl
import tempfile
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import aiohttp
import yaml

NOT_FORWARDED_HEADER = "Edgefleet-Not-Forwarded"
"""Header of an answer an upstream gives *instead of* forwarding a request (e.g. the tunnel
upstream while the tunnel is down): the request provably never left, so the proxy may say
"not sent" to a write's client rather than "outcome unknown"."""


class Upstream(Protocol):
    """What the proxy needs from an upstream API server."""

    @property
    def base_url(self) -> str:
        """Scheme, host and optional path prefix; request paths are appended to it."""
        ...

    @property
    def session(self) -> aiohttp.ClientSession:
        """Authenticated session; its connector decides how bytes reach the API server."""
        ...


class KubeconfigError(ValueError):
    """The kubeconfig cannot be used: the message says which field."""


@dataclass(frozen=True, kw_only=True)
class DirectUpstream:
    base_url: str
    session: aiohttp.ClientSession


@dataclass(frozen=True, kw_only=True)
class _Credentials:
    server: str
    ssl_context: ssl.SSLContext | bool
    headers: dict[str, str]


def _named(items: object, name: str, what: str) -> dict[str, Any]:
    for item in items if isinstance(items, list) else []:
        if isinstance(item, dict) and item.get("name") == name:
            body = item.get(what)
            if isinstance(body, dict):
                return body
    raise KubeconfigError(f"kubeconfig has no {what} named {name!r}")


def _file_or_data(base: Path, entry: dict[str, Any], key: str, folder: Path) -> str | None:
    data = entry.get(f"{key}-data")
    if data:
        target = folder / key
        target.write_bytes(base64.b64decode(data))
        target.chmod(0o600)
        return str(target)
    path = entry.get(key)
    if path:
        return str((base / str(path)).resolve())
    return None


def _tls(
    server: str, cluster: dict[str, Any], user: dict[str, Any], base: Path
) -> ssl.SSLContext | bool:
    """The TLS settings of the upstream connection (False: plain HTTP or no verification)."""
    if not server.startswith("https://"):
        return False
    with tempfile.TemporaryDirectory(prefix="edge-kubeconfig-") as scratch:
        folder = Path(scratch)
        context = ssl.create_default_context(
            cafile=_file_or_data(base, cluster, "certificate-authority", folder)
        )
        if cluster.get("insecure-skip-tls-verify"):
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        cert = _file_or_data(base, user, "client-certificate", folder)
        key = _file_or_data(base, user, "client-key", folder)
        if cert and key:
            context.load_cert_chain(cert, key)
    return context


def _auth_headers(user: dict[str, Any], base: Path) -> dict[str, str]:
    token = user.get("token")
    if not token and user.get("tokenFile"):
        token = (base / str(user["tokenFile"])).read_text().strip()
    if token:
        return {"Authorization": f"Bearer {token}"}
    if user.get("username"):
        basic = aiohttp.BasicAuth(str(user["username"]), str(user.get("password", "")))
        return {"Authorization": basic.encode()}
    return {}


def load_kubeconfig(path: Path, *, context: str | None = None) -> _Credentials:
    """Read server, TLS and credentials from a kubeconfig (its current context by default)."""
    config = yaml.safe_load(path.read_text())
    if not isinstance(config, dict):
        raise KubeconfigError(f"{path} is not a kubeconfig")
    chosen = context or config.get("current-context")
    if not chosen:
        raise KubeconfigError(f"{path} has no current-context")
    ctx = _named(config.get("contexts"), str(chosen), "context")
    cluster = _named(config.get("clusters"), str(ctx.get("cluster")), "cluster")
    user = _named(config.get("users"), str(ctx.get("user")), "user")
    server = str(cluster.get("server") or "")
    if not server:
        raise KubeconfigError(f"cluster {ctx.get('cluster')!r} has no server")
    return _Credentials(
        server=server.rstrip("/"),
        ssl_context=_tls(server, cluster, user, path.parent),
        headers=_auth_headers(user, path.parent),
    )


@contextlib.asynccontextmanager
async def open_direct_upstream(
    kubeconfig: Path,
    *,
    context: str | None = None,
    server: str | None = None,
    connect_timeout: float = 5.0,
    max_connections: int = 0,
) -> AsyncIterator[DirectUpstream]:
    """An upstream from a kubeconfig; ``server`` overrides its URL (e.g. a fault proxy).

    ``max_connections`` 0 (the default) puts no limit on the session's connection pool: every
    watch holds one connection for its whole life, so with a limit the next watch, write or
    health probe waits for a free connection that never comes (and the probe's timeout then
    takes the node offline with the API server up). Each upstream connection serves one
    request of a local client, so the clients in flight bound them.
    """
    credentials = load_kubeconfig(kubeconfig, context=context)
    connector = aiohttp.TCPConnector(ssl=credentials.ssl_context, limit=max_connections)
    session = aiohttp.ClientSession(
        connector=connector,
        headers=credentials.headers,
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        auto_decompress=True,
    )
    try:
        yield DirectUpstream(base_url=(server or credentials.server).rstrip("/"), session=session)
    finally:
        await session.close()
