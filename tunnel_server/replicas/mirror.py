"""The Leases of this namespace as the watch last gave them: a pure, synchronous view.

Rules: versions of one Lease are ordered by resourceVersion (compared as integers, which
the API server's etcd revisions are), so a late watch event never rolls a Lease back; a
relist replaces everything at once; a deletion removes the Lease (a later event of an older
version is ignored through a tombstone). Lookups answer for agents by node name. Every
change that was taken calls the ``listeners`` (no arguments, at once, in the caller's
thread): requests waiting for an agent's new holder wake on them (``peer_client``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tunnel_server.replicas import rules

if TYPE_CHECKING:
    from collections.abc import Callable, Iterable


def _order(version: str | None) -> int:
    try:
        return int(version or "")
    except ValueError:
        return -1


class LeaseMirror:
    """Our Leases by name, plus agent Leases by node."""

    def __init__(self) -> None:
        self._by_name: dict[str, rules.LeaseRecord] = {}
        self._gone: dict[str, int] = {}
        self._by_node: dict[str, str] = {}
        self.listeners: list[Callable[[], None]] = []

    def _changed(self) -> None:
        for listener in self.listeners:
            listener()

    def reset(self, records: Iterable[rules.LeaseRecord]) -> None:
        self._by_name, self._gone, self._by_node = {}, {}, {}
        for record in records:
            self._put(record)
        self._changed()

    def put(self, record: rules.LeaseRecord) -> None:
        if self._put(record):
            self._changed()

    def _put(self, record: rules.LeaseRecord) -> bool:
        if record.kind is None:
            return False  # not one of ours
        held = self._by_name.get(record.name)
        order = _order(record.version)
        if held is not None and _order(held.version) > order:
            return False
        if self._gone.get(record.name, -1) >= order:
            return False
        self._gone.pop(record.name, None)
        self._by_name[record.name] = record
        if record.kind == "agent" and record.node is not None:
            self._by_node[record.node] = record.name
        return True

    def delete(self, record: rules.LeaseRecord) -> None:
        held = self._by_name.pop(record.name, None)
        self._gone[record.name] = max(
            _order(record.version), _order(None if held is None else held.version)
        )
        if held is not None and held.node is not None:
            self._by_node.pop(held.node, None)
        self._changed()

    def get(self, name: str) -> rules.LeaseRecord | None:
        return self._by_name.get(name)

    def agent(self, node: str) -> rules.LeaseRecord | None:
        name = self._by_node.get(node)
        return None if name is None else self._by_name.get(name)

    def replicas(self) -> list[rules.LeaseRecord]:
        return [r for r in self._by_name.values() if r.kind == "replica"]

    def alive(self, now: float) -> set[str]:
        return rules.alive_replicas(self.replicas(), now)

    def holder_of(self, node: str, now: float) -> str | None:
        """The replica holding ``node``'s session, if its own Lease is alive at ``now``."""
        record = self.agent(node)
        if record is None or record.holder is None:
            return None
        replica = self._by_name.get(rules.replica_lease(record.holder))
        if replica is None or replica.holder is None:
            return None
        return record.holder if rules.alive(replica.renew_time, replica.duration, now) else None

    def held_nodes(self, now: float) -> set[str]:
        """Nodes whose agent Lease names a replica whose own Lease is alive at ``now``."""
        alive = self.alive(now)
        held = set()
        for node, name in self._by_node.items():
            record = self._by_name.get(name)
            if record is not None and record.holder in alive:
                held.add(node)
        return held

    def held_by(self, replica: str) -> int:
        return sum(1 for r in self._by_name.values() if r.kind == "agent" and r.holder == replica)
