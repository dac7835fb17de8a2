"""The multi-cluster gateway's data path (``--gateway-listen``): HTTP in, tunnel streams out.

``setup(app, settings=..., router=...)`` starts the listener with the application and stops
it with it. Modules: ``headers`` (the forwarded head, pure), ``router`` (the seam to the route
core: NOT yet wired to MultiClusterRoute objects, see its docstring), ``backends`` (a stream
to a cluster's Service), ``server`` (the listener and the per-request logic).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnel_server.app_keys import REGISTRY_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.fleet.gateway.router import (
    Backend,
    Decision,
    NoRoute,
    Outcome,
    RequestInfo,
    Router,
    StaticRouter,
    Timeouts,
    UnwiredRouter,
)
from tunnel_server.fleet.gateway.server import (
    GatewayMetrics,
    GatewayServer,
    GatewayStartError,
    tls_context,
)

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

    from tunnel_server.settings import GatewaySettings

__all__ = [
    "Backend",
    "Decision",
    "GatewayServer",
    "GatewayStartError",
    "NoRoute",
    "Outcome",
    "RequestInfo",
    "Router",
    "StaticRouter",
    "Timeouts",
    "UnwiredRouter",
    "setup",
    "tls_context",
]


def setup(app: web.Application, *, settings: GatewaySettings, router: Router | None = None) -> None:
    """Serve the gateway while ``app`` runs (needs the tunnel and the store set up)."""
    metrics = GatewayMetrics(app[REGISTRY_KEY])

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        tls = None
        if settings.cert_file is not None and settings.key_file is not None:
            try:
                tls = tls_context(str(settings.cert_file), str(settings.key_file))
            except (OSError, ValueError) as error:
                raise GatewayStartError(
                    f"cannot use --gateway-cert-file/--gateway-key-file: {error}"
                ) from None
        server = GatewayServer(
            settings=settings,
            router=router or UnwiredRouter(),
            sessions=app[SESSIONS_KEY],
            store=app[STORE_KEY],
            metrics=metrics,
            tls=tls,
        )
        await server.start()
        try:
            yield
        finally:
            await server.close()

    app.cleanup_ctx.append(lifecycle)
