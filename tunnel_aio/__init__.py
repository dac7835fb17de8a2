"""The asyncio driver of ``tunnel_protocol`` over an aiohttp WebSocket, shared by both ends.

``tunnel_protocol`` is sans-IO by rule; both the edge agent and the tunnel server need the same
loop around it (read messages, flush frames, run timers, turn events into awaitable streams).
Writing that loop twice would mean two copies to keep right, so it lives here, beside the
pure library: it imports ``tunnel_protocol`` and aiohttp, and nothing of ``edge_agent`` or
``tunnel_server`` (an import-linter contract keeps it so).
"""

from tunnel_aio.connection import MessageSocket, TunnelConnection
from tunnel_aio.pipe import SocketPipe, connect_pipe, pipe_socket
from tunnel_aio.stream import (
    StreamError,
    StreamRejectedError,
    StreamResetError,
    TunnelClosedError,
    TunnelStream,
)

__all__ = [
    "MessageSocket",
    "SocketPipe",
    "StreamError",
    "StreamRejectedError",
    "StreamResetError",
    "TunnelClosedError",
    "TunnelConnection",
    "TunnelStream",
    "connect_pipe",
    "pipe_socket",
]
