# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Where the proxy sends requests: anything that gives an aiohttp session and a base URL.

The proxy only needs :class:`Upstream`: ``session`` (an ``aiohttp.ClientSession`` that already
carries credentials and TLS settings) and ``base_url``. Two implementations are planned:

* :class:`DirectUpstream`, here: a kubeconfig to a reachable API server (token, token file
  re-read every ``token_reload`` seconds, client certificate or basic auth; CA from a file
  or inline data), read by the daemons' one loader, :mod:`daemon_support.kubeconfig`.
* a tunnel-backed upstream (reverse tunnel issue): an ``aiohttp.ClientSession`` whose connector
  opens a tunnel stream per connection, with a base URL such as ``http://kube-upstream``. It
  needs nothing from this package beyond satisfying the protocol.

The proxy never closes an upstream; whoever opened it does (``open_direct_upstream`` is an
async context manager).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import aiohttp

from daemon_support.kubeconfig import KubeconfigError, load_kubeconfig
from daemon_support.kubeconfig_session import open_kube_session

__all__ = [
    "NOT_FORWARDED_HEADER",
    "DirectUpstream",
    "KubeconfigError",
    "Upstream",
    "open_direct_upstream",
]

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


@dataclass(frozen=True, kw_only=True)
class DirectUpstream:
    base_url: str
    session: aiohttp.ClientSession


@contextlib.asynccontextmanager
async def open_direct_upstream(
    kubeconfig: Path,
    *,
    context: str | None = None,
    server: str | None = None,
    connect_timeout: float = 5.0,
    max_connections: int = 0,
    token_reload: float = 60.0,
) -> AsyncIterator[DirectUpstream]:
    """An upstream from a kubeconfig; ``server`` overrides its URL (e.g. a fault proxy).

    ``max_connections`` 0 (the default) puts no limit on the session's connection pool: every
    watch holds one connection for its whole life, so with a limit the next watch, write or
    health probe waits for a free connection that never comes (and the probe's timeout then
    takes the node offline with the API server up). Each upstream connection serves one
    request of a local client, so the clients in flight bound them. A ``tokenFile`` is read
    again every ``token_reload`` seconds. ``insecure-skip-tls-verify`` is honoured (the
    operator's choice for this node's own upstream); credential plugins are refused.
    Raises KubeconfigError (a ValueError) saying which field is unusable.
    """
    credentials = load_kubeconfig(
        kubeconfig, context=context, token_reload=token_reload, allow_insecure=True
    )
    session = open_kube_session(
        credentials, connect_timeout=connect_timeout, max_connections=max_connections
    )
    try:
        yield DirectUpstream(base_url=(server or credentials.server).rstrip("/"), session=session)
    finally:
        await session.close()
