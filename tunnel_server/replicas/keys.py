"""Keys of the replicas' shared state: light (no Kubernetes client), for any part to import.

``PEERS_KEY`` and ``HOLDER_KEY`` serve ``opener.open_agent_stream`` (forwarding to the
replica holding an agent); the rest runs a singleton on the leader only:

With the Kubernetes store, ``replicas.service.setup`` puts ``Replicas.while_leader`` under
``LEADER_KEY``; ``singleton(app, name, work)`` then runs ``work()`` while this replica leads
(cancelled when it stops leading, started again when it leads again). Without it (SQLite:
one process, always the only one) ``work()`` runs at once, as before.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, TypeAlias

from aiohttp import web

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from tunnel_server.replicas.peer_client import PeerLinks

LeaderRunner: TypeAlias = (
    "Callable[[str, Callable[[], Coroutine[Any, Any, None]]], Coroutine[Any, Any, None]]"
)
"""``while_leader(name, work)``: runs ``work()`` only while this replica leads."""

HolderLookup: TypeAlias = "Callable[[str], tuple[str, str] | None]"

LEADER_KEY: web.AppKey[LeaderRunner] = web.AppKey("replicas_leader")


def singleton(
    app: web.Application, name: str, work: Callable[[], Coroutine[Any, Any, None]]
) -> Coroutine[Any, Any, None]:
    """The coroutine to run as the singleton task ``name``: leader-gated if there are replicas."""
    lead = app.get(LEADER_KEY)
    return work() if lead is None else lead(name, work)


PEERS_KEY: web.AppKey[PeerLinks] = web.AppKey("replicas_peers")
"""This replica's peer links (``peer_client``), with the Kubernetes store only."""

HOLDER_KEY: web.AppKey[HolderLookup] = web.AppKey("replicas_holder")
"""``(node) -> (replica, peer address) | None``: the live replica holding ``node``'s session
by the Lease watch, with its advertised address; set with the Kubernetes store only."""

HeldNodes: TypeAlias = "Callable[[], set[str]]"

HELD_KEY: web.AppKey[HeldNodes] = web.AppKey("replicas_held")
"""``() -> nodes``: every node a live replica holds by the Lease watch (lists and counts that
must answer the same on every replica); set with the Kubernetes store only."""
