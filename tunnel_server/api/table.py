"""The node table, kept ready: rows are rebuilt only for nodes that changed.

Building a row costs ~50-100 µs (dates, warnings) and reading 1,000 nodes from SQLite ~20 ms,
so doing both per request made ``GET /api/v1/nodes`` cost ~100 ms at 1,000 nodes. Here:

* a row is rebuilt when its node reported, went offline, connected or disconnected, or its
  record changed; and every row is rebuilt every ``full_refresh`` seconds, so the times in it
  (uptime, "not seen for") are never older than that;
* all node records are re-read when the store's revision moves and with that full rebuild; a
  row rebuilt in between re-reads its own record only (``last_seen`` and ``agent_version``
  change without a revision bump), or all are re-read when more than ``1/BULK_READ`` of the
  rows changed. In a reconnect storm every tick brings a few hundred connects: reading 10,000
  records for them every couple of seconds cost more than the rows;
* each row keeps its JSON text, so a list response is a join of ready strings.

Nothing here runs on its own: the event hub refreshes the table only while a live stream is
subscribed, and list requests refresh it when they read it.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.views import node_row
from tunnel_server.status.history import StatusHistory
from tunnel_server.store import NodeRecord, Store

BULK_READ = 8
"""Above ``len(records) / BULK_READ`` changed rows one query for all records is cheaper."""


@dataclass
class Row:
    data: dict[str, Any]
    text: str


class NodeTable:
    def __init__(
        self,
        *,
        store: Store,
        history: StatusHistory,
        connected: Callable[[], set[str]],
        settings: ApiSettings,
        full_refresh: float = 5.0,
    ) -> None:
        self._store = store
        self._history = history
        self._connected_now = connected
        self._settings = settings
        self._full_refresh = full_refresh
        self._records: dict[str, NodeRecord] = {}
        self._revision = -1
        self._connected: set[str] = set()
        self._rows: dict[str, Row] = {}
        self._built_at = -1e18
        self._dirty: set[str] = set()
        history.add_listener(self.mark)

    def mark(self, name: str) -> None:
        self._dirty.add(name)

    def refresh(self, now: float) -> set[str]:
        """Bring the rows up to date; the names whose row was rebuilt."""
        connected = self._connected_now()
        self._dirty |= connected ^ self._connected
        self._connected = connected
        revision = self._store.revision()
        full = now - self._built_at >= self._full_refresh
        if full or revision != self._revision or len(self._dirty) * BULK_READ > len(self._records):
            self._read_all(revision)
        else:
            self._read_some(self._dirty)
        if full:
            self._dirty |= set(self._records)
            self._built_at = now
        changed, self._dirty = self._dirty, set()
        for name in changed:
            record = self._records.get(name)
            if record is None:
                continue
            data = node_row(
                record,
                self._history.live(name),
                connected=name in connected,
                now=now,
                settings=self._settings,
            )
            self._rows[name] = Row(data=data, text=json.dumps(data, separators=(",", ":")))
        return changed

    def _read_all(self, revision: int) -> None:
        records = {node.name: node for node in self._store.list_nodes()}
        self._dirty |= {n for n, r in records.items() if self._records.get(n) != r}
        for gone in set(self._records) - set(records):
            self._rows.pop(gone, None)
            self._dirty.add(gone)
        self._records, self._revision = records, revision

    def _read_some(self, names: set[str]) -> None:
        """Re-read the records of ``names`` that are known (a new node moves the revision)."""
        for name in names & self._records.keys():
            record = self._store.get_node(name)
            if record is None:
                del self._records[name]
                self._rows.pop(name, None)
            else:
                self._records[name] = record

    def rows(self, now: float) -> list[Row]:
        """Every row, ordered by node name."""
        self.refresh(now)
        return [self._rows[name] for name in sorted(self._rows)]
