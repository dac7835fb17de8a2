"""The API's write routes against a real server, real joins and a real agent.

Node approve / deny / revoke (a revoked node's tunnel session ends at once), bootstrap token
revocation (its join is refused), the admin token's rotation (the old token and its console
sessions are refused at once, its live streams end), and a node list paged while a node joins
between two pages. Each role is a real user made by the CLI.
"""

from __future__ import annotations

import json
import stat
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.daemons import BIN, Server, command
from tests.harness.waiting import eventually
from tests.integration.console.conftest import Api, ReportingAgent
from tests.integration.console.test_api import _open_stream, _read_until


@dataclass
class Fleet:
    server: Server
    admin: Api
    operator: Api
    viewer: Api
    workdir: Path


def _user(server: Server, name: str, role: str) -> Api:
    token = server.cli("users", "create", name, "--role", role).strip()
    return Api(server=server, token=token)


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Fleet]:
    workdir = tmp_path_factory.mktemp("api-writes")
    server = Server(workdir=workdir)
    server.start()
    try:
        yield Fleet(
            server=server,
            admin=Api(server=server, token=server.admin_token),
            operator=_user(server, "ops", "operator"),
            viewer=_user(server, "watcher", "viewer"),
            workdir=workdir,
        )
    finally:
        server.stop()


def _token(fleet: Fleet, name: str, **fields: object) -> dict[str, object]:
    body = json.dumps({"name": name, **fields}).encode()
    status, created, _ = fleet.admin.call("POST", "/api/v1/tokens", body=body)
    assert status == 201, created
    return created


def _join(fleet: Fleet, name: str, token: object, *extra: str) -> subprocess.CompletedProcess[str]:
    """``edge-agent join`` to its end, whatever its exit code (they are what is tested)."""
    return subprocess.run(
        [
            str(BIN / "edge-agent"),
            "join",
            "--server",
            fleet.server.url,
            "--token",
            str(token),
            "--ca-hash",
            fleet.server.ca_hash,
            "--name",
            name,
            "--data-dir",
            str(fleet.workdir / f"agent-{name}"),
            *extra,
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _pending(fleet: Fleet, name: str) -> dict[str, object]:
    created = _token(fleet, name, requireApproval=True)
    waited = _join(fleet, name, created["token"], "--wait-approval", "0.2")
    assert waited.returncode == 7, waited.stderr  # still waiting: resumable
    node = fleet.admin.node(name)
    assert (node["state"], node["status"]) == ("pending", "pending")
    return created


def _act(api: Api, name: str, verb: str) -> tuple[int, dict[str, object]]:
    status, body, _ = api.call("POST", f"/api/v1/nodes/{name}/{verb}")
    return status, body


def test_approve_lets_a_pending_join_finish(fleet: Fleet) -> None:
    created = _pending(fleet, "edge-wait")
    status, body = _act(fleet.viewer, "edge-wait", "approve")
    assert (status, body["reason"]) == (403, "forbidden"), "a viewer may not"
    assert "operator or admin" in str(body["detail"])
    status, node = _act(fleet.operator, "edge-wait", "approve")
    assert status == 200, node
    assert (node["name"], node["state"]) == ("edge-wait", "approved")
    for verb in ("approve", "deny"):  # only a pending join can be decided on
        status, body = _act(fleet.operator, "edge-wait", verb)
        assert (status, body["reason"]) == (409, "wrong_state"), (verb, body)
        assert body["state"] == "approved"
        assert "/api/v1/nodes/edge-wait/revoke" in str(body["detail"])
    resumed = _join(fleet, "edge-wait", created["token"], "--wait-approval", "10")
    assert resumed.returncode == 0, resumed.stderr
    assert fleet.admin.node("edge-wait")["certExpiresAt"] is not None


def test_deny_refuses_a_pending_join(fleet: Fleet) -> None:
    created = _pending(fleet, "edge-no")
    status, node = _act(fleet.operator, "edge-no", "deny")
    assert status == 200, node
    assert node["state"] == "revoked"
    again = _join(fleet, "edge-no", created["token"], "--wait-approval", "10")
    assert again.returncode == 8, again.stderr  # the join was rejected
    assert "rejected" in again.stderr
    status, body = _act(fleet.operator, "edge-no", "deny")
    assert (status, body["reason"]) == (409, "wrong_state")
    status, body = _act(fleet.operator, "edge-no", "approve")
    assert (status, body["reason"]) == (409, "wrong_state"), "a denied join stays denied"
    assert "new token" in str(body["detail"])


def test_revoke_ends_the_tunnel_session_at_once(fleet: Fleet) -> None:
    agent = ReportingAgent(name="edge-cut", workdir=fleet.workdir, server=fleet.server)
    agent.join()
    agent.start()
    try:
        agent.wait_connected()
        fleet.admin.wait_status("edge-cut", "online")
        status, body = _act(fleet.viewer, "edge-cut", "revoke")
        assert (status, body["reason"]) == (403, "forbidden")
        status, node = _act(fleet.operator, "edge-cut", "revoke")
        assert status == 200, node
        assert (node["state"], node["status"]) == ("revoked", "revoked")
        # The agent's session ends: the route closed it (the reason is the route's own, not
        # the store watcher's "certificate is no longer valid").
        eventually(
            agent.status,
            lambda status: not status["tunnel"]["connected"],  # type: ignore[index]
            what="the revoked agent's tunnel session ended",
            every=0.05,
        )
        assert fleet.admin.node("edge-cut")["connected"] is False
        log = (fleet.workdir / "agent-edge-cut.log").read_text()
        assert "revoked by an operator" in log, log[-2000:]
        # Idempotent: revoking again answers the node as it is.
        status, node = _act(fleet.operator, "edge-cut", "revoke")
        assert (status, node["state"]) == (200, "revoked")
    finally:
        agent.stop()


def test_a_revoked_token_cannot_join(fleet: Fleet) -> None:
    created = _token(fleet, "edge-never")
    path = f"/api/v1/tokens/{created['id']}"
    for api in (fleet.operator, fleet.viewer):
        for method in ("GET", "DELETE"):
            status, body, _ = api.call(method, path)
            assert (status, body["reason"]) == (403, "forbidden"), (method, body)
    status, body, _ = fleet.admin.call("DELETE", path)
    assert (status, body) == (204, {})
    token = fleet.admin.get(path)
    assert (token["status"], token["usedAt"]) == ("revoked", None)
    assert token["revokedAt"] is not None
    assert fleet.admin.call("DELETE", path)[0] == 204, "revoking again is not an error"
    refused = _join(fleet, "edge-never", created["token"])
    assert refused.returncode == 4, refused.stderr  # token rejected
    assert "revoked" in refused.stderr
    status, answer, _ = Api(server=fleet.server).call(
        "POST", "/api/v1/join", body=json.dumps({"token": created["token"], "csr": "x"}).encode()
    )
    assert (status, answer["reason"]) == (401, "invalid_token")
    assert fleet.admin.call("GET", "/api/v1/nodes/edge-never")[0] == 404


def _names(api: Api, query: str) -> tuple[list[str], str | None]:
    page = api.get(f"/api/v1/nodes?{query}")
    names = [row["name"] for row in page["items"]]
    token = page["metadata"]["continue"]
    if token is not None:
        assert page["metadata"]["remainingItemCount"] >= 1
    return names, token


def test_paging_neither_skips_nor_repeats_when_a_node_joins(fleet: Fleet) -> None:
    for name in ("page-b", "page-d", "page-f", "page-h", "page-j"):
        _join_plain(fleet, name)
    first, token = _names(fleet.viewer, "q=page-&limit=2")
    assert first == ["page-b", "page-d"]
    assert token is not None
    # Two join between the pages: one before the cursor (page-a), one after it (page-g).
    _join_plain(fleet, "page-a")
    _join_plain(fleet, "page-g")
    seen = list(first)
    while token is not None:
        names, token = _names(fleet.viewer, f"q=page-&limit=2&continue={token}")
        seen += names
    assert seen == ["page-b", "page-d", "page-f", "page-g", "page-h", "page-j"]
    # Descending by name, the same walk.
    first, token = _names(fleet.viewer, "q=page-&limit=3&sort=-name")
    assert first == ["page-j", "page-h", "page-g"]
    _join_plain(fleet, "page-i")  # after the cursor in this order: not shown again
    _join_plain(fleet, "page-c")  # still to come
    names, token = _names(fleet.viewer, f"q=page-&limit=10&sort=-name&continue={token}")
    assert (names, token) == (["page-f", "page-d", "page-c", "page-b", "page-a"], None)
    # A token is bound to its query: sent with another, it is refused, not misread.
    _, token = _names(fleet.viewer, "q=page-&limit=2")
    status, body, _ = fleet.viewer.call("GET", f"/api/v1/nodes?q=page&limit=2&continue={token}")
    assert (status, body["reason"]) == (400, "bad_continue")


def _join_plain(fleet: Fleet, name: str) -> None:
    created = _token(fleet, name)
    joined = _join(fleet, name, created["token"])
    assert joined.returncode == 0, joined.stderr


def test_tokens_list_newest_first_in_pages(fleet: Fleet) -> None:
    made = [_token(fleet, f"list-{i}")["id"] for i in range(3)]
    page = fleet.admin.get("/api/v1/tokens?limit=2")
    assert [t["id"] for t in page["items"]] == made[::-1][:2]
    nxt = fleet.admin.get(f"/api/v1/tokens?limit=2&continue={page['metadata']['continue']}")
    assert nxt["items"][0]["id"] == made[0]
    assert set(page["items"][0]) == {
        "id", "kind", "name", "status", "createdAt", "expiresAt", "usedAt", "revokedAt",
        "requireApproval",
    }  # fmt: skip


# ---------------------------------------------------------------- the admin token


@pytest.fixture
def rotating(tmp_path: Path) -> Iterator[Server]:
    server = Server(workdir=tmp_path)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def test_rotating_the_admin_token_refuses_the_old_one_at_once(rotating: Server) -> None:
    server = rotating
    old = Api(server=server, token=server.admin_token)
    viewer = _user(server, "looker", "viewer")
    operator = _user(server, "worker", "operator")
    status, made, _ = old.call("POST", "/api/v1/sessions")
    assert status == 201, made
    old_session = made["token"]
    status, made, _ = operator.call("POST", "/api/v1/sessions")
    user_session = made["token"]
    for api in (viewer, operator):
        status, body, _ = api.call("POST", "/api/v1/admin-token/rotate")
        assert (status, body["reason"]) == (403, "forbidden")
    status, body, _ = old.call("POST", "/api/v1/admin-token/rotate", token=old_session)
    assert status == 200, body  # a console session of the admin may rotate too
    assert old.call("GET", "/api/v1/me", token=old_session)[0] == 401, "and is refused after"
    # Start again from the token the file now holds: one rotation under test, step by step.
    first = server.admin_token
    first_session = Api(server=server, token=first).call("POST", "/api/v1/sessions")[1]["token"]
    with _open_stream(server, first) as stream, _open_stream(server, first_session) as streamed:
        assert b"event: snapshot" in _read_until(stream, b"event: snapshot")
        assert b"event: snapshot" in _read_until(streamed, b"event: snapshot")
        status, rotated, _ = old.call("POST", "/api/v1/admin-token/rotate", token=first)
        assert status == 200, rotated
        new = rotated["token"]
        assert new != first
        # Both the token's and its session's live streams end with a problem document.
        for tls, reason in ((stream, b"invalid_token"), (streamed, b"session_revoked")):
            tail = _read_until(tls, b"")
            event = tail[tail.index(b"event: revoked") :]
            assert b'"reason":"' + reason + b'"' in event, event
    path = server.data_dir / "admin-token"
    assert path.read_text().strip() == new
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    for token, refusal in ((first, "invalid_token"), (first_session, "session_revoked")):
        status, body, headers = old.call("GET", "/api/v1/nodes", token=token)
        assert (status, body["reason"]) == (401, refusal), body
        assert headers["WWW-Authenticate"].startswith("Bearer")
    assert "rotated" in str(old.call("GET", "/api/v1/me", token=first_session)[1]["detail"])
    status, me, _ = old.call("GET", "/api/v1/me", token=new)
    assert (status, me["user"], me["role"]) == (200, "admin", "admin")
    status, made, _ = old.call("POST", "/api/v1/sessions", token=new)
    assert status == 201
    assert old.call("GET", "/api/v1/nodes", token=made["token"])[0] == 200
    # Users and their sessions are not the admin token: they keep working.
    assert operator.call("GET", "/api/v1/me", token=user_session)[0] == 200
    assert viewer.call("GET", "/api/v1/me")[0] == 200
    # The server reads the rotated token after a restart too.
    server.stop()
    server.start()
    assert old.call("GET", "/api/v1/me", token=new)[0] == 200
    assert old.call("GET", "/api/v1/me", token=first)[0] == 401
    assert command("tunnel-server", "ca-hash", "--data-dir", server.data_dir).strip()
