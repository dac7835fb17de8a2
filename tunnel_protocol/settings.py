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

    max_frame_payload: int = 64 * 1024
    """Bytes: largest DATA payload we accept (and advertise). 64 KiB keeps one frame small next
    to the 256 KiB window, so four frames are in flight per stream and a control frame never
    waits behind a huge message; larger frames gained nothing measurable in yamux or HTTP/2."""

    initial_window: int = 256 * 1024
    """Bytes: per-stream credit we grant the peer, hence the most we ever hold unread per
    stream. 256 KiB is yamux's default: enough for ~20 Mbit/s at 100 ms RTT per stream while
    1024 streams stay within 256 MiB worst case."""

    max_concurrent_streams: int = 1024
    """Streams the peer may have open towards us at once; more OPENs are refused, not fatal.
    1024 is far above kubectl's needs (a port-forward takes a few) and matches the order of
    kube-apiserver's 1000 HTTP/2 streams per connection."""

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
