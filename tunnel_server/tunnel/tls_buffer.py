"""A TLS read buffer per connection that is small while the connection idles.

asyncio gives every TLS connection one read buffer (``SSLProtocol.max_size``, 256 KiB by
default), allocated and zeroed when the connection is made and kept for its whole life. With
thousands of idle agent sessions that buffer is the largest part of the server's memory, yet
an idle session only ever receives keepalives of a few dozen bytes. A small fixed buffer would
cost bulk transfers a system call and a trip through the event loop per 16 KiB.

So a connection starts with a small buffer and grows it only when a read filled it (the
socket had more waiting: a bulk transfer is going on), and shrinks it back after a run of
reads that the small one would have held. Idle sessions keep 16 KiB; a ``kubectl cp`` gets
64 KiB for as long as it streams.

asyncio creates its ``SSLProtocol`` itself (``connect_accepted_socket``, ``create_server``), so
``install`` replaces the class in ``asyncio.sslproto`` with the subclass below: a process-wide
change, made once at server start. The subclass relies on two private attributes of
CPython's sslproto (``_ssl_buffer``, ``_ssl_buffer_view``, present since 3.11's rewrite);
``install`` checks for them and leaves asyncio alone, with a warning, where they are missing.
"""

from __future__ import annotations

import asyncio.sslproto
import logging

import prometheus_client

__all__ = ["QUIET_READS_BEFORE_SHRINK", "ElasticTLSProtocol", "install", "register_metrics"]

log = logging.getLogger("tunnel_server.tls")

QUIET_READS_BEFORE_SHRINK = 64
"""Reads in a row that fit the small buffer before a grown buffer is given back. Enough that
a transfer pausing between two requests keeps its buffer; an idle session's keepalives (one
every 15 s) give it back within minutes."""

_BaseProtocol = asyncio.sslproto.SSLProtocol


class ElasticTLSProtocol(_BaseProtocol):
    """``SSLProtocol`` whose read buffer is ``small`` until a read fills it, then ``large``."""

    small = 16 * 1024
    large = 64 * 1024
    max_size = small  # what the base class allocates in __init__ and reads at most per call
    _quiet_reads = 0
    _counted = False
    live = 0
    """Connections of this process that are made and not yet lost (for the metrics)."""
    grown = 0
    """Of those, how many asked for the large buffer (it is allocated on their next read)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        ElasticTLSProtocol.live += 1
        self._counted = True
        super().connection_made(transport)

    def connection_lost(self, exc: BaseException | None) -> None:
        if self._counted:
            self._counted = False
            ElasticTLSProtocol.live -= 1
            if self.max_size > self.small:
                ElasticTLSProtocol.grown -= 1
        super().connection_lost(exc)

    def buffer_updated(self, nbytes: int) -> None:
        size = len(self._ssl_buffer)
        super().buffer_updated(nbytes)
        if nbytes >= size and size < self.large:
            # The read filled the buffer: the base class's get_buffer() allocates max_size
            # on the next read.
            if self._counted and self.max_size == self.small:
                ElasticTLSProtocol.grown += 1
            self.max_size = self.large  # type: ignore[misc]
            self._quiet_reads = 0
        elif size > self.small:
            self._quiet_reads = self._quiet_reads + 1 if nbytes <= self.small else 0
            if self._quiet_reads >= QUIET_READS_BEFORE_SHRINK:
                self._shrink()

    def _shrink(self) -> None:
        if self._counted:
            ElasticTLSProtocol.grown -= 1
        self.max_size = self.small  # type: ignore[misc]
        self._quiet_reads = 0
        buffer = bytearray(self.small)
        self._ssl_buffer = buffer
        self._ssl_buffer_view = memoryview(buffer)


def install(*, small: int, large: int) -> bool:
    """Make asyncio build every TLS connection of this process with ``ElasticTLSProtocol``.

    Returns False (and changes nothing) on a Python whose sslproto lacks what it needs.
    """
    if not 0 < small <= large:
        raise ValueError(f"TLS read buffer sizes must satisfy 0 < small <= large: {small}, {large}")
    probe = _BaseProtocol.__init__
    source = getattr(probe, "__code__", None)
    names = source.co_names if source is not None else ()
    if "_ssl_buffer" not in names or "_ssl_buffer_view" not in names:
        log.warning(
            "this Python's asyncio TLS has no per-connection read buffer we know: keeping its"
            " default (more memory per idle agent session)"
        )
        return False
    ElasticTLSProtocol.small = small
    ElasticTLSProtocol.large = large
    ElasticTLSProtocol.max_size = small
    asyncio.sslproto.SSLProtocol = ElasticTLSProtocol  # type: ignore[misc]
    return True


def register_metrics(registry: prometheus_client.CollectorRegistry) -> None:
    """Gauges of the TLS connections and of those holding the large read buffer."""
    connections = prometheus_client.Gauge(
        "tunnel_server_tls_connections",
        "TLS connections open now (agents, API and console clients, node proxy callers)",
        registry=registry,
    )
    connections.set_function(lambda: ElasticTLSProtocol.live)
    grown = prometheus_client.Gauge(
        "tunnel_server_tls_large_read_buffers",
        "TLS connections holding the large read buffer (a bulk transfer now or lately)",
        registry=registry,
    )
    grown.set_function(lambda: ElasticTLSProtocol.grown)
