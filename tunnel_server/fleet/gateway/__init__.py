"""The multi-cluster gateway's data path (``--gateway-listen``): HTTP in, tunnel streams out.

``setup(app, settings=..., router=...)`` starts the listener with the application and stops
it with it; without a ``router`` it routes by the fleet's MultiClusterRoute objects
(``FleetRouter``, whose loop runs as the task ``gateway.routes`` while the app runs; the
mirror copies go out from the task ``gateway.mirrors``; with replicas, the leader writes the
routes' status: the singleton ``gateway.route-status``).
Modules: ``headers`` (the forwarded head, pure), ``router`` (the seam between the data path
and whatever picks backends), ``fleet_router`` (the router on the route core,
``fleet_model.gateway``), ``checks`` (active health checks through the tunnel),
``backends`` (a stream to a cluster's Service), ``server`` (the
listener and the per-request logic).
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING

from tunnel_server.app_keys import FLEET_HUB_KEY, REGISTRY_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.fleet.gateway.fleet_router import FleetRouter, FleetRouterSettings
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
from tunnel_server.replicas import opener
from tunnel_server.replicas.keys import LEADER_KEY, singleton

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Awaitable

    from aiohttp import web

    from tunnel_aio import TunnelStream
    from tunnel_server.settings import GatewaySettings

__all__ = [
    "Backend",
    "Decision",
    "FleetRouter",
    "FleetRouterSettings",
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
    """Serve the gateway while ``app`` runs (needs the tunnel, the store and the fleet hub).

    ``router`` None: a ``FleetRouter`` on the fleet hub's MultiClusterRoutes.
    """
    metrics = GatewayMetrics(app[REGISTRY_KEY])

    def forward(cluster: str, target: str, within: float) -> Awaitable[TunnelStream]:
        """A cluster whose session another replica holds: through that replica (issue 17)."""
        return opener.open_agent_stream(app, cluster, target, timeout=within)

    def connected(cluster: str) -> bool:
        return opener.connected(app, cluster)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        if router is not None:
            async with _listening(app, router):
                yield
            return
        replicas = LEADER_KEY in app  # then the leader writes the routes' status
        routes = FleetRouter(
            hub=app[FLEET_HUB_KEY],
            sessions=app[SESSIONS_KEY],
            nodes=app[STORE_KEY],
            metrics=metrics,
            connected=connected,
            forward=forward,
            writes_status=not replicas,
        )
        routes.sync()  # the stored routes serve from the first request on
        async with _listening(app, routes), asyncio.TaskGroup() as group:
            tasks = [group.create_task(routes.run(), name="gateway.routes")]
            if replicas:
                tasks.append(
                    group.create_task(
                        singleton(app, "gateway.route-status", routes.lead),
                        name="gateway.route-status",
                    )
                )
            yield
            for task in tasks:
                task.cancel()

    @contextlib.asynccontextmanager
    async def _listening(app: web.Application, router: Router) -> AsyncIterator[None]:
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
            router=router,
            sessions=app[SESSIONS_KEY],
            store=app[STORE_KEY],
            metrics=metrics,
            tls=tls,
            forward=forward,
        )
        await server.start()
        try:
            async with asyncio.TaskGroup() as group:
                mirrors = group.create_task(server.run_mirrors(), name="gateway.mirrors")
                try:
                    yield
                finally:
                    mirrors.cancel()
        finally:
            await server.close()

    app.cleanup_ctx.append(lifecycle)
