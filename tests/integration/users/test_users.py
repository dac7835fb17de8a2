"""Cloud users against a real server: tokens, console sessions, revocation, bad input, metrics.

Users are made and revoked through the server's own API (``/api/v1/users``) while it runs, as
an admin (or the CLI and console on their behalf) would.
"""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time
from collections.abc import Iterator

import pytest

from tests.harness.daemons import Agent, command
from tests.harness.procs import ServiceError
from tests.integration.users.conftest import UsersSystem, call


def _metric(system: UsersSystem, reason: str) -> float:
    _, body = system.server.get("/metrics")
    prefix = f'tunnel_server_auth_failures_total{{reason="{reason}"}} '
    for line in body.decode().splitlines():
        if line.startswith(prefix):
            return float(line.split()[1])
    return 0.0


def test_a_user_token_acts_with_its_role(users_system: UsersSystem) -> None:
    server, tokens = users_system.server, users_system.tokens
    me = call(server, "GET", "/api/v1/me", token=tokens["operator"])
    assert me.status == 200
    assert (me.body["user"], me.body["role"], me.body["clusters"]) == (
        "scoped-op",
        "operator",
        ["c-in"],
    )
    assert me.body["expiresAt"]
    assert call(server, "GET", "/api/v1/me").status == 401
    admin = call(server, "GET", "/api/v1/me", token=tokens["admin-token"])
    assert (admin.body["user"], admin.body["role"], admin.body["expiresAt"]) == (
        "admin",
        "admin",
        None,
    )
    assert call(server, "GET", "/api/v1/nodes", token=tokens["viewer"]).status == 200
    refused = call(server, "GET", "/api/v1/tokens", token=tokens["viewer"])
    assert (refused.status, refused.body["reason"]) == (403, "forbidden")
    assert "needs role admin" in refused.body["detail"]
    assert "'watcher'" in refused.body["detail"]
    refused = call(server, "POST", "/api/v1/tokens", token=tokens["operator"], body=b"{}")
    assert (refused.status, refused.body["reason"]) == (403, "forbidden"), "before the body"
    refused = call(
        server, "PATCH", "/api/v1/devices/edge-x:d/twin", token=tokens["viewer"], body=b"{}"
    )
    assert (refused.status, refused.body["reason"]) == (403, "forbidden")
    assert "needs role operator or admin" in refused.body["detail"]
    made = call(
        server,
        "POST",
        "/api/v1/tokens",
        token=tokens["admin-user"],
        body=b'{"name": "edge-from-user"}',
    )
    assert made.status == 201, made.body


def test_a_console_session_is_its_user_s(users_system: UsersSystem) -> None:
    server, tokens = users_system.server, users_system.tokens
    made = call(server, "POST", "/api/v1/sessions", token=tokens["operator"])
    assert made.status == 201
    assert (made.body["user"], made.body["role"], made.body["clusters"]) == (
        "scoped-op",
        "operator",
        ["c-in"],
    )
    session = made.body["token"]
    assert session.startswith("s2.")
    me = call(server, "GET", "/api/v1/me", token=session)
    assert (me.body["user"], me.body["role"]) == ("scoped-op", "operator")
    assert call(server, "GET", "/api/v1/tokens", token=session).status == 403
    again = call(server, "POST", "/api/v1/sessions", token=session)
    assert (again.status, again.body["reason"]) == (403, "admin_token_required")
    assert call(server, "DELETE", "/api/v1/sessions/current", token=session).status == 204
    gone = call(server, "GET", "/api/v1/me", token=session)
    assert (gone.status, gone.body["reason"]) == (401, "session_revoked")
    assert "user token" in gone.body["detail"]
    assert call(server, "GET", "/api/v1/me", token=tokens["operator"]).status == 200


def test_a_session_never_outlives_the_token_that_made_it(users_system: UsersSystem) -> None:
    token = users_system.create_user("brief", "viewer", ttl=120)
    made = call(users_system.server, "POST", "/api/v1/sessions", token=token)
    assert made.status == 201
    assert made.body["ttlSeconds"] <= 120


def _issue(system: UsersSystem, name: str) -> str:
    answer = system.admin("POST", f"/api/v1/users/{name}/tokens", {"ttlSeconds": 3600})
    assert answer.status == 201, answer
    token: str = answer.body["token"]
    return token


def _open_stream(system: UsersSystem, token: str) -> ssl.SSLSocket:
    server = system.server
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(
        b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        b"Connection: close\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    return tls


def _read_until(stream: ssl.SSLSocket, marker: bytes) -> bytes:
    seen = b""
    deadline = time.monotonic() + 15  # a guard against hangs, not a measurement
    while marker not in seen:
        assert time.monotonic() < deadline, seen[-500:]
        chunk = stream.recv(65536)
        if not chunk:
            break
        seen += chunk
    return seen


def _drain(stream: ssl.SSLSocket, *, quiet: float) -> tuple[bytes, bool]:
    """What arrives until the stream is quiet for ``quiet`` seconds, and whether it closed."""
    stream.settimeout(quiet)
    seen = b""
    deadline = time.monotonic() + 10 * quiet  # live batches may keep it from ever being quiet
    while time.monotonic() < deadline:
        try:
            chunk = stream.recv(65536)
        except TimeoutError:
            return seen, False
        if not chunk:
            return seen, True
        seen += chunk
    return seen, False


def test_revoking_a_user_stops_its_tokens_sessions_and_streams_at_once(
    users_system: UsersSystem,
) -> None:
    server = users_system.server
    token = users_system.create_user("leaver", "operator")
    second = _issue(users_system, "leaver")
    session = users_system.session(token)
    streams = [_open_stream(users_system, token), _open_stream(users_system, session)]
    try:
        for stream in streams:
            assert b"event: snapshot" in _read_until(stream, b"event: snapshot")
        bystander = _open_stream(users_system, users_system.tokens["viewer"])
        _read_until(bystander, b"event: snapshot")
        revoked = users_system.admin("DELETE", "/api/v1/users/leaver")
        assert (revoked.status, revoked.body["state"]) == (200, "revoked"), revoked
        assert revoked.body["revokedAt"]
        for credential in (token, second, session):
            answer = call(server, "GET", "/api/v1/nodes", token=credential)
            assert (answer.status, answer.body["reason"]) == (401, "user_revoked"), credential
            assert "'leaver' was revoked" in answer.body["detail"]
        for stream in streams:
            ended = _read_until(stream, b"event: revoked")
            assert b"user_revoked" in ended
        assert call(server, "GET", "/api/v1/nodes", token=users_system.tokens["viewer"]).status
        # The recheck that ended those streams checked this one in the same pass: whatever it
        # sent is on its way, and it is no end.
        seen, closed = _drain(bystander, quiet=0.5)
        assert not closed
        assert b"event: revoked" not in seen
        bystander.close()
    finally:
        for stream in streams:
            stream.close()
    listed = users_system.admin("GET", "/api/v1/users")
    assert token.split(".")[-1] not in json.dumps(listed.body)
    row = next(u for u in listed.body["items"] if u["name"] == "leaver")
    assert (row["state"], row["tokenCount"]) == ("revoked", 0)
    # Made again: a new user; nothing of the old one works again, not even its sessions.
    fresh = users_system.create_user("leaver", "viewer")
    old = call(server, "GET", "/api/v1/nodes", token=token)
    assert (old.status, old.body["reason"]) == (401, "invalid_token")
    old = call(server, "GET", "/api/v1/nodes", token=session)
    assert (old.status, old.body["reason"]) == (401, "user_unknown")
    me = call(server, "GET", "/api/v1/me", token=fresh)
    assert (me.body["user"], me.body["role"]) == ("leaver", "viewer")


def test_bad_credentials_get_a_clear_401_and_are_counted(users_system: UsersSystem) -> None:
    server = users_system.server
    before = {r: _metric(users_system, r) for r in ("invalid_token", "user_expired", "forbidden")}
    token = users_system.create_user("old-timer", "viewer")
    session = users_system.session(token)
    # Time passing, injected: the user's lifetime ends now.
    db = sqlite3.connect(server.data_dir / "store.db")
    db.execute("UPDATE users SET expires_at = ? WHERE name = 'old-timer'", (time.time() - 1,))
    db.commit()
    db.close()
    prefix, token_id, secret = token.split(".")
    cases = [
        ("x" * 600, "invalid_token", "too long"),
        ("efu1." + "A" * 12 + "." + "b" * 32, "invalid_token", "malformed user token"),
        ("efu1.short", "invalid_token", "malformed user token"),
        (f"{prefix}.{'z' * 12}.{secret}", "invalid_token", "unknown user token"),
        (f"{prefix}.{token_id}.{'0' * 32}", "invalid_token", "unknown user token"),
        ("\u00e9t\u00e9", "invalid_token", "not valid"),
        (token, "user_expired", "'old-timer' expired at"),
        (session, "user_expired", "this console session was made by it"),
    ]
    for credential, code, words in cases:
        answer = call(
            server, "GET", "/api/v1/nodes", headers={"Authorization": f"Bearer {credential}"}
        )
        assert (answer.status, answer.body["reason"]) == (401, code), credential
        assert words in answer.body["detail"], answer.body
        assert answer.headers["WWW-Authenticate"].startswith("Bearer")
    call(server, "GET", "/api/v1/tokens", token=users_system.tokens["viewer"])
    assert _metric(users_system, "invalid_token") >= before["invalid_token"] + 6
    assert _metric(users_system, "user_expired") >= before["user_expired"] + 2
    assert _metric(users_system, "forbidden") >= before["forbidden"] + 1
    assert server.process is not None
    assert "Traceback" not in server.process.tail()


# ---------------------------------------------------------------- the node proxy


@pytest.fixture(scope="module")
def proxied(users_system: UsersSystem) -> Iterator[dict[str, Agent]]:
    """A node agent whose own local API is a proxy target, and a cluster-kind agent."""
    workdir = users_system.workdir
    node = Agent(name="edge-p", workdir=workdir, server=users_system.server)
    node.targets = {"local": f"127.0.0.1:{node.local_api_port}"}
    cluster = Agent(name="clu-p", workdir=workdir, server=users_system.server)
    agents = {"node": node, "cluster": cluster}
    try:
        node.join()
        token = users_system.server.cli(
            "token", "create", "--kind", "cluster", "--name", "clu-p"
        ).strip()
        command(
            "edge-agent",
            "join",
            "--server",
            users_system.server.url,
            "--token",
            token,
            "--ca-hash",
            users_system.server.ca_hash,
            "--name",
            "clu-p",
            "--data-dir",
            cluster.data_dir,
        )
        for agent in agents.values():
            agent.start()
        for agent in agents.values():
            agent.wait_connected()
        yield agents
    except ServiceError:
        for agent in agents.values():
            if agent.process is not None:
                print(agent.process.tail())  # noqa: T201 - the failing agent's log
        raise
    finally:
        for agent in agents.values():
            agent.stop()


def test_the_node_proxy_needs_an_operator_and_reaches_nodes_only(
    users_system: UsersSystem, proxied: dict[str, Agent]
) -> None:
    server, tokens = users_system.server, users_system.tokens
    path = "/api/v1/nodes/edge-p/proxy/local/healthz"
    for label in ("admin-token", "admin-user", "operator"):
        answer = call(server, "GET", path, token=tokens[label])
        assert answer.status == 200, (label, answer.body)
        assert answer.body["status"] == "ok"
    refused = call(server, "GET", path, token=tokens["viewer"])
    assert (refused.status, refused.body["reason"]) == (403, "forbidden")
    assert "needs role operator or admin" in refused.body["detail"]
    refused = call(server, "GET", path, token=users_system.session(tokens["viewer"]))
    assert refused.status == 403
    assert call(server, "GET", path).status == 401
    assert call(server, "GET", path, token="nope").status == 401
    # A registered cluster's agent is online, but it is no node.
    assert proxied["cluster"].process is not None
    not_node = call(
        server, "GET", "/api/v1/nodes/clu-p/proxy/local/healthz", token=tokens["operator"]
    )
    assert (not_node.status, not_node.body["reason"]) == (404, "not_a_node")
    assert "registered cluster" in not_node.body["detail"]
    assert "/clusters/clu-p/" in not_node.body["detail"]


def test_a_revoked_operator_loses_the_node_proxy_too(
    users_system: UsersSystem, proxied: dict[str, Agent]
) -> None:
    """The node proxy remembers verified tokens; a revocation empties that memory."""
    server = users_system.server
    token = users_system.create_user("proxy-op", "operator")
    path = "/api/v1/nodes/edge-p/proxy/local/healthz"
    assert call(server, "GET", path, token=token).status == 200
    assert call(server, "GET", path, token=token).status == 200  # now from the cache
    assert proxied["node"].process is not None
    assert users_system.admin("DELETE", "/api/v1/users/proxy-op").status == 200
    # Revoked through the API: the node proxy's cache is emptied by the revocation itself.
    answer = call(server, "GET", path, token=token)
    assert (answer.status, answer.body["reason"]) == (401, "user_revoked")


def test_a_scoped_caller_sees_no_other_cluster_among_the_nodes(
    users_system: UsersSystem, proxied: dict[str, Agent]
) -> None:
    """Clusters share the node table: node routes show a scoped caller its own clusters only."""
    server, tokens = users_system.server, users_system.tokens
    token = server.cli("token", "create", "--kind", "cluster", "--name", "c-in").strip()
    command(
        "edge-agent",
        "join",
        "--server",
        server.url,
        "--token",
        token,
        "--ca-hash",
        server.ca_hash,
        "--name",
        "c-in",
        "--data-dir",
        users_system.workdir / "cluster-c-in",
    )
    assert proxied["cluster"].process is not None
    everything = {
        n["name"]
        for n in call(server, "GET", "/api/v1/nodes", token=tokens["viewer"]).body["items"]
    }
    assert {"edge-p", "clu-p", "c-in"} <= everything
    scoped = call(server, "GET", "/api/v1/nodes", token=tokens["operator"]).body
    names = {n["name"] for n in scoped["items"]}
    assert "clu-p" not in names
    assert {"edge-p", "c-in"} <= names
    assert len(names) == len(everything) - 1
    overview = call(server, "GET", "/api/v1/overview", token=tokens["operator"]).body
    assert overview["nodes"]["total"] == len(everything) - 1
    assert "clu-p" not in str(overview["warnings"])
    for path in ("/api/v1/nodes/clu-p", "/api/v1/nodes/clu-p/history"):
        refused = call(server, "GET", path, token=tokens["operator"])
        assert (refused.status, refused.body["reason"]) == (403, "cluster_out_of_scope"), path
        assert call(server, "GET", path, token=tokens["viewer"]).status == 200
    assert call(server, "GET", "/api/v1/nodes/c-in", token=tokens["operator"]).status == 200
    stream = _open_stream(users_system, tokens["operator"])
    try:
        snapshot = _read_until(stream, b"event: snapshot")
        while b"\n\n" not in snapshot.split(b"event: snapshot", 1)[1]:
            snapshot += _read_until(stream, b"\n")
    finally:
        stream.close()
    assert b'"name":"c-in"' in snapshot
    assert b'"name":"edge-p"' in snapshot
    assert b"clu-p" not in snapshot
