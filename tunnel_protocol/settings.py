"""Settings of a tunnel session. Every field says its unit and why its default is what it is."""

from __future__ import annotations

import math
from dataclasses import dataclass

from tunnel_protocol.frames import (
    MAX_FRAME_PAYLOAD_HARD_CAP,
    MAX_VERSIONS,
    MAX_WINDOW,
    MIN_FRAME_PAYLOAD,
)

__all__ = ["SUPPORTED_VERSIONS", "TunnelSettings"]

SUPPORTED_VERSIONS: tuple[int, ...] = (1,)
"""Protocol versions this library implements."""


@dataclass(frozen=True, kw_only=True, slots=True)
class TunnelSettings:
    supported_versions: tuple[int, ...] = SUPPORTED_VERSIONS
    """Versions offered in HELLO; the highest one both ends offer is used. Tests narrow it to
    provoke a mismatch; production code keeps the default."""

    max_frame_payload: int = 256 * 1024
    """Bytes: largest DATA payload we accept (and advertise); a sender cuts by the size its
    *peer* advertised, so an older peer's 64 KiB still holds for what we send it. Python pays
    per frame (a WebSocket message, a TLS write, a loop wake-up and an event dispatch on each
    side), not per byte: 256 KiB frames cut the server's CPU per GiB by about a third and the
    agent's by a fifth against 64 KiB (docs/benchmarks.md, issue 18). A control frame waits
    behind the bytes already queued, which the window bounds whatever the frame size."""

    initial_window: int = 512 * 1024
    """Bytes: per-stream credit we grant the peer, hence the most we ever hold unread per
    stream. Two full frames: the peer sends the second while we consume the first, and the
    credit for the first (half a window) goes back as it is consumed, so a stream never
    stalls waiting for credit on a fast link; ~40 Mbit/s per stream at 100 ms RTT. The worst
    case is 512 MiB held per session if all 1024 streams stall unread."""

    max_concurrent_streams: int = 1024
    """Streams the peer may have open towards us at once; more OPENs are refused, not fatal.
    1024 is far above kubectl's needs (a port-forward takes a few) and matches the order of
    kube-apiserver's 1000 HTTP/2 streams per connection."""

    early_data: bool = True
    """Offer the early-data extension in HELLO: when the peer offers it too, an opener may
    send DATA (and FIN) right after OPEN, within the initial window, instead of waiting a
    round trip for ACCEPT, and we take the same from the peer (buffered until we accept, as
    any DATA is, under the window). False behaves exactly as a peer that predates the
    extension (the interop tests play one with it)."""

    ping_interval: float = 15.0
    """Seconds between keepalive PINGs. 15 s is under the 30-60 s idle timeouts of common NATs
    and cloud load balancers, so an idle tunnel stays mapped."""

    ping_timeout: float = 45.0
    """Seconds without any frame from the peer before the session is declared dead: three
    missed pings, so one lost or delayed pong on a slow uplink does not kill the tunnel."""

    handshake_timeout: float = 10.0
    """Seconds to wait for the peer's HELLO; a peer that connects but never speaks should not
    hold a session slot."""

    unproductive_stream_burst: int = 2048
    """Streams: how many streams the peer opened may end unproductively (REJECT or RESET
    before any DATA, or a stream error of the peer's) in a burst before its next OPEN ends the
    session with ENHANCE_YOUR_CALM: the rapid-reset defence (rules in ``stream_budget.py``).
    Twice the default stream cap, so every stream the peer may hold open can fail at once (a
    target that went down under full load, opens timing out together), and their retries too,
    before any refill. Keep it at least ``max_concurrent_streams`` if you raise that."""

    unproductive_stream_rate: float = 100.0
    """Streams per second given back to that budget (each productive stream also gives one
    back). Legitimate clients end streams without a byte only when something fails, and back
    off when it does; 100/s is three times what nghttp2 allows for *every* received reset
    (33/s after a burst of 1000), yet thousands of times below a flood, which packs 2048
    OPEN+RESET pairs into each WebSocket message."""

    def __post_init__(self) -> None:
        versions = self.supported_versions
        if not 0 < len(versions) <= MAX_VERSIONS or len(set(versions)) != len(versions):
            raise ValueError(f"supported_versions must be 1..{MAX_VERSIONS} distinct versions")
        if not all(0 < v <= 0xFFFF for v in versions):
            raise ValueError("versions must be 1..65535")
        if not MIN_FRAME_PAYLOAD <= self.max_frame_payload <= MAX_FRAME_PAYLOAD_HARD_CAP:
            raise ValueError(
                f"max_frame_payload must be {MIN_FRAME_PAYLOAD}..{MAX_FRAME_PAYLOAD_HARD_CAP}"
            )
        if not 0 < self.initial_window <= MAX_WINDOW:
            raise ValueError("initial_window must be 1..2**31-1")
        if not 0 <= self.max_concurrent_streams <= MAX_WINDOW:
            raise ValueError("max_concurrent_streams must be 0..2**31-1")
        if not 0 < self.ping_interval < self.ping_timeout:
            raise ValueError("need 0 < ping_interval < ping_timeout")
        if self.handshake_timeout <= 0:
            raise ValueError("handshake_timeout must be positive")
        if self.unproductive_stream_burst < 1:
            raise ValueError("unproductive_stream_burst must be at least 1")
        if not 0 <= self.unproductive_stream_rate < math.inf:
            raise ValueError("unproductive_stream_rate must be finite and not negative")
