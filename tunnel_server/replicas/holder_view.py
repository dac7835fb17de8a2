"""Where a request for an agent goes: the Lease watch's view plus this replica's own dials.

Pure and synchronous: no I/O, no clock (every time is passed in, UNIX seconds). The driver
(``peer_client.PeerLinks``) reports its dials; ``opener.open_agent_stream`` asks ``route``.

Rules:

- **Where to.** An agent this replica holds is served here (the caller checks its sessions
  first). Else the agent Lease names its holder R: R alive (below) with a peer address:
  ``Forward(R)``; R dead: ``Reconnecting(R)`` for ``reconnect_window`` seconds from R's
  death, then ``Offline``. No record, no holder, a holder without a peer address, or this
  replica itself (the agent left us; our release is on its way): ``Offline``.
- **A replica is dead** when its Lease ran out (``rules.alive``), is gone (deleted on a clean
  shutdown, or released), or a dial to it failed here (``unreachable``) and its Lease has
  not been renewed since -- a renewTime newer than the one seen at the failure (compared
  with R's own earlier renewTime: one clock, no skew) -- nor a dial succeeded (``reached``).
  So a SIGKILLed replica is dead here at the first refused dial, not ``lease_duration``
  (15 s) later; a replica that failed one dial by chance is alive again at its next
  renewal (``renew_interval``, 2 s).
- **Since when.** A death counts from the earliest of: the failed dial, the end of its Lease,
  and the first time this view saw it dead (a deleted Lease leaves no time). The window
  covers the agents' reconnect (edge-agent's backoff: at most 60 s): an agent not back by
  then is answered offline, not "reconnecting" forever.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeAlias

from tunnel_server.replicas import rules

if TYPE_CHECKING:
    from tunnel_server.replicas.mirror import LeaseMirror


@dataclass(frozen=True)
class Forward:
    """Open the stream on the peer link to ``replica`` at ``address``."""

    replica: str
    address: str


@dataclass(frozen=True)
class Reconnecting:
    """The holder ``replica`` is dead (since ``since``): its agent reconnects elsewhere."""

    replica: str
    since: float


@dataclass(frozen=True)
class Offline:
    """No live replica holds the agent and none died holding it lately."""


Route: TypeAlias = Forward | Reconnecting | Offline


@dataclass
class _Mark:
    """A failed dial: when, and the Lease's renewTime then (None: no Lease seen)."""

    since: float
    renew_time: float | None


class HolderView:
    """The mirror's holders, with replicas this process found unreachable marked dead."""

    def __init__(self, mirror: LeaseMirror, *, me: str, reconnect_window: float) -> None:
        self.mirror = mirror
        self.me = me
        self.reconnect_window = reconnect_window
        self._marks: dict[str, _Mark] = {}
        self._first_dead: dict[str, float] = {}

    # ------------------------------------------------------------------ what dials report

    def unreachable(self, replica: str, now: float) -> bool:
        """A dial to ``replica`` failed at ``now``: dead until renewed; True if newly marked."""
        lease = self.mirror.get(rules.replica_lease(replica))
        renewed = None if lease is None else lease.renew_time
        mark = self._marks.get(replica)
        if mark is not None and not _newer(renewed, mark.renew_time):
            return False  # already dead since the first failure
        self._marks[replica] = _Mark(since=now, renew_time=renewed)
        return True

    def reached(self, replica: str) -> bool:
        """A dial to ``replica`` succeeded: alive (as its Lease says); True if it was marked."""
        self._first_dead.pop(replica, None)
        return self._marks.pop(replica, None) is not None

    def marked(self) -> list[str]:
        """Replicas marked dead by a failed dial here (their Lease not renewed since)."""
        return [r for r in list(self._marks) if self._is_marked(r)]

    # ------------------------------------------------------------------ questions

    def _is_marked(self, replica: str) -> bool:
        mark = self._marks.get(replica)
        if mark is None:
            return False
        lease = self.mirror.get(rules.replica_lease(replica))
        if lease is not None and _newer(lease.renew_time, mark.renew_time):
            del self._marks[replica]  # renewed since the failure: it lives
            return False
        return True

    def dead(self, replica: str, now: float) -> bool:
        """Whether ``replica`` counts as dead at ``now`` (see the module's rules)."""
        lease = self.mirror.get(rules.replica_lease(replica))
        if lease is None or lease.holder is None:
            return True
        if not rules.alive(lease.renew_time, lease.duration, now):
            return True
        return self._is_marked(replica)

    def died_at(self, replica: str, now: float) -> float:
        """When ``replica`` died as far as this view knows (it is dead at ``now``)."""
        times = [self._first_dead.setdefault(replica, now)]
        mark = self._marks.get(replica)
        if mark is not None:
            times.append(mark.since)
        lease = self.mirror.get(rules.replica_lease(replica))
        if lease is not None and lease.renew_time is not None and lease.duration is not None:
            end = lease.renew_time + lease.duration
            if end <= now:
                times.append(end)
        return min(times)

    def route(self, node: str, now: float) -> Route:
        """Where a request for ``node`` goes at ``now``, when this replica does not hold it."""
        record = self.mirror.agent(node)
        if record is None or record.holder is None or record.holder == self.me:
            return Offline()
        holder = record.holder
        if self.dead(holder, now):
            since = self.died_at(holder, now)
            if now < since + self.reconnect_window:
                return Reconnecting(holder, since)
            return Offline()
        self._first_dead.pop(holder, None)
        lease = self.mirror.get(rules.replica_lease(holder))
        if lease is None or not lease.peer:
            return Offline()
        return Forward(holder, lease.peer)


def _newer(renew_time: float | None, than: float | None) -> bool:
    if renew_time is None:
        return False
    return than is None or renew_time > than + rules.TIME_SLACK
