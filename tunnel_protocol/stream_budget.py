"""How many streams the peer may open for nothing: the rapid-reset defence. Rules live here.

Theory of operation
-------------------
The stream cap bounds how many streams the peer holds open *at once*, not how many it opens.
A peer that sends OPEN and RESET back to back (HTTP/2 "rapid reset", CVE-2023-44487, which
Konnectivity had to patch) never holds more than one stream, yet every OPEN still costs this
end an application task and usually a dial to the target, and that work goes on after the
RESET. The same holds for a peer that keeps opening streams we refuse, and for one that makes
*us* reset its streams by breaking a stream rule (HTTP/2 "MadeYouReset", CVE-2025-8671). So
the session keeps a budget of such streams, a token bucket:

* A stream the peer opened is **unproductive** when it ends by REJECT or RESET (sent by
  either end) before any DATA crossed it either way (early data, sent with the OPEN before
  our ACCEPT, counts only once we accepted), or when we reset it because the peer
  broke a stream rule (whatever crossed it before). An OPEN beyond our stream cap, refused by
  the session itself, is unproductive too. Each costs one unit of the budget.
* A stream the peer opened that carried DATA, or that both ends closed with FIN, is
  **productive**: it gives one unit back, never above ``burst``.
* Time gives back ``rate`` units per second, never above ``burst``; the budget starts full.
* An OPEN from the peer while the budget is **overdrawn** (below zero: the peer wasted more
  than ``burst`` streams, net of what streams and time gave back) is a connection error,
  ENHANCE_YOUR_CALM. The check sits at OPEN because that is where the peer asks for more
  work; a peer that stops opening streams is never cut off for what it already did.
* Streams we opened are not counted (their cost is our own choice), and neither are OPENs
  refused while the session drains (the peer's opens crossed our GO_AWAY; no work is done).

Why this bounds the work: an unproductive stream needs no round trip, so only the budget
limits it, to ``burst + rate * t``. A productive one needs our ACCEPT first (no DATA counts
before it), so the units it gives back arrive no faster than the stream cap allows streams to
complete, which is the load legitimate traffic may place anyway. Legitimate clients rarely
end a stream without sending a byte (a request is DATA; a cancelled watch has sent its
request), so only failures count: a target that refuses, an open that times out.

Time is the caller's monotonic clock, passed in like everything else in this package; the
bucket is refilled lazily when it is read, so it needs no timer of its own.
"""

from __future__ import annotations

__all__ = ["StreamBudget"]


class StreamBudget:
    """The token bucket of the module docstring; ``now`` is the caller's monotonic seconds."""

    __slots__ = ("_level", "_updated", "burst", "rate", "spent")

    def __init__(self, *, burst: int, rate: float, now: float) -> None:
        self.burst = burst
        self.rate = rate
        self.spent = 0
        """Unproductive streams over the session's life (for the error text and metrics)."""
        self._level = float(burst)
        self._updated = now

    def level(self, now: float) -> float:
        """Units left now; negative once the peer has overdrawn the budget."""
        self._refill(now)
        return self._level

    def overdrawn(self, now: float) -> bool:
        return self.level(now) < 0

    def charge(self, now: float) -> None:
        """An unproductive stream: one unit less (the level may go below zero)."""
        self._refill(now)
        self._level -= 1
        self.spent += 1

    def refund(self, now: float) -> None:
        """A productive stream: one unit back, up to ``burst``."""
        self._refill(now)
        self._level = min(float(self.burst), self._level + 1)

    def _refill(self, now: float) -> None:
        if now > self._updated:
            elapsed, self._updated = now - self._updated, now
            self._level = min(float(self.burst), self._level + elapsed * self.rate)
