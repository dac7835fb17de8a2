"""``last_seen`` of connects and disconnects: one write for many, a new agent version at once."""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tunnel_server.store import NodeRecord, SqliteStore, TokenRecord
from tunnel_server.tunnel.sessions import SeenWriter

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NOW = 1_800_000_000.0


class WriteCountingStore(SqliteStore):
    """A real SQLite store that counts its ``last_seen`` writes."""

    single = 0
    batches: list[list[str]]

    def touch_node(self, name: str, *, now: float, agent_version: str | None = None) -> None:
        self.single += 1
        super().touch_node(name, now=now, agent_version=agent_version)

    def touch_nodes(self, names: list[str], *, now: float) -> None:
        self.batches.append(list(names))
        super().touch_nodes(names, now=now)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[WriteCountingStore]:
    opened = WriteCountingStore.open(tmp_path)
    assert isinstance(opened, WriteCountingStore)
    opened.batches = []
    for i in range(50):
        name = f"edge-{i:02d}"
        token = TokenRecord(
            id=f"t-{name}",
            secret_hash="0" * 64,
            kind="node",
            name=name,
            created_at=NOW,
            expires_at=NOW + 60,
            require_approval=False,
        )
        opened.add_token(token)
        node = NodeRecord(
            name=name, kind="node", state="approved", created_at=NOW, agent_version="1.0"
        )
        opened.redeem_token(token.id, now=NOW, node=node)
    yield opened
    opened.close()


def test_a_storm_of_connects_is_one_write(store: WriteCountingStore) -> None:
    seen = SeenWriter(store)
    for i in range(50):
        seen.connected(f"edge-{i:02d}", agent_version="1.0", now=NOW + 1)
    for i in range(10):
        seen.seen(f"edge-{i:02d}")  # some drop again
    assert (store.single, store.batches, seen.pending) == (0, [], 50)
    assert seen.flush(now=NOW + 2) == 50
    assert store.single == 0
    assert len(store.batches) == 1
    assert {n.last_seen for n in store.list_nodes()} == {NOW + 2}
    assert seen.flush(now=NOW + 3) == 0
    assert len(store.batches) == 1


def test_a_new_agent_version_is_written_at_once(store: WriteCountingStore) -> None:
    seen = SeenWriter(store)
    seen.connected("edge-07", agent_version="2.0", now=NOW + 1)
    seen.connected("edge-08", agent_version=None, now=NOW + 1)
    record = store.get_node("edge-07")
    assert record is not None
    assert (record.agent_version, record.last_seen) == ("2.0", NOW + 1)
    assert store.single == 1
    assert seen.pending == 1


def test_connected_nodes_are_written_with_the_queue(store: WriteCountingStore) -> None:
    seen = SeenWriter(store)
    seen.seen("edge-01")
    assert seen.flush(now=NOW + 30, also=["edge-02", "edge-01"]) == 2
    assert store.batches == [["edge-01", "edge-02"]]
