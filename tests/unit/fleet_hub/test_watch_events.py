"""Which event a filtered watch sends for a change: objects entering and leaving its filter."""

from __future__ import annotations

from pathlib import Path

import pytest

from fleet_model.labels import parse_label_selector
from tunnel_server.fleet.hub.api import event_for
from tunnel_server.fleet.hub.store import Change, StoredObject
from tunnel_server.fleet.hub.store_sqlite import SqliteFleetStore

SELECTOR = parse_label_selector("env=prod")


def _visible(obj: StoredObject) -> bool:
    return SELECTOR.matches(obj.labels) and obj.spec.get("clusterName") != "hidden"


def _kinds(changes: list[Change]) -> list[str | None]:
    out: list[str | None] = []
    for change in changes:
        event = event_for(change, _visible)
        out.append(None if event is None else event.decode().split("\n", 1)[0])
    return out


@pytest.mark.parametrize(
    ("writes", "expected"),
    [
        # (labels, clusterName) per write of one Work, then the events a env=prod watch sees
        ([("prod", "c1"), ("prod", "c3")], ["event: ADDED", "event: MODIFIED"]),
        ([("dev", "c1"), ("prod", "c1")], [None, "event: ADDED"]),
        ([("prod", "c1"), ("dev", "c1"), ("dev", "c2")], ["event: ADDED", "event: DELETED", None]),
        ([("prod", "c1"), ("prod", "hidden")], ["event: ADDED", "event: DELETED"]),
        ([("prod", "hidden"), ("prod", "c1")], [None, "event: ADDED"]),
    ],
)
def test_events_of_a_filtered_watch(
    tmp_path: Path, writes: list[tuple[str, str]], expected: list[str | None]
) -> None:
    store = SqliteFleetStore.open(tmp_path)
    try:
        for env, cluster in writes:
            store.put(
                "Work", "w", labels={"env": env}, annotations={}, spec={"clusterName": cluster},
                now=1.0,
            )  # fmt: skip
        assert _kinds(store.changes_since(0)) == expected
        store.delete("Work", "w")
        last = store.changes_since(store.revision() - 1)
        env, cluster = writes[-1]
        seen_last = env == "prod" and cluster != "hidden"
        assert _kinds(last) == ["event: DELETED" if seen_last else None]
    finally:
        store.close()
