"""Open a TLS client connection as an asyncio stream pair whose last bytes are never lost.

Rules:

* On asyncio's own loop this is ``asyncio.open_connection(..., ssl=...)``, nothing more.
* On any other loop (uvloop) the TLS layer is asyncio's ``SSLProtocol`` over the loop's plain
  TCP transport, not the loop's own TLS code. Why: uvloop's TLS protocol, when the peer closes
  (close_notify or FIN) while the application has paused reading, shuts down at once and drops
  the decrypted bytes it still holds (MagicStack/uvloop#661, open). Our pipes pause reading
  whenever the tunnel has no credit, so a large answer that ends with the peer's close lost
  its tail: ``kubectl cp`` through a cluster agent on uvloop got a truncated tar and a
  WebSocket 1006. asyncio's protocol delivers everything before the EOF.
* The handshake is awaited here; a failed one closes the TCP connection and raises.
"""

from __future__ import annotations

import asyncio
import asyncio.sslproto
import ssl

_LIMIT = 64 * 1024
"""The stream reader's buffer limit, asyncio's default."""


class _Captured(asyncio.StreamReaderProtocol):
    """A stream protocol that keeps the TLS transport it is given, for the writer."""

    transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport
        super().connection_made(transport)


async def open_tls_connection(
    host: str, port: int, *, ssl_context: ssl.SSLContext, server_hostname: str
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A TLS connection to ``host:port`` as (reader, writer); see the module's rules."""
    loop = asyncio.get_running_loop()
    if isinstance(loop, asyncio.BaseEventLoop):
        return await asyncio.open_connection(
            host, port, ssl=ssl_context, server_hostname=server_hostname
        )
    reader = asyncio.StreamReader(limit=_LIMIT, loop=loop)
    app = _Captured(reader, loop=loop)
    handshake: asyncio.Future[None] = loop.create_future()
    tls = asyncio.sslproto.SSLProtocol(
        loop, app, ssl_context, handshake, server_side=False, server_hostname=server_hostname
    )
    raw, _ = await loop.create_connection(lambda: tls, host, port)
    try:
        await handshake
    except BaseException:
        raw.close()
        raise
    if app.transport is None:  # pragma: no cover - SSLProtocol calls connection_made first
        raw.close()
        raise ConnectionError("the TLS layer did not hand over its transport")
    writer = asyncio.StreamWriter(app.transport, app, reader, loop)  # type: ignore[arg-type]
    return reader, writer


__all__ = ["open_tls_connection"]
