"""The one ``CloudNodes`` of the application, followed by a list+watch while it runs."""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tunnel_server.app_keys import CLOUD_NODES_KEY, NODES_SYNCED_KEY, SETTINGS_KEY, UPSTREAM_KEY
from tunnel_server.fleet.cloud_nodes import CloudNodes
from tunnel_server.fleet.kube_watch import ListWatch

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from aiohttp import web

log = logging.getLogger("tunnel_server.fleet.nodes")


def shared_nodes(app: web.Application) -> CloudNodes:
    """The one ``CloudNodes`` of ``app``, followed while the app runs if it has an upstream.

    Called by every part that needs the cloud's Nodes (egress, autonomy) in its ``setup``; the
    first call registers the watch. Without ``--kube-upstream`` the map stays empty: the egress
    then knows nodes by name only, and autonomy refuses to start (the CLI checks).
    """
    if CLOUD_NODES_KEY in app:
        return app[CLOUD_NODES_KEY]
    nodes = CloudNodes()
    app[CLOUD_NODES_KEY] = nodes
    app[NODES_SYNCED_KEY] = asyncio.Event()
    app.cleanup_ctx.append(_follow_nodes)
    return nodes


async def _follow_nodes(app: web.Application) -> AsyncIterator[None]:
    if UPSTREAM_KEY not in app:
        log.info("no --kube-upstream: edge nodes are known by name only, not by address")
        yield
        return
    watch = ListWatch(
        upstream=app[UPSTREAM_KEY],
        path="/api/v1/nodes",
        sink=app[CLOUD_NODES_KEY],
        settings=app[SETTINGS_KEY].cloud_watch,
        synced=app[NODES_SYNCED_KEY],
    )
    async with asyncio.TaskGroup() as group:
        task = group.create_task(watch.run(), name="fleet.cloud-nodes")
        yield
        task.cancel()
