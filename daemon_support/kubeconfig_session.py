"""An aiohttp session that authenticates every request with :class:`Credentials` as they are now.

The ``Authorization`` header is set per request by a client middleware, not once on the
session: a token file re-read (a rotated service account token) then reaches the very next
request. A request that carries its own ``Authorization`` keeps it.
"""

from __future__ import annotations

import aiohttp

from daemon_support.kubeconfig import Credentials

__all__ = ["authorization_middleware", "open_kube_session"]


def authorization_middleware(creds: Credentials) -> aiohttp.ClientMiddlewareType:
    """A client middleware adding ``creds.authorization()`` to each request without one."""

    async def authorize(
        request: aiohttp.ClientRequest, handler: aiohttp.ClientHandlerType
    ) -> aiohttp.ClientResponse:
        if "Authorization" not in request.headers:
            value = creds.authorization()
            if value is not None:
                request.headers["Authorization"] = value
        return await handler(request)

    return authorize


def open_kube_session(
    creds: Credentials,
    *,
    connect_timeout: float,
    max_connections: int = 0,
    auto_decompress: bool = True,
) -> aiohttp.ClientSession:
    """A session to ``creds.server``'s API server; the caller closes it.

    ``connect_timeout`` (seconds) bounds TCP and TLS set-up only: watches stay open for
    minutes. ``max_connections`` 0 means no limit on the pool (every watch holds one).
    """
    connector = aiohttp.TCPConnector(
        ssl=creds.ssl_context if creds.ssl_context is not None else False,
        limit=max_connections,
    )
    return aiohttp.ClientSession(
        connector=connector,
        middlewares=(authorization_middleware(creds),),
        timeout=aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout),
        auto_decompress=auto_decompress,
    )
