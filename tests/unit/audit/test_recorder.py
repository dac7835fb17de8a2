"""The audit middleware's rules, its answer when the audit file fails, and the event bounds."""

from __future__ import annotations

import logging
import sqlite3
from pathlib import Path

import prometheus_client
import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from tunnel_server.audit.log_store import AuditLog, AuditQuery, AuditRecord
from tunnel_server.audit.recorder import (
    AUDIT_FAILURES_KEY,
    AUDIT_LOG_KEY,
    action_of,
    add_request_id,
    audit_writes,
    audited,
    request_id,
)
from tunnel_server.audit.settings import AuditSettings, from_environment
from tunnel_server.status.node_events import NodeEvents, NodeEventSettings
from tunnel_server.store import SqliteStore
from tunnel_server.web.errors import api_errors


@pytest.mark.parametrize(
    ("method", "route", "action"),
    [
        ("POST", "/api/v1/tokens", "tokens.create"),
        ("POST", "/api/v1/nodes/{name}/approve", "nodes.approve"),
        ("POST", "/api/v1/admin-token/rotate", "admin-token.rotate"),
        ("POST", "/api/v1/users/{name}/tokens", "users.tokens"),
        ("DELETE", "/api/v1/tokens/{id}", "tokens.delete"),
        ("DELETE", "/api/v1/sessions/current", "sessions.current.delete"),
        ("PATCH", "/api/v1/devices/{id}/twin", "devices.twin.update"),
        ("PUT", "/api/v1/things/{id}", "things.replace"),
        ("POST", "/api/v1/nodes/{name}/proxy/{tail}", "nodes.proxy.create"),
        ("POST", "/api/v2/whatever", "unknown"),
    ],
)
def test_actions(method: str, route: str, action: str) -> None:
    assert action_of(method, route) == action


def test_what_is_audited() -> None:
    assert audited("POST", "/api/v1/tokens")
    assert audited("DELETE", "/api/v1/nodes/x/proxy/svc/a")
    assert not audited("GET", "/api/v1/tokens")
    assert not audited("POST", "/api/v1/join")
    assert not audited("POST", "/api/v1/renew")
    assert not audited("POST", "/clusters/c1/api/v1/namespaces")


def test_request_ids() -> None:
    assert request_id("abc-1.2:3_x") == "abc-1.2:3_x"
    for bad in (None, "", "a b", "x" * 65, "é", "a\nb"):
        made = request_id(bad)
        assert made != bad
        assert len(made) == 24


def test_settings_from_the_environment() -> None:
    assert from_environment({}) == AuditSettings()
    settings = from_environment({"EDGEFLEET_AUDIT_MAX_ROWS": "10", "EDGEFLEET_AUDIT_MAX_AGE": "60"})
    assert (settings.max_rows, settings.max_age) == (10, 60.0)
    for variable, value in (("EDGEFLEET_AUDIT_MAX_ROWS", "0"), ("EDGEFLEET_AUDIT_MAX_AGE", "x")):
        with pytest.raises(ValueError, match=variable):
            from_environment({variable: value})


class _BrokenLog(AuditLog):
    """Injects the fault: a file that refuses every insert (a full disk)."""

    def append(self, record: AuditRecord) -> int:  # noqa: ARG002 - refuses any record
        raise sqlite3.OperationalError("database or disk is full")


async def _created(_request: web.Request) -> web.Response:
    return web.json_response({"id": "t1"}, status=201)


async def test_a_failing_audit_file_still_answers(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    app = web.Application(middlewares=[audit_writes, api_errors])
    registry = prometheus_client.CollectorRegistry()
    app[AUDIT_LOG_KEY] = _BrokenLog(tmp_path / "audit.db", settings=AuditSettings())
    app[AUDIT_FAILURES_KEY] = prometheus_client.Counter(
        "tunnel_server_audit_write_failures", "test", registry=registry
    )
    app.on_response_prepare.append(add_request_id)
    app.router.add_post("/api/v1/things", _created)
    caplog.set_level(logging.INFO, logger="tunnel_server.audit")
    async with TestClient(TestServer(app)) as client:
        answer = await client.post("/api/v1/things", headers={"X-Request-Id": "r-1"})
        assert answer.status == 201
        assert answer.headers["X-Request-Id"] == "r-1"
    assert registry.get_sample_value("tunnel_server_audit_write_failures_total") == 1
    lines = [r for r in caplog.records if r.name == "tunnel_server.audit"]
    assert [r.getMessage() for r in lines] == ["api write", "audit record not stored"]
    assert lines[0].kv["target"] == "t1"  # type: ignore[attr-defined]
    app[AUDIT_LOG_KEY].close()


async def test_pruning_by_count_keeps_the_newest(tmp_path: Path) -> None:
    log = AuditLog(tmp_path / "audit.db", settings=AuditSettings(max_rows=3, prune_batch=2))
    for i in range(7):
        log.append(
            AuditRecord(
                at=1000.0 + i,
                user="admin",
                role="admin",
                method="POST",
                route="/api/v1/x",
                action="x.create",
                target=None,
                status=201,
                reason=None,
                request_id=f"r{i}",
                peer=None,
            )
        )
    assert await log.prune(now=1010.0) == 4
    kept = log.list(AuditQuery(), before_id=None, limit=10)
    assert [r.request_id for r in kept] == ["r6", "r5", "r4"]
    # By age: everything before 1005.5 goes (90 days ago, here).
    assert await log.prune(now=1005.5 + AuditSettings().max_age) == 2
    assert [r.request_id for r in log.list(AuditQuery(), before_id=None, limit=10)] == ["r6"]
    log.close()


def test_node_events_are_capped_per_node(tmp_path: Path) -> None:
    store = SqliteStore.open(tmp_path)
    events = NodeEvents(
        tmp_path / "events.db", store=store, settings=NodeEventSettings(max_per_node=3)
    )
    for i in range(5):
        events.note("n1", "online", f"session {i}", now=100.0 + i)
    events.note("n2", "offline", "gone", now=200.0)
    assert [e.detail for e in events.events("n1")] == ["session 2", "session 3", "session 4"]
    assert len(events.events("n2")) == 1
    assert events.prune(now=104.5 + NodeEventSettings().max_age) == 3
    assert events.events("n1") == []
    assert [e.detail for e in events.events("n2")] == ["gone"]
    events.close()
    store.close()


async def _replaced(_request: web.Request) -> web.Response:
    return web.json_response({})


async def test_a_fleet_write_names_its_kind_in_the_action_and_its_object_as_target(
    tmp_path: Path,
) -> None:
    app = web.Application(middlewares=[audit_writes, api_errors])
    app[AUDIT_LOG_KEY] = AuditLog(tmp_path / "audit.db", settings=AuditSettings())
    app[AUDIT_FAILURES_KEY] = prometheus_client.Counter(
        "tunnel_server_audit_write_failures", "test", registry=prometheus_client.CollectorRegistry()
    )
    app.router.add_put("/api/v1/fleet/{plural}/{name}", _replaced)
    async with TestClient(TestServer(app)) as client:
        assert (await client.put("/api/v1/fleet/placements/web")).status == 200
        # Not a kind: kept out of the action, so a client cannot write what the log says.
        assert (await client.put("/api/v1/fleet/Bad%20Kind/x")).status == 200
    records = app[AUDIT_LOG_KEY].list(AuditQuery(), before_id=None, limit=10)
    assert [(r.action, r.target) for r in records] == [
        ("fleet.replace", "x"),
        ("fleet.placements.replace", "web"),
    ]
    app[AUDIT_LOG_KEY].close()
