"""Node rows, warnings and the overview: pure functions of records and time."""

from __future__ import annotations

from tunnel_server.api.settings import ApiSettings
from tunnel_server.api.views import overview, status_of, summary, warnings_of
from tunnel_server.status.history import NodeLive
from tunnel_server.store import NodeRecord

NOW = 1_800_000_000.0
DAY = 86400.0


def node(**changes: object) -> NodeRecord:
    fields: dict[str, object] = {
        "name": "n1",
        "kind": "node",
        "state": "approved",
        "created_at": NOW - 10 * DAY,
        "cert_not_after": NOW + 20 * DAY,
    }
    fields.update(changes)
    return NodeRecord(**fields)  # type: ignore[arg-type]


def live(**changes: object) -> NodeLive:
    state = NodeLive(name="n1", last_report=NOW - 1, online=True, changed_at=NOW - 100)
    for key, value in changes.items():
        setattr(state, key, value)
    return state


def codes(record: NodeRecord, status: NodeLive | None) -> list[str]:
    return [w["code"] for w in warnings_of(record, status, now=NOW, settings=ApiSettings())]


def test_status() -> None:
    assert status_of(node(), None) == "unknown"
    assert status_of(node(), live()) == "online"
    assert status_of(node(), live(online=False)) == "offline"
    assert status_of(node(state="pending"), live()) == "pending"
    assert status_of(node(state="revoked"), None) == "revoked"


def test_warnings() -> None:
    assert codes(node(), live()) == []
    assert codes(node(cert_not_after=NOW + 3 * DAY), live()) == ["cert_expiring"]
    assert codes(node(cert_not_after=NOW - 1), live()) == ["cert_expired"]
    assert codes(node(), live(metrics={"disk.percent": 91.0})) == ["disk_full"]
    assert codes(node(), live(metrics={"memory.percent": 99})) == ["memory_high"]
    stale = live(online=False, last_report=NOW - 7200)
    assert codes(node(last_seen=NOW - 7200), stale) == ["not_seen"]
    assert codes(node(), live(online=False, last_report=NOW - 60)) == []
    assert codes(node(state="pending"), None) == ["pending_approval"]


def test_warnings_are_ordered_by_severity() -> None:
    found = warnings_of(
        node(cert_not_after=NOW + 3600),
        live(metrics={"disk.percent": 92.0}),
        now=NOW,
        settings=ApiSettings(),
    )
    assert [w["severity"] for w in found] == ["critical", "warning"]
    assert "expires in 60 minutes" in found[0]["message"]


def test_summary_and_overview() -> None:
    metrics = {"cpu.percent": 5.0, "boot.time": NOW - 100, "agent.version": "9", "os.name": 7}
    row = summary(node(), live(metrics=metrics), connected=True, now=NOW, settings=ApiSettings())
    assert row["cpu_percent"] == 5.0
    assert row["uptime_seconds"] == 100
    assert row["agent_version"] == "9"
    assert row["os"] is None, "a non-string is not shown as the OS"
    assert row["last_seen"] == "2027-01-15T08:00:00+00:00"
    other = summary(
        node(name="n2", state="pending"), None, connected=False, now=NOW, settings=ApiSettings()
    )
    result = overview([row, other], now=NOW)
    assert result["nodes"] == {
        "total": 2,
        "online": 1,
        "offline": 0,
        "unknown": 0,
        "pending": 1,
        "revoked": 0,
    }
    assert result["warnings"] == [
        {
            "node": "n2",
            **warnings_of(node(name="n2", state="pending"), None, now=NOW, settings=ApiSettings())[
                0
            ],
        }
    ]
