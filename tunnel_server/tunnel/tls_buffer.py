"""A TLS read buffer per connection that is small while the connection idles.

asyncio gives every TLS connection one read buffer (``SSLProtocol.max_size``, 256 KiB by
default), allocated and zeroed when the connection is made and kept for its whole life. With
thousands of idle agent sessions that buffer is the largest part of the server's memory, yet
an idle session only ever receives keepalives of a few dozen bytes. A small fixed buffer would
cost bulk transfers a system call and a trip through the event loop per 16 KiB.

So no connection owns a read buffer: every read goes into one buffer per thread (per event
loop), lent for the read only. That is safe because asyncio's selector transport calls
``get_buffer``, ``recv_into`` and ``buffer_updated`` in one go, and ``buffer_updated`` copies
the bytes into the connection's OpenSSL memory BIO before anything else runs; the buffer is
free again when it returns. An idle session then holds no read buffer at all (it held 16 KiB,
a fifth of its memory, before).

How much one read may take stays elastic: ``small`` bytes until a read filled that (the
socket had more waiting: a bulk transfer is going on), then ``large``, back to ``small`` after
a run of reads that ``small`` would have held. This bounds the ciphertext one connection pulls
into its BIO per loop turn, so a bulk transfer does not starve the others' turns.

The peer's certificate as a dict (``get_extra_info("peercert")``, ~1.5 KiB of small objects
that asyncio decodes and keeps for every connection) is decoded again when asked for instead
of kept: our code reads the DER form from the ``ssl_object``.

Not for a proactor loop (Windows), which keeps the buffer across an overlapped read:
``install`` refuses there.

asyncio creates its ``SSLProtocol`` itself (``connect_accepted_socket``, ``create_server``), so
``install`` replaces the class in ``asyncio.sslproto`` with the subclass below: a process-wide
change, made once at server start. The subclass relies on two private attributes of
CPython's sslproto (``_ssl_buffer``, ``_ssl_buffer_view``, present since 3.11's rewrite);
``install`` checks for them and leaves asyncio alone, with a warning, where they are missing.
"""

from __future__ import annotations

import asyncio.sslproto
import logging
import sys
import threading

import prometheus_client

__all__ = [
    "QUIET_READS_BEFORE_SHRINK",
    "ElasticTLSProtocol",
    "install",
    "register_metrics",
    "shared_buffer",
]

log = logging.getLogger("tunnel_server.tls")

QUIET_READS_BEFORE_SHRINK = 64
"""Reads in a row that fit the small buffer before a grown buffer is given back. Enough that
a transfer pausing between two requests keeps its buffer; an idle session's keepalives (one
every 15 s) give it back within minutes."""

_BaseProtocol = asyncio.sslproto.SSLProtocol

_NO_BUFFER = bytearray()
_NO_VIEW = memoryview(_NO_BUFFER)


class _Shared(threading.local):
    buffer: bytearray = _NO_BUFFER
    view: memoryview = _NO_VIEW


_shared = _Shared()


def shared_buffer(size: int) -> memoryview:
    """This thread's read buffer, at least ``size`` bytes (the one every TLS read borrows)."""
    if len(_shared.buffer) < size:
        _shared.buffer = bytearray(size)
        _shared.view = memoryview(_shared.buffer)
    return _shared.view


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
    """Of those, how many read ``large`` bytes at a time (a bulk transfer now or lately)."""
    _want = 0
    """Bytes the current read was offered (``get_buffer``), to tell whether it filled them."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]  # asyncio's own arguments
        # The base class allocated a buffer of its own: give it back, reads borrow the
        # shared one.
        self._ssl_buffer = _NO_BUFFER
        self._ssl_buffer_view = _NO_VIEW

    def get_buffer(self, n: int) -> memoryview:
        want = self.max_size if n <= 0 or n > self.max_size else n
        self._want = want
        self._ssl_buffer_view = shared_buffer(self.large)[:want]
        return self._ssl_buffer_view

    def _on_handshake_complete(self, handshake_exc: BaseException | None) -> None:
        super()._on_handshake_complete(handshake_exc)
        self._extra.pop("peercert", None)  # see the module doc: decoded on demand instead

    def _get_extra_info(self, name: str, default: object = None) -> object:
        if name == "peercert" and (ssl_object := self._extra.get("ssl_object")) is not None:
            return ssl_object.getpeercert()
        return super()._get_extra_info(name, default)

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
        size = self._want
        try:
            super().buffer_updated(nbytes)  # copies the bytes into the BIO first thing
        finally:
            self._ssl_buffer_view = _NO_VIEW  # lent for this read only
        if nbytes >= size and size < self.large:
            # The read filled what it was offered: offer ``large`` from the next read on.
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


def install(*, small: int, large: int) -> bool:
    """Make asyncio build every TLS connection of this process with ``ElasticTLSProtocol``.

    Returns False (and changes nothing) on a Python whose sslproto lacks what it needs.
    """
    if not 0 < small <= large:
        raise ValueError(f"TLS read buffer sizes must satisfy 0 < small <= large: {small}, {large}")
    if sys.platform == "win32":  # the proactor loop holds a read buffer across an await
        log.warning("shared TLS read buffer not used on Windows: asyncio's default kept")
        return False
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
        "TLS connections reading up to the large size at a time (a bulk transfer now or lately)",
        registry=registry,
    )
    grown.set_function(lambda: ElasticTLSProtocol.grown)
