"""Replicas in the server: the ``Replicas`` of ``kube.py`` run while the application runs.

``setup(app, ...)`` (the Kubernetes store only) starts them in a cleanup context, marks
readiness ``replicas`` once this replica's Lease is written and the Leases are listed,
serves ``GET /status`` (replica, leader, replicas alive) and puts the ``Replicas`` under
``REPLICAS_KEY`` for ``/readyz`` and for the parts that ask ``holder_of(node)``, and
``while_leader`` under ``keys.LEADER_KEY`` for the singletons (``keys.singleton``). The
clean-shutdown writes are bounded by the store's request timeout.
"""

from __future__ import annotations

import asyncio
import dataclasses
import os
import re
import socket
from typing import TYPE_CHECKING

from aiohttp import web

from tunnel_server.app_keys import AUTHORITY_KEY, READY_KEY, REGISTRY_KEY, SESSIONS_KEY
from tunnel_server.replicas import peer_route
from tunnel_server.replicas.keys import HELD_KEY, HOLDER_KEY, LEADER_KEY, PEERS_KEY
from tunnel_server.replicas.kube import Replicas
from tunnel_server.replicas.peer_client import PeerLinks, PeerSettings

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.kubestore.settings import KubeStoreSettings
    from tunnel_server.settings import ReplicaSettings

REPLICAS_KEY: web.AppKey[Replicas] = web.AppKey("replicas")


def replica_name(settings: ReplicaSettings, *, port: int) -> str:
    """``--replica-name``, else $POD_NAME, else ``<hostname>-<port>`` made a DNS name."""
    if settings.name is not None:
        return settings.name
    pod = os.environ.get("POD_NAME")
    if pod:
        return pod
    host = re.sub(r"[^a-z0-9.-]+", "-", socket.gethostname().lower()).strip("-.") or "replica"
    return f"{host}-{port}"


def peer_address(settings: ReplicaSettings, *, port: int) -> str:
    """``--peer-address``, else $POD_IP (the downward API) or the hostname, with the port."""
    if settings.peer_address is not None:
        return settings.peer_address
    host = os.environ.get("POD_IP") or socket.gethostname()
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


async def status(request: web.Request) -> web.Response:
    """This replica's name, whether it leads, and the replicas alive."""
    return web.json_response(request.app[REPLICAS_KEY].status())


def setup(
    app: web.Application,
    *,
    settings: ReplicaSettings,
    kube: KubeStoreSettings,
    port: int,
    peers: PeerSettings | None = None,
) -> Replicas:
    """Run this replica's Leases and the election with the application (needs the tunnel)."""

    def sessions() -> dict[str, float]:
        return {s.name: s.connected_at for s in app[SESSIONS_KEY].all()}

    name = replica_name(settings, port=port)
    replicas = Replicas(
        settings=dataclasses.replace(settings, name=name),
        kube=kube,
        peer_address=peer_address(settings, port=port),
        sessions=sessions,
        registry=app[REGISTRY_KEY],
    )
    app[REPLICAS_KEY] = replicas
    app[LEADER_KEY] = replicas.while_leader  # replicas.keys.singleton: leader-gated tasks
    app[READY_KEY]["replicas"] = False
    peer_settings = peers or PeerSettings()
    authority = app[AUTHORITY_KEY]
    links = PeerLinks(
        name=name,
        issue=lambda: authority.issue_replica_certificate(
            name, lifetime=peer_settings.certificate_lifetime
        ),
        trusted_pem=authority.trusted_pem,
        settings=peer_settings,
        registry=app[REGISTRY_KEY],
        mirror=replicas.mirror,
        clock=replicas.judged_now,
    )
    app[PEERS_KEY] = links
    app[HOLDER_KEY] = replicas.holder_address
    app[HELD_KEY] = replicas.held_nodes
    peer_route.setup(app)

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        async def ready() -> None:
            await replicas.listed.wait()
            await replicas.registered.wait()
            app[READY_KEY]["replicas"] = True

        async with asyncio.TaskGroup() as group:
            task = group.create_task(replicas.run(), name="replicas")
            linker = group.create_task(links.run(), name="replicas.peer-links")
            waiter = group.create_task(ready(), name="replicas.ready")
            yield
            waiter.cancel()
            linker.cancel()
            task.cancel()
        async with asyncio.timeout(kube.request_timeout * 2):
            await replicas.close()

    app.cleanup_ctx.append(lifecycle)
    app.router.add_get("/status", status)
    return replicas
