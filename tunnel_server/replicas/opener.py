"""One way for every part to open a stream to an agent, wherever its session lives.

``open_agent_stream(app, node, target, timeout=)``:

1. this replica holds ``node``'s session: the stream is opened on it (what every proxy did
   before; the only case on SQLite, one process);
2. else, with the Kubernetes store, the Lease watch names a live replica holding it
   (``Replicas.holder_address``, never a request to the API): the stream is opened on that
   replica's peer link (``peer_client``), which serves it from *its own* session only;
3. else, its holder died (a dial to it failed here, or its Lease ran out or is gone) less than
   ``reconnect_window`` (60 s) ago: the request waits up to ``reconnect_wait`` (2 s) for the
   agent's new holder -- a Lease change wakes it at once -- and goes there (this replica's
   own session included); still none: ``AgentReconnectingError`` (an
   ``AgentNotConnectedError``), answered 503 ``agent_reconnecting`` with ``Retry-After``;
4. else ``AgentNotConnectedError``, which callers answer as "not connected" as before.

A stale holder record (the peer says it does not hold the agent: it just moved) is read
again from the Lease watch (waiting up to ``reconnect_wait`` for it to change) and the
stream opened once more on the fresh holder or here; still the same: "reconnecting".
Decisions are ``holder_view``'s (pure); the dials and the waiting are ``peer_client``'s.

The stream returned is a ``TunnelStream`` either way (read, write, has_data, end, reset,
wait_closed, target), so ``http_over_stream.forward`` and every caller use it unchanged:
bodies, watches, ``logs -f`` and upgrades (exec, port-forward) pass over a forwarded stream
with the same backpressure and half-close. Errors are those of a local stream:
``StreamRejectedError`` (the agent refused; ``AgentNotConnectedError`` is one, code
REFUSED_STREAM), ``PeerUnreachableError`` (a ``StreamError``: the holder replica answered
but refused the link, or no Lease mirror is given to mark it dead) or another ``StreamError``.

``connected(app, node)`` says whether some replica holds the node (for "online" answers).
Light: nothing here imports the Kubernetes client.
"""

from __future__ import annotations

import asyncio
import logging
from typing import TYPE_CHECKING

from tunnel_aio import StreamRejectedError
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import SESSIONS_KEY
from tunnel_server.replicas.holder_view import Forward, Reconnecting
from tunnel_server.replicas.keys import HELD_KEY, HOLDER_KEY, PEERS_KEY
from tunnel_server.replicas.peer_client import NotHeldError, PeerUnreachableError

if TYPE_CHECKING:
    from aiohttp import web

    from tunnel_aio import TunnelStream
    from tunnel_server.replicas.holder_view import HolderView
    from tunnel_server.replicas.peer_client import PeerLinks

log = logging.getLogger("tunnel_server.replicas.peers")


class AgentNotConnectedError(StreamRejectedError):
    """No replica holds a session of this node now."""

    def __init__(self, node: str, message: str | None = None) -> None:
        super().__init__(
            message or f"node {node!r} has no tunnel session", code=ErrorCode.REFUSED_STREAM
        )
        self.node = node


class AgentReconnectingError(AgentNotConnectedError):
    """The replica holding the node died; its agent is expected back on another one soon.

    Callers that know it answer 503 ``agent_reconnecting`` with ``Retry-After:
    retry_after``; the others answer it as any node not connected.
    """

    def __init__(self, node: str, *, replica: str, retry_after: int) -> None:
        super().__init__(
            node,
            f"node {node!r} was held by replica {replica}, which is unreachable; its agent "
            f"reconnects to another replica (within its backoff): retry in {retry_after} s",
        )
        self.replica = replica
        self.retry_after = retry_after


def holder(app: web.Application, node: str) -> tuple[str, str] | None:
    """``(replica, peer address)`` of the other replica holding ``node``, if any."""
    lookup = app.get(HOLDER_KEY)
    return None if lookup is None else lookup(node)


def connected(app: web.Application, node: str) -> bool:
    """Whether this replica or a live peer holds ``node``'s session now."""
    return app[SESSIONS_KEY].get(node) is not None or holder(app, node) is not None


def reconnecting(app: web.Application, node: str) -> bool:
    """Whether ``node``'s holder died lately and its agent is not back yet (see above)."""
    links = app.get(PEERS_KEY)
    if links is None or links.view is None or app[SESSIONS_KEY].get(node) is not None:
        return False
    return isinstance(links.view.route(node, links.clock()), Reconnecting)


def connected_nodes(app: web.Application) -> set[str]:
    """Every node this replica or a live peer holds now (a node list's ``connected``)."""
    local = {session.name for session in app[SESSIONS_KEY].all()}
    held = app.get(HELD_KEY)
    return local if held is None else local | held()


async def open_agent_stream(
    app: web.Application,
    node: str,
    target: str,
    *,
    timeout: float,  # noqa: ASYNC109 - the agent's dial time is part of the protocol
    early_data: bytes = b"",
) -> TunnelStream:
    """A stream to ``target`` on ``node``'s agent, local or through its replica (see above).

    ``early_data`` (a request head, say) is sent on it: with the OPEN on a local session
    (``TunnelConnection.open_stream``, which says what an error means for those bytes),
    once the stream is accepted through a replica.
    """
    session = app[SESSIONS_KEY].get(node)
    if session is not None:
        return await session.connection.open_stream(target, timeout=timeout, early_data=early_data)
    peers = app.get(PEERS_KEY)
    if peers is not None and peers.view is not None:
        return await _open_routed(
            app, peers, peers.view, node=node, target=target, timeout=timeout, early_data=early_data
        )
    found = holder(app, node)
    if found is None or peers is None:
        raise AgentNotConnectedError(node)
    replica, address = found
    if replica == peers.name:
        raise AgentNotConnectedError(node)  # our own record, not yet released: never dial us
    stream = await peers.open(
        replica=replica, address=address, node=node, target=target, timeout=timeout
    )
    return await _send_early(stream, early_data)


async def _send_early(stream: TunnelStream, early_data: bytes) -> TunnelStream:
    """Write ``early_data`` on a stream a peer replica opened (its OPEN carried none)."""
    if early_data:
        try:
            await stream.write(early_data)
        except BaseException:
            stream.reset(ErrorCode.CANCEL, "the request could not be sent")
            raise
    return stream


async def _open_routed(
    app: web.Application,
    peers: PeerLinks,
    view: HolderView,
    *,
    node: str,
    target: str,
    timeout: float,  # noqa: ASYNC109 - the agent's dial time is part of the protocol
    early_data: bytes,
) -> TunnelStream:
    """Steps 1-4 of the module's doc with the holder view: wait, retry once, or say why."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    wait_until = loop.time() + min(peers.settings.reconnect_wait, timeout)
    stale: str | None = None  # the holder that said it does not hold the agent
    tries = 0
    while True:
        session = app[SESSIONS_KEY].get(node)
        if session is not None:
            left = max(0.1, deadline - loop.time())
            return await session.connection.open_stream(target, timeout=left, early_data=early_data)
        route = view.route(node, peers.clock())
        if isinstance(route, Forward) and route.replica != stale and tries < 2:
            tries += 1
            try:
                stream = await peers.open(
                    replica=route.replica,
                    address=route.address,
                    node=node,
                    target=target,
                    timeout=max(0.1, deadline - loop.time()),
                )
            except NotHeldError:
                stale = route.replica  # it moved: look again (the watch shows where) and retry
                continue
            except PeerUnreachableError as unreachable:
                if not unreachable.dead:
                    raise
                continue  # marked dead: the view says "reconnecting" now
            if tries > 1:
                peers.metrics.streams.labels("out", "retried").inc()
            return await _send_early(stream, early_data)
        if isinstance(route, Forward | Reconnecting) and loop.time() < wait_until:
            await peers.changed(wait_until)
            continue
        if isinstance(route, Forward | Reconnecting):
            peers.metrics.streams.labels("out", "reconnecting").inc()
            log.debug(
                "agent reconnecting: its holder is dead or moved",
                extra={"kv": {"node": node, "holder": route.replica}},
            )
            raise AgentReconnectingError(
                node, replica=route.replica, retry_after=peers.settings.retry_after
            )
        raise AgentNotConnectedError(node)
