"""What the node table and the fleet gauges read from the store while sessions come and go.

In a reconnect storm thousands of sessions connect within seconds and nobody need be looking:
the event hub must not refresh the table for no subscriber, a row rebuilt for a connect reads
that node's record only, and ``/metrics`` reads the records again only when the store's
revision moved. The store is a real ``SqliteStore`` that counts its node reads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pytest

from tunnel_server.api.hub import EventHub
from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.table import BULK_READ, NodeTable
from tunnel_server.status.fleet_metrics import FleetCollector
from tunnel_server.status.history import StatusHistory, StatusSettings
from tunnel_server.store import NodeRecord, SqliteStore, TokenRecord
from tunnel_server.tunnel.sessions import SessionRegistry

if TYPE_CHECKING:
    from collections.abc import Iterator
    from pathlib import Path

NOW = 1_800_000_000.0
NODES = 40


class CountingStore(SqliteStore):
    """A real SQLite store that counts how often node records are read."""

    listed = 0
    got = 0

    def list_nodes(self) -> list[NodeRecord]:
        self.listed += 1
        return super().list_nodes()

    def get_node(self, name: str) -> NodeRecord | None:
        self.got += 1
        return super().get_node(name)


def _join(store: SqliteStore, name: str) -> None:
    token = TokenRecord(
        id=f"t-{name}",
        secret_hash="0" * 64,
        kind="node",
        name=name,
        created_at=NOW,
        expires_at=NOW + 60,
        require_approval=False,
    )
    store.add_token(token)
    node = NodeRecord(name=name, kind="node", state="approved", created_at=NOW)
    store.redeem_token(token.id, now=NOW, node=node)


@pytest.fixture
def store(tmp_path: Path) -> Iterator[CountingStore]:
    opened = CountingStore.open(tmp_path)
    assert isinstance(opened, CountingStore)
    for i in range(NODES):
        _join(opened, f"edge-{i:02d}")
    yield opened
    opened.close()


@pytest.fixture
def history(tmp_path: Path) -> Iterator[StatusHistory]:
    opened = StatusHistory.open(tmp_path, settings=StatusSettings(), now=NOW)
    yield opened
    opened.close()


class Fleet:
    """Which nodes hold a session now, as the table asks for it."""

    def __init__(self) -> None:
        self.connected: set[str] = set()


@pytest.fixture
def fleet() -> Fleet:
    return Fleet()


@pytest.fixture
def table(store: CountingStore, history: StatusHistory, fleet: Fleet) -> NodeTable:
    return NodeTable(
        store=store,
        history=history,
        connected=lambda: set(fleet.connected),
        settings=ApiSettings(),
        full_refresh=5.0,
    )


def _row(table: NodeTable, name: str, now: float) -> dict[str, object]:
    return next(row.data for row in table.rows(now) if row.data["name"] == name)


def test_hub_without_subscribers_leaves_the_table_alone(
    store: CountingStore, table: NodeTable, fleet: Fleet
) -> None:
    hub = EventHub(settings=ApiSettings(), table=table)
    listed, got = store.listed, store.got
    for second in range(60):  # a minute of ticks while sessions churn
        fleet.connected.add(f"edge-{second % NODES:02d}")
        hub.tick(NOW + second / 2)
    assert (store.listed, store.got) == (listed, got)
    # What piled up is there as soon as someone looks.
    assert _row(table, "edge-07", NOW + 30)["connected"] is True


def test_hub_with_a_subscriber_sends_the_connects(table: NodeTable, fleet: Fleet) -> None:
    hub = EventHub(settings=ApiSettings(), table=table)
    queue = hub.subscribe()
    hub.tick(NOW)
    while not queue.empty():
        queue.get_nowait()
    fleet.connected.add("edge-03")
    hub.tick(NOW + 0.5)
    batch = queue.get_nowait()
    assert batch is not None
    assert batch.startswith("event: nodes\n")
    assert '"name":"edge-03"' in batch
    assert '"name":"edge-04"' not in batch


def test_a_connect_reads_its_own_record_only(
    store: CountingStore, table: NodeTable, fleet: Fleet
) -> None:
    table.rows(NOW)
    listed, got = store.listed, store.got
    # The agent's connect writes its version without a revision bump.
    store.touch_node("edge-05", now=NOW + 1, agent_version="9.9.9")
    fleet.connected.add("edge-05")
    assert table.refresh(NOW + 1) == {"edge-05"}
    assert (store.listed, store.got) == (listed, got + 1)
    row = _row(table, "edge-05", NOW + 1.5)
    assert row["agentVersion"] == "9.9.9"
    assert row["connected"] is True


def test_many_changes_read_every_record_at_once(
    store: CountingStore, table: NodeTable, fleet: Fleet
) -> None:
    table.rows(NOW)
    listed, got = store.listed, store.got
    fleet.connected |= {f"edge-{i:02d}" for i in range(NODES // BULK_READ + 1)}
    table.refresh(NOW + 1)
    assert (store.listed, store.got) == (listed + 1, got)


def test_a_revision_move_or_the_full_rebuild_reads_every_record(
    store: CountingStore, table: NodeTable
) -> None:
    table.rows(NOW)
    listed = store.listed
    table.refresh(NOW + 1)
    assert store.listed == listed  # nothing changed: nothing read
    store.set_node_state("edge-09", "revoked")
    assert "edge-09" in table.refresh(NOW + 2)
    assert store.listed == listed + 1
    assert _row(table, "edge-09", NOW + 2)["state"] == "revoked"
    assert len(table.refresh(NOW + 6)) == NODES  # the full rebuild, every full_refresh
    assert store.listed == listed + 2


def _scrape(collector: FleetCollector) -> dict[tuple[str, ...], float]:
    return {
        (sample.name, *sample.labels.values()): sample.value
        for family in collector.collect()
        for sample in family.samples
    }


def test_metrics_read_the_records_when_the_revision_moves(store: CountingStore) -> None:
    sessions = SessionRegistry()
    collector = FleetCollector(store=store, sessions=sessions, server_certificates=dict)
    listed = store.listed
    first = _scrape(collector)
    for _ in range(5):  # scrapes while sessions churn (last_seen writes, no revision bump)
        store.touch_node("edge-01", now=NOW + 5, agent_version="1.2.3")
        assert _scrape(collector) == first
    assert store.listed == listed + 1
    assert first["tunnel_server_nodes", "node", "offline"] == NODES
    store.set_node_state("edge-02", "revoked")
    after = _scrape(collector)
    assert store.listed == listed + 2
    assert after["tunnel_server_nodes", "node", "offline"] == NODES - 1
    assert ("tunnel_server_node_online", "edge-02", "node") not in after
