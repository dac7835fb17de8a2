"""One way for every part to open a stream to an agent, wherever its session lives.

``open_agent_stream(app, node, target, timeout=)``:

1. this replica holds ``node``'s session: the stream is opened on it (what every proxy did
   before; the only case on SQLite, one process);
2. else, with the Kubernetes store, the Lease watch names a live replica holding it
   (``Replicas.holder_address``, never a request to the API): the stream is opened on that
   replica's peer link (``peer_client``), which serves it from *its own* session only;
3. else ``AgentNotConnectedError``, which callers answer as "not connected" as before.

The stream returned is a ``TunnelStream`` either way (read, write, has_data, end, reset,
wait_closed, target), so ``http_over_stream.forward`` and every caller use it unchanged:
bodies, watches, ``logs -f`` and upgrades (exec, port-forward) pass over a forwarded stream
with the same backpressure and half-close. Errors are those of a local stream:
``StreamRejectedError`` (the agent refused; ``AgentNotConnectedError`` is one, code
REFUSED_STREAM, also when the holder record was stale and the peer does not hold it),
``PeerUnreachableError`` (a ``StreamError``: the holder replica cannot be reached, e.g. it
died and its Lease has not run out yet) or another ``StreamError``.

``connected(app, node)`` says whether some replica holds the node (for "online" answers).
Light: nothing here imports the Kubernetes client.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnel_aio import StreamRejectedError
from tunnel_protocol import ErrorCode
from tunnel_server.app_keys import SESSIONS_KEY
from tunnel_server.replicas.keys import HELD_KEY, HOLDER_KEY, PEERS_KEY

if TYPE_CHECKING:
    from aiohttp import web

    from tunnel_aio import TunnelStream


class AgentNotConnectedError(StreamRejectedError):
    """No replica holds a session of this node now."""

    def __init__(self, node: str) -> None:
        super().__init__(f"node {node!r} has no tunnel session", code=ErrorCode.REFUSED_STREAM)
        self.node = node


def holder(app: web.Application, node: str) -> tuple[str, str] | None:
    """``(replica, peer address)`` of the other replica holding ``node``, if any."""
    lookup = app.get(HOLDER_KEY)
    return None if lookup is None else lookup(node)


def connected(app: web.Application, node: str) -> bool:
    """Whether this replica or a live peer holds ``node``'s session now."""
    return app[SESSIONS_KEY].get(node) is not None or holder(app, node) is not None


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
    found = holder(app, node)
    peers = app.get(PEERS_KEY)
    if found is None or peers is None:
        raise AgentNotConnectedError(node)
    replica, address = found
    if replica == peers.name:
        raise AgentNotConnectedError(node)  # our own record, not yet released: never dial us
    stream = await peers.open(
        replica=replica, address=address, node=node, target=target, timeout=timeout
    )
    if early_data:
        try:
            await stream.write(early_data)
        except BaseException:
            stream.reset(ErrorCode.CANCEL, "the request could not be sent")
            raise
    return stream
