"""Sans-IO rules of the replicas: which replica is alive, who leads, who holds an agent.

No I/O and no clock here: every time is passed in (UNIX seconds), the driver (``kube.py``)
reads and writes the Leases and feeds the answers back. Rules:

- **A replica is alive** while ``now < renewTime + leaseDurationSeconds`` of its Lease
  ``edgefleet-replica-<name>``. A Lease without either field, or a deleted one, is dead. This
  compares two replicas' clocks (the writer's renewTime with the reader's now): the lease
  duration (15 s) is far above the skew NTP keeps (milliseconds).
- **Leader election** (Lease ``edgefleet-leader``), the semantics of client-go's
  leaderelection: a candidate takes the Lease when it has no holder, holds itself, or
  has not changed for ``duration`` seconds *as this candidate observed it* (its own clock
  only: no clock is compared with another's, so skew cannot elect two leaders). The leader
  renews every ``renew_interval``; a conflict on renew (someone else wrote the Lease) ends
  the leadership at once, and other failures end it once the last good renew is
  ``renew_deadline`` old. ``renew_deadline < duration``, so a leader cut off from the API
  stops its singletons before any other candidate may take over. Releasing (clean
  shutdown) writes no holder and a 1 s duration, so a candidate takes over at its next try.
- **Agent holders** (Lease ``edgefleet-agent-<node>``, ``holderIdentity`` = the replica, its
  ``acquireTime`` = the session's start). A replica's claim overwrites the record when the
  record has no holder, names this replica, names a dead replica, or names a session that
  started no later than this one (the agent reconnected: the newest session wins). A release
  writes no holder, only if the record still names this replica with this session's start.
  Every write carries the resourceVersion it was decided on; on 409 the driver reads again
  and decides again, so of two replicas racing for one agent the rule, not the order of
  arrival, picks the winner.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal

if TYPE_CHECKING:
    from collections.abc import Container

REPLICA_PREFIX = "edgefleet-replica-"
AGENT_PREFIX = "edgefleet-agent-"
LEADER_LEASE = "edgefleet-leader"
KIND_LABEL = "edgefleet.io/lease-kind"
"""Label on every Lease of ours: ``replica``, ``agent`` or ``leader``."""
NODE_ANNOTATION = "edgefleet.io/node"
"""Annotation naming the node of an agent Lease (its name is hashed when too long)."""
PEER_ANNOTATION = "edgefleet.io/peer-address"
"""Annotation of a replica Lease: HOST:PORT its peers reach it at (peer forwarding)."""
MAX_NAME = 253
TIME_SLACK = 1e-3
"""Seconds: a time written as a MicroTime and read back may differ in the last float bits."""
_SUBDOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?$")

LeaseKind = Literal["replica", "agent", "leader"]


def valid_replica_name(name: str) -> bool:
    """A replica name must make a valid Lease name (a DNS subdomain) with its prefix."""
    return len(REPLICA_PREFIX) + len(name) <= MAX_NAME and bool(_SUBDOMAIN.match(name))


def replica_lease(name: str) -> str:
    return REPLICA_PREFIX + name


def agent_lease(node: str) -> str:
    """The agent Lease's name: the node's name as it is, hashed if the whole would be too long."""
    if len(AGENT_PREFIX) + len(node) <= MAX_NAME and _SUBDOMAIN.match(node):
        return AGENT_PREFIX + node
    return AGENT_PREFIX + "x-" + hashlib.sha256(node.encode()).hexdigest()[:56]


@dataclass(frozen=True, kw_only=True)
class LeaseRecord:
    """The fields of a coordination.k8s.io/v1 Lease these rules use."""

    name: str
    holder: str | None = None
    acquire_time: float | None = None
    """UNIX seconds; for an agent Lease, when the holding session started."""
    renew_time: float | None = None
    """UNIX seconds of the holder's last renewal."""
    duration: int | None = None
    """``leaseDurationSeconds``."""
    transitions: int = 0
    version: str | None = None
    """resourceVersion as read; None: not in the API (a write creates it)."""
    kind: LeaseKind | None = None
    node: str | None = None
    """Agent Leases: the node's name."""
    peer: str | None = None
    """Replica Leases: the advertised HOST:PORT."""


def alive(renew_time: float | None, duration: int | None, now: float) -> bool:
    """Whether a Lease renewed at ``renew_time`` for ``duration`` seconds still holds at ``now``."""
    return renew_time is not None and duration is not None and now < renew_time + duration


def alive_replicas(records: list[LeaseRecord], now: float) -> set[str]:
    """Names of the replicas whose Lease is alive at ``now``."""
    return {
        r.name.removeprefix(REPLICA_PREFIX)
        for r in records
        if r.kind == "replica" and r.holder is not None and alive(r.renew_time, r.duration, now)
    }


# ------------------------------------------------------------------ codec


def _time(value: Any) -> float | None:  # noqa: ANN401 - JSON
    if not isinstance(value, str) or not value:
        return None
    try:
        return datetime.fromisoformat(value).timestamp()
    except ValueError:
        return None


def _micro(value: float | None) -> str | None:
    if value is None:
        return None
    moment = datetime.fromtimestamp(value, UTC)
    if moment.microsecond == 0:
        # lightkube writes a whole second without its fraction, which the API refuses for a
        # MicroTime: one microsecond later (far below TIME_SLACK) keeps the fraction.
        moment = moment.replace(microsecond=1)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def from_object(obj: dict[str, Any]) -> LeaseRecord:
    """A Lease as the API gives it (a dict) to its record; unknown shapes give empty fields."""
    meta = obj.get("metadata") or {}
    spec = obj.get("spec") or {}
    labels = meta.get("labels") or {}
    kind = labels.get(KIND_LABEL)
    holder = spec.get("holderIdentity")
    duration = spec.get("leaseDurationSeconds")
    transitions = spec.get("leaseTransitions")
    annotations = meta.get("annotations") or {}
    node, peer = annotations.get(NODE_ANNOTATION), annotations.get(PEER_ANNOTATION)
    return LeaseRecord(
        name=str(meta.get("name", "")),
        holder=holder if isinstance(holder, str) and holder else None,
        acquire_time=_time(spec.get("acquireTime")),
        renew_time=_time(spec.get("renewTime")),
        duration=duration if isinstance(duration, int) and duration > 0 else None,
        transitions=transitions if isinstance(transitions, int) else 0,
        version=meta.get("resourceVersion"),
        kind=kind if kind in ("replica", "agent", "leader") else None,
        node=node if isinstance(node, str) else None,
        peer=peer if isinstance(peer, str) else None,
    )


def to_object(record: LeaseRecord, *, namespace: str) -> dict[str, Any]:
    """The Lease to write for ``record`` (with its resourceVersion when it has one)."""
    meta: dict[str, Any] = {"name": record.name, "namespace": namespace}
    if record.kind is not None:
        meta["labels"] = {KIND_LABEL: record.kind}
    annotations = {NODE_ANNOTATION: record.node, PEER_ANNOTATION: record.peer}
    if any(annotations.values()):
        meta["annotations"] = {k: v for k, v in annotations.items() if v is not None}
    if record.version is not None:
        meta["resourceVersion"] = record.version
    spec: dict[str, Any] = {"holderIdentity": record.holder, "leaseTransitions": record.transitions}
    if record.duration is not None:
        spec["leaseDurationSeconds"] = record.duration
    if record.acquire_time is not None:
        spec["acquireTime"] = _micro(record.acquire_time)
    if record.renew_time is not None:
        spec["renewTime"] = _micro(record.renew_time)
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": meta,
        "spec": spec,
    }


# ------------------------------------------------------------------ leader election


@dataclass(frozen=True)
class Write:
    """Write this record (create it when its version is None, else replace that version)."""

    record: LeaseRecord


@dataclass(frozen=True)
class Wait:
    """Nothing to write before ``until`` (UNIX seconds); the driver reads again by then."""

    until: float


class Election:
    """One candidate's view of the leader Lease; ``leading`` says whether it runs the singletons.

    Feed it every read of the Lease (``observe``), ask ``next`` what to do, and report the
    outcome of a write (``written`` / ``failed``).
    """

    def __init__(
        self, *, me: str, duration: int, renew_interval: float, renew_deadline: float
    ) -> None:
        if not 0 < renew_interval < renew_deadline < duration:
            raise ValueError("need 0 < renew_interval < renew_deadline < duration")
        self.me = me
        self.duration = duration
        self.renew_interval = renew_interval
        self.renew_deadline = renew_deadline
        self.leading = False
        self._record: LeaseRecord | None = None
        self._seen: tuple[object, ...] | None = None
        self._seen_at = 0.0
        self._renewed_at = 0.0

    def observe(self, record: LeaseRecord | None, now: float) -> None:
        """The Lease as just read (None: there is none)."""
        key = None if record is None else (record.holder, record.renew_time, record.version)
        if key != self._seen:
            self._seen, self._seen_at = key, now
        self._record = record
        if self.leading and (record is None or record.holder != self.me):
            self.leading = False  # deleted, released or taken by someone else

    def leads(self, now: float) -> bool:
        """Whether this candidate may run the singletons at ``now`` (its renewals are fresh)."""
        return self.leading and now - self._renewed_at < self.renew_deadline

    def _expired(self, record: LeaseRecord, now: float) -> bool:
        return now >= self._seen_at + (record.duration or self.duration)

    def next(self, now: float) -> Write | Wait:
        """What to do at ``now``: a write (acquire or renew), or wait."""
        if self.leading and now - self._renewed_at >= self.renew_deadline:
            self.leading = False  # renewals failed for too long: another may take over soon
        record = self._record
        if self.leading:
            assert record is not None  # noqa: S101 - leading implies a record (observe/written)
            due = self._renewed_at + self.renew_interval
            if now < due:
                return Wait(due)
            return Write(replace(record, renew_time=now, duration=self.duration))
        if record is None:
            return Write(
                LeaseRecord(
                    name=LEADER_LEASE,
                    holder=self.me,
                    acquire_time=now,
                    renew_time=now,
                    duration=self.duration,
                    kind="leader",
                )
            )
        if record.holder is None or record.holder == self.me or self._expired(record, now):
            changed = record.holder != self.me
            return Write(
                replace(
                    record,
                    holder=self.me,
                    acquire_time=now,
                    renew_time=now,
                    duration=self.duration,
                    transitions=record.transitions + (1 if changed else 0),
                    kind="leader",
                )
            )
        return Wait(
            min(self._seen_at + (record.duration or self.duration), now + self.renew_interval)
        )

    def written(self, record: LeaseRecord, *, started: float) -> None:
        """A write of ours succeeded; ``started`` is when it was sent (the safe side)."""
        self.observe(record, started)
        if record.holder == self.me:
            self.leading = True
            self._renewed_at = started

    def failed(self, now: float, *, conflict: bool) -> None:
        """A write failed; a conflict means another wrote the Lease: read it again."""
        if conflict or (self.leading and now - self._renewed_at >= self.renew_deadline):
            self.leading = False

    def release(self) -> Write | None:
        """The write that gives the Lease up (clean shutdown), if this candidate leads."""
        if not self.leading or self._record is None:
            return None
        self.leading = False
        return Write(replace(self._record, holder=None, duration=1))


# ------------------------------------------------------------------ agent holders


def claim_wins(current: LeaseRecord | None, *, me: str, since: float, live: Container[str]) -> bool:
    """Whether this replica's session (started at ``since``) may take the agent's record."""
    if current is None or current.holder is None or current.holder == me:
        return True
    if current.holder not in live:
        return True  # its replica died: its agents reconnect elsewhere
    return current.acquire_time is None or current.acquire_time <= since + TIME_SLACK


def claim(current: LeaseRecord | None, *, node: str, me: str, since: float) -> LeaseRecord:
    """The record a winning claim writes (keeps the version it was decided on)."""
    base = current or LeaseRecord(name=agent_lease(node), kind="agent", node=node)
    moved = base.holder != me
    return replace(
        base,
        holder=me,
        acquire_time=since,
        renew_time=since,
        transitions=base.transitions + (1 if moved and current is not None else 0),
        kind="agent",
        node=node,
    )


def release(current: LeaseRecord | None, *, me: str, since: float) -> LeaseRecord | None:
    """The record that releases this session's hold, or None when it holds no longer."""
    if current is None or current.holder != me or current.acquire_time is None:
        return None
    if abs(current.acquire_time - since) > TIME_SLACK:
        return None  # a newer session of this agent on this replica holds it
    return replace(current, holder=None)
