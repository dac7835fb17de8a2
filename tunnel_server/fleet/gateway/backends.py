"""Open a tunnel stream to a backend: the cluster's agent session, target ``service/ns/name:port``.

Rules:

* The session is found by cluster name in the live registry; only a session whose
  certificate says ``cluster`` serves. Without one here, ``forward`` (peer forwarding,
  ``replicas.opener.open_agent_stream``: the replica that holds the cluster's session opens
  the stream on it) is asked; no replica holding it is a missing session. The store is read
  only to explain a missing one (no such cluster, a node's name, or offline since when).
* The agent resolves the Service to a ready EndpointSlice endpoint and dials it before it
  accepts, so a rejected OPEN means nothing reached the backend: ``Refused`` says why, with
  the problem status and reason word the listener answers if no other backend serves.
* A stream not accepted within ``within`` seconds is reset and counts as refused too.
* ``early_data`` (the request head) leaves with the OPEN, so the agent writes it to the
  endpoint as soon as it has dialled. A rejected OPEN still means nothing reached the
  backend (the agent drops early data unread); a timeout or a tunnel failure then may have
  let it through, so callers send early data only for requests they may retry anyway.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, TypeAlias

from tunnel_aio import StreamError, StreamRejectedError, TunnelStream
from tunnel_protocol import ErrorCode
from tunnel_server.replicas import opener

if TYPE_CHECKING:
    from tunnel_server.fleet.gateway.router import Backend
    from tunnel_server.store import Store
    from tunnel_server.tunnel.sessions import SessionRegistry

__all__ = ["Forward", "Problem", "Refused", "open_backend"]

Forward: TypeAlias = Callable[[str, str, float], Awaitable[TunnelStream]]
"""(cluster, target, seconds) -> a stream opened by the replica holding the cluster's session;
``opener.AgentNotConnectedError`` when none does."""


class Problem(Exception):  # noqa: N818 - an answer for the client, not our failure
    """A problem document to answer with: HTTP status, reason word, detail."""

    def __init__(self, status: int, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.status = status
        self.reason = reason
        self.detail = detail


class Refused(Problem):
    """Nothing was sent to the backend; what to answer if no other backend serves."""


def _since(seconds: float | None) -> str:
    if seconds is None:
        return "it never connected"
    return "since " + time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))


def _missing(store: Store, cluster: str) -> Refused:
    record = store.get_node(cluster)
    if record is None:
        return Refused(502, "cluster_not_found", f"no registered cluster named {cluster!r}")
    if record.kind != "cluster":
        return Refused(502, "cluster_not_found", f"{cluster!r} is a node, not a cluster")
    return Refused(
        503,
        "cluster_offline",
        f"cluster {cluster} is offline {_since(record.last_seen)}: its agent has no tunnel "
        "session now",
    )


def _rejected(backend: Backend, error: StreamRejectedError) -> Refused:
    where = f"{backend}"
    if error.code is ErrorCode.TARGET_NOT_ALLOWED:
        return Refused(
            502,
            "service_not_served",
            f"{where}: the agent of cluster {backend.cluster} does not serve Service targets "
            f"(an older agent, or not allowed by its config): {error}",
        )
    if error.code is ErrorCode.TARGET_UNREACHABLE:
        return Refused(503, "backend_unreachable", f"{where}: {error}")
    if error.code is ErrorCode.REFUSED_STREAM:
        return Refused(503, "cluster_busy", f"{where}: the agent takes no more streams: {error}")
    if error.code is ErrorCode.CANCEL:
        return Refused(503, "cluster_timeout", f"{where}: the agent did not answer: {error}")
    return Refused(503, "tunnel_failed", f"{where}: the tunnel failed: {error}")


async def _written(stream: TunnelStream, data: bytes) -> TunnelStream:
    """``stream`` once ``data`` is written on it (a forwarded stream takes no early data)."""
    if data:
        try:
            await stream.write(data)
        except BaseException:
            stream.reset(ErrorCode.CANCEL, "the request could not be sent")
            raise
    return stream


async def open_backend(
    backend: Backend,
    *,
    sessions: SessionRegistry,
    store: Store,
    within: float,
    forward: Forward | None = None,
    early_data: bytes = b"",
) -> TunnelStream:
    """An accepted stream to ``backend``; Refused when nothing could be sent to it.

    ``forward``: how to reach a cluster whose session another replica holds (None: this
    process only, as on SQLite).
    """
    session = sessions.get(backend.cluster)
    if session is not None and session.identity.kind != "cluster":
        raise _missing(store, backend.cluster)
    try:
        if session is not None:
            return await session.connection.open_stream(
                backend.target, timeout=within, early_data=early_data
            )
        if forward is None:
            raise _missing(store, backend.cluster)
        stream = await forward(backend.cluster, backend.target, within)
        return await _written(stream, early_data)
    except opener.AgentNotConnectedError:
        raise _missing(store, backend.cluster) from None
    except StreamRejectedError as rejected:
        raise _rejected(backend, rejected) from None
    except StreamError as failed:
        if failed.code is ErrorCode.CANCEL and early_data:  # no answer in time (after early data)
            raise Refused(
                503, "cluster_timeout", f"{backend}: the agent did not answer: {failed}"
            ) from None
        raise Refused(
            503,
            "tunnel_failed",
            f"{backend}: the tunnel to cluster {backend.cluster} failed: {failed}",
        ) from None
