"""The REST API against a real server process: auth, sign-out, errors, limits, nodes, events."""

from __future__ import annotations

import json
import socket
import sqlite3
import ssl
import time

from tests.harness.daemons import Server, command
from tests.harness.waiting import eventually
from tests.integration.console.conftest import Api, ConsoleSystem, ReportingAgent

SIGN_OUT = "/api/v1/sessions/current"


def test_every_call_needs_a_credential(console_system: ConsoleSystem) -> None:
    api = console_system.api
    for path in ("/api/v1/nodes", "/api/v1/overview", "/api/v1/tokens", "/api/v1/events"):
        status, body, headers = api.call("GET", path, token="")
        assert status == 401, path
        assert body["reason"] == "unauthenticated"
        assert "admin-token" in body["detail"]
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = api.call(
        "GET", "/api/v1/nodes", token="abcdef.wrongwrongwrongwrongwrongwrong12"
    )
    assert (status, body["reason"]) == (401, "invalid_token")
    status, body, _ = api.call(
        "GET", "/api/v1/nodes", headers={"Authorization": "Basic x"}, token=""
    )
    assert (status, body["reason"]) == (401, "unauthenticated")


def test_sessions_expire_and_forgeries_fail(console_system: ConsoleSystem) -> None:
    from tunnel_server.api.signer import SessionSigner  # noqa: PLC0415 - the server's own signer

    api = console_system.api
    status, body, _ = api.call("POST", "/api/v1/sessions")
    assert status == 201
    session = body["token"]
    assert api.call("GET", "/api/v1/nodes", token=session)[0] == 200
    status, body, _ = api.call("POST", "/api/v1/sessions", token=session)
    assert (status, body["reason"]) == (403, "admin_token_required")
    forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    status, body, _ = api.call("GET", "/api/v1/nodes", token=forged)
    assert (status, body["reason"]) == (401, "invalid_session")
    signer = SessionSigner.load_or_create(console_system.server.data_dir)
    expired, _ = signer.issue(now=time.time() - 7200, ttl=60)
    status, body, _ = api.call("GET", "/api/v1/nodes", token=expired)
    assert (status, body["reason"]) == (401, "session_expired")
    assert "sign in again" in body["detail"]


def test_malformed_and_oversized_requests_get_clear_4xx(console_system: ConsoleSystem) -> None:
    api = console_system.api
    cases = [
        ("POST", "/api/v1/tokens", b"{not json", 400, "bad_json"),
        ("POST", "/api/v1/tokens", b"[1, 2]", 400, "bad_json"),
        ("POST", "/api/v1/tokens", b"", 400, "bad_json"),
        ("POST", "/api/v1/tokens", b'{"name": "Bad Name!"}', 400, "bad_name"),
        ("POST", "/api/v1/tokens", b'{"name": "ok", "ttlSeconds": 1}', 400, "bad_request"),
        ("POST", "/api/v1/tokens", b'{"name": "ok", "ttl_seconds": 60}', 400, "unknown_field"),
        ("POST", "/api/v1/tokens", b'{"name": "ok", "extra": 1}', 400, "unknown_field"),
        ("POST", "/api/v1/tokens", b'{"name": "ok", "manifest": true}', 400, "bad_request"),
        ("POST", "/api/v1/tokens", b'{"name": "ok", "image": "x"}', 400, "bad_request"),
        ("POST", "/api/v1/tokens", b'{"name": "' + b"x" * 40_000 + b'"}', 413, "body_too_large"),
        ("GET", "/api/v1/nodes?limit=0", None, 400, "bad_parameter"),
        ("GET", "/api/v1/nodes?sort=bogus", None, 400, "bad_parameter"),
        ("GET", "/api/v1/nodes?sort=cpu_percent", None, 400, "bad_parameter"),
        ("GET", "/api/v1/nodes?continue=garbage", None, 400, "bad_continue"),
        ("GET", "/api/v1/tokens?limit=1001", None, 400, "bad_parameter"),
        ("GET", "/api/v1/tokens/NOPE!!", None, 400, "bad_name"),
        ("GET", "/api/v1/tokens/zzzzzz", None, 404, "token_not_found"),
        ("DELETE", "/api/v1/tokens/zzzzzz", None, 404, "token_not_found"),
        ("POST", "/api/v1/nodes/no-such-node/approve", None, 404, "node_not_found"),
        ("POST", "/api/v1/nodes/edge-a/approve", b"{not json", 400, "bad_json"),
        ("POST", "/api/v1/nodes/edge-a/deny", b'{"why": "x"}', 400, "unknown_field"),
        ("POST", "/api/v1/nodes/edge-a/revoke", b"[]", 400, "bad_json"),
        (
            "POST",
            "/api/v1/nodes/edge-a/revoke",
            b'{"a": "' + b"x" * 40_000 + b'"}',
            413,
            "body_too_large",
        ),
        ("POST", "/api/v1/admin-token/rotate", b'{"x": 1}', 400, "unknown_field"),
        ("POST", "/api/v1/admin-token/rotate", b"{" * 20_000, 413, "body_too_large"),
        ("GET", "/api/v1/nodes/NOT_A_NAME", None, 400, "bad_name"),
        ("GET", "/api/v1/nodes/no-such-node", None, 404, "node_not_found"),
        ("GET", "/api/v1/nodes/edge-a/history?windowSeconds=5", None, 400, "bad_parameter"),
        ("GET", "/api/v1/no-such-thing", None, 404, "not_found"),
        ("DELETE", "/api/v1/tokens", None, 405, "method_not_allowed"),
    ]
    for method, path, body, want, code in cases:
        status, answer, headers = api.call(method, path, body=body)
        assert (status, answer.get("reason")) == (want, code), (method, path, answer)
        assert answer["detail"], "every error says what to do"
        assert answer["status"] == want
        assert answer["type"] == f"tag:edgefleet.io,2026:problem/{code}"
        assert headers["Content-Type"].startswith("application/problem+json")
        if want == 405:
            assert "POST" in headers["Allow"]


def test_oversized_body_refused_before_it_is_read(console_system: ConsoleSystem) -> None:
    """A client announcing 1 GB gets 413 at once, without the server reading the body."""
    server = console_system.server
    context = server.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"POST /api/v1/tokens HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            b"Authorization: Bearer " + server.admin_token.encode() + b"\r\n"
            b"Content-Length: 1000000000\r\n\r\n{"
        )
        head = tls.recv(4096)
    assert head.startswith(b"HTTP/1.1 413"), head[:200]
    assert b"body_too_large" in head or b"413" in head


def test_nodes_list_detail_and_history(console_system: ConsoleSystem) -> None:
    api = console_system.api
    listing = api.get("/api/v1/nodes?sort=-name&status=online")
    assert [n["name"] for n in listing["items"]][:2] == ["edge-b", "edge-a"]
    assert [n["name"] for n in api.get("/api/v1/nodes?q=edge-a")["items"]] == ["edge-a"]
    node = api.node("edge-a")
    assert node["status"] == "online"
    assert node["connected"] is True
    assert node["leaseSeconds"] == 5.0
    for key in ("cpu.percent", "memory.total", "disk.percent", "load.1", "os.release", "boot.time"):
        assert key in node["metrics"], key
    assert node["metrics"]["agent.version"] == node["agentVersion"]
    assert node["certExpiresAt"] is not None
    assert node["lastSeenAt"].endswith("+00:00")
    assert node["devices"] == []  # the twin part is mounted; this node has no device
    history = api.get("/api/v1/nodes/edge-a/history?windowSeconds=3600")
    assert history["windowSeconds"] == 3600
    assert history["points"], "at least the current minute"
    point = history["points"][-1]
    assert point["samples"] >= 1
    assert point["at"].endswith(":00+00:00"), "the start of a minute"
    assert point["cpu"] is not None
    assert point["disk"] is not None


def test_token_created_over_the_api_joins_a_node(console_system: ConsoleSystem) -> None:
    api = console_system.api
    body = json.dumps({"name": "edge-api", "ttlSeconds": 600}).encode()
    status, created, headers = api.call("POST", "/api/v1/tokens", body=body)
    assert status == 201, created
    assert headers["Location"] == f"/api/v1/tokens/{created['id']}"
    assert created["joinCommand"].startswith("edge-agent join --server ")
    tokens = api.get("/api/v1/tokens")["items"]
    assert tokens[0]["id"] == created["id"]
    assert tokens[0]["status"] == "valid"
    assert created["token"] not in json.dumps(tokens), "secrets are shown once only"
    agent = ReportingAgent(
        name="edge-api", workdir=console_system.workdir, server=console_system.server
    )
    command(
        "edge-agent", "join", "--server", console_system.server.url, "--token", created["token"],
        "--ca-hash", console_system.server.ca_hash, "--name", "edge-api",
        "--data-dir", agent.data_dir,
    )  # fmt: skip
    assert api.node("edge-api")["status"] == "unknown", "joined, never reported"
    assert api.get("/api/v1/tokens")["items"][0]["status"] == "used"
    assert api.get(f"/api/v1/tokens/{created['id']}")["usedAt"] is not None
    status, refused, _ = api.call("DELETE", f"/api/v1/tokens/{created['id']}")
    assert (status, refused["reason"]) == (409, "token_used"), refused

    # A second token for the joined name would only fail at its join: refused now, unless the
    # caller asks to replace the node, which revokes it at once.
    status, refused, _ = api.call("POST", "/api/v1/tokens", body=body)
    assert (status, refused["reason"]) == (409, "name_taken"), refused
    assert '"replace": true' in refused["detail"]
    replace = json.dumps({"name": "edge-api", "replace": True}).encode()
    status, created, _ = api.call("POST", "/api/v1/tokens", body=replace)
    assert status == 201, created
    assert api.node("edge-api")["status"] == "revoked"
    status, refused, _ = api.call(
        "POST", "/api/v1/tokens", body=json.dumps({"name": "x", "replace": 1}).encode()
    )
    assert (status, refused["reason"]) == (400, "bad_request"), refused


def test_events_stream_starts_with_a_snapshot(console_system: ConsoleSystem) -> None:
    server = console_system.server
    context = server.ssl_context()
    with (
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as raw,
        context.wrap_socket(raw, server_hostname="127.0.0.1") as tls,
    ):
        tls.sendall(
            b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
            b"Authorization: Bearer " + server.admin_token.encode() + b"\r\n\r\n"
        )
        data = b""
        deadline = time.monotonic() + 10
        while b"event: nodes" not in data and time.monotonic() < deadline:
            data += tls.recv(65536)
    assert b"text/event-stream" in data
    assert b"event: snapshot" in data
    assert b"event: nodes" in data, "agents reporting every second produce batches"


def _new_session(api: Api) -> str:
    status, body, _ = api.call("POST", "/api/v1/sessions")
    assert status == 201, body
    token: str = body["token"]
    return token


def _revoked_ids(server: Server) -> set[str]:
    """The signed-out session ids in the server's store (read-only, beside the server)."""
    db = sqlite3.connect(f"file:{server.data_dir / 'store.db'}?mode=ro", uri=True)
    try:
        return {row[0] for row in db.execute("SELECT id FROM revoked_sessions")}
    finally:
        db.close()


def test_sign_out_revokes_only_that_session_at_once(console_system: ConsoleSystem) -> None:
    api = console_system.api
    leaving, staying = _new_session(api), _new_session(api)
    assert api.call("GET", "/api/v1/nodes", token=leaving)[0] == 200
    status, body, _ = api.call("DELETE", SIGN_OUT, token=leaving)
    assert (status, body) == (204, {})
    for path in ("/api/v1/nodes", "/api/v1/overview", "/api/v1/devices", "/api/v1/events"):
        status, body, headers = api.call("GET", path, token=leaving)
        assert (status, body["reason"]) == (401, "session_revoked"), path
        assert body["detail"] == (
            "this console session was signed out: sign in again with the admin token"
        )
        assert headers["WWW-Authenticate"].startswith("Bearer")
    status, body, _ = api.call("POST", "/api/v1/sessions", token=leaving)
    assert (status, body["reason"]) == (401, "session_revoked"), "no new session from it either"
    assert api.call("GET", "/api/v1/nodes", token=staying)[0] == 200, "other sessions work"
    assert api.call("GET", "/api/v1/nodes")[0] == 200, "the admin token works"
    # Signing out twice (a retry, a second tab) is not an error.
    assert api.call("DELETE", SIGN_OUT, token=leaving)[0] == 204
    assert api.call("GET", "/api/v1/nodes", token=staying)[0] == 200


def test_sign_out_needs_a_genuine_session(console_system: ConsoleSystem) -> None:
    api = console_system.api
    status, body, _ = api.call("DELETE", SIGN_OUT)  # the admin token
    assert (status, body["reason"]) == (403, "session_token_required")
    assert api.call("GET", "/api/v1/nodes")[0] == 200, "the admin token is not revoked"
    status, body, _ = api.call("DELETE", SIGN_OUT, token="")
    assert (status, body["reason"]) == (401, "unauthenticated")
    session = _new_session(api)
    forged = session[:-4] + ("AAAA" if not session.endswith("AAAA") else "BBBB")
    status, body, _ = api.call("DELETE", SIGN_OUT, token=forged)
    assert (status, body["reason"]) == (401, "invalid_session")
    assert api.call("GET", "/api/v1/nodes", token=session)[0] == 200


def _open_stream(server: Server, token: str) -> ssl.SSLSocket:
    raw = socket.create_connection(("127.0.0.1", server.port), timeout=10)
    tls = server.ssl_context().wrap_socket(raw, server_hostname="127.0.0.1")
    tls.sendall(
        b"GET /api/v1/events HTTP/1.1\r\nHost: x\r\nAccept: text/event-stream\r\n"
        b"Connection: close\r\nAuthorization: Bearer " + token.encode() + b"\r\n\r\n"
    )
    return tls


def _read_until(tls: ssl.SSLSocket, marker: bytes, *, within: float = 10.0) -> bytes:
    """What the stream sends until ``marker`` (b"" waits for the server to close it)."""
    data = b""
    deadline = time.monotonic() + within
    while time.monotonic() < deadline:
        chunk = tls.recv(65536)
        data += chunk
        if (marker and marker in data) or not chunk:
            return data
    raise AssertionError(f"{marker!r} not seen within {within} s: {data[-300:]!r}")


def test_a_signed_out_sessions_live_stream_ends(console_system: ConsoleSystem) -> None:
    api, server = console_system.api, console_system.server
    leaving, staying = _new_session(api), _new_session(api)
    with _open_stream(server, leaving) as gone, _open_stream(server, staying) as kept:
        assert b"event: snapshot" in _read_until(gone, b"event: snapshot")
        assert b"event: snapshot" in _read_until(kept, b"event: snapshot")
        signed_out = time.monotonic()
        assert api.call("DELETE", SIGN_OUT, token=leaving)[0] == 204
        tail = _read_until(gone, b"")  # the server ends the stream and closes
        took = time.monotonic() - signed_out
        event = tail[tail.index(b"event: revoked") :]
        assert b'"reason":"session_revoked"' in event
        assert b'"status":401' in event
        assert b"sign in again" in event
        assert took < 15, f"the stream ended {took:.1f} s after the sign-out, not at once"
        # The other session's stream goes on: the agents' next reports still reach it.
        assert b"event: nodes" in _read_until(kept, b"event: nodes")


def test_signed_out_sessions_are_forgotten_once_expired(console_system: ConsoleSystem) -> None:
    """The store keeps a signed-out session only until it would have expired anyway."""
    from tunnel_server.api.signer import SessionSigner  # noqa: PLC0415 - the server's own signer

    api, server = console_system.api, console_system.server
    signer = SessionSigner.load_or_create(server.data_dir)
    short = [signer.issue(now=time.time(), ttl=2) for _ in range(5)]
    for token, _ in short:
        assert api.call("DELETE", SIGN_OUT, token=token)[0] == 204
    short_ids = {signer.session_id(token) for token, _ in short}
    assert short_ids <= _revoked_ids(server)
    expired, _ = signer.issue(now=time.time() - 7200, ttl=60)
    assert api.call("DELETE", SIGN_OUT, token=expired)[0] == 204, "an expired one: nothing to do"
    assert signer.session_id(expired) not in _revoked_ids(server)

    def refusals() -> list[tuple[int, object]]:
        answers = [api.call("GET", "/api/v1/nodes", token=token) for token, _ in short]
        return [(status, body.get("reason")) for status, body, _ in answers]

    # The server's clock says they expired (ttl 2 s): refused as expired, not as signed out.
    eventually(
        refusals,
        lambda seen: seen == [(401, "session_expired")] * len(short),
        what="the short sessions refused as expired",
        every=0.2,
    )
    fresh = _new_session(api)
    assert api.call("DELETE", SIGN_OUT, token=fresh)[0] == 204  # prunes the expired entries
    left = _revoked_ids(server)
    assert signer.session_id(fresh) in left
    assert not short_ids & left, "entries past their expiry are pruned"
    for token, _ in short:  # and the tokens are refused as expired, not let back in
        status, body, _ = api.call("GET", "/api/v1/nodes", token=token)
        assert (status, body["reason"]) == (401, "session_expired")
