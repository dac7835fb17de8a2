"""``/api/v1/users`` against a real server: every route, its refusals and its shapes.

Admin only; a token is in an answer once; bad bodies, unknown fields and bodies too large are
problem documents naming what is wrong.
"""

from __future__ import annotations

import json

import pytest

from tests.integration.users.conftest import UsersSystem, call

USER_FIELDS = {
    "name",
    "role",
    "clusters",
    "state",
    "createdAt",
    "expiresAt",
    "revokedAt",
    "tokenCount",
}


def test_an_admin_makes_reads_lists_and_revokes_users(users_system: UsersSystem) -> None:
    server = users_system.server
    made = users_system.admin(
        "POST",
        "/api/v1/users",
        {"name": "api-op", "role": "operator", "clusters": ["b", "a", "b"], "ttlSeconds": 3600},
    )
    assert made.status == 201, made
    assert made.headers["Location"] == "/api/v1/users/api-op"
    assert set(made.body) == USER_FIELDS | {"token"}
    assert made.body["token"].startswith("efu1.")
    assert (made.body["role"], made.body["clusters"], made.body["state"]) == (
        "operator",
        ["a", "b"],
        "active",
    )
    assert made.body["tokenCount"] == 1
    assert made.body["revokedAt"] is None
    assert made.body["expiresAt"] > made.body["createdAt"]
    token = made.body["token"]
    me = call(server, "GET", "/api/v1/me", token=token)
    assert (me.status, me.body["user"], me.body["role"]) == (200, "api-op", "operator")

    one = users_system.admin("GET", "/api/v1/users/api-op")
    assert one.status == 200
    assert set(one.body) == USER_FIELDS
    assert "token" not in one.body

    more = users_system.admin("POST", "/api/v1/users/api-op/tokens", {"ttlSeconds": 600})
    assert more.status == 201, more
    assert set(more.body) == {"token", "expiresAt"}
    assert more.body["token"] != token
    assert more.body["expiresAt"] < one.body["expiresAt"]
    defaulted = call(server, "POST", "/api/v1/users/api-op/tokens", token=server.admin_token)
    assert defaulted.status == 201, "no body: the default lifetime"
    assert defaulted.body["expiresAt"] == one.body["expiresAt"], "never past its user"
    assert users_system.admin("GET", "/api/v1/users/api-op").body["tokenCount"] == 3

    listed = users_system.admin("GET", "/api/v1/users")
    assert listed.status == 200
    names = [u["name"] for u in listed.body["items"]]
    assert names == sorted(names)
    assert {"api-op", "root-user", "scoped-op", "watcher"} <= set(names)
    assert listed.body["metadata"]["continue"] is None
    for secret in (token, more.body["token"]):
        assert secret.split(".")[-1] not in json.dumps(listed.body), "never a token in a list"

    gone = users_system.admin("DELETE", "/api/v1/users/api-op")
    assert gone.status == 200
    assert (gone.body["state"], gone.body["tokenCount"]) == ("revoked", 0)
    assert gone.body["revokedAt"]
    for credential in (token, more.body["token"], defaulted.body["token"]):
        refused = call(server, "GET", "/api/v1/clusters", token=credential)
        assert (refused.status, refused.body["reason"]) == (401, "user_revoked")
    again = users_system.admin("DELETE", "/api/v1/users/api-op")
    assert (again.status, again.body["state"]) == (200, "revoked"), "revoking twice is fine"
    inactive = users_system.admin("POST", "/api/v1/users/api-op/tokens", {})
    assert (inactive.status, inactive.body["reason"]) == (409, "user_inactive")
    assert inactive.body["state"] == "revoked"
    assert "POST /api/v1/users" in inactive.body["detail"]
    remade = users_system.admin("POST", "/api/v1/users", {"name": "api-op", "role": "viewer"})
    assert (remade.status, remade.body["role"], remade.body["clusters"]) == (201, "viewer", None)
    refused = call(server, "GET", "/api/v1/me", token=token)
    assert refused.status == 401, "the old user's tokens stay dead"


def test_users_page_by_continue(users_system: UsersSystem) -> None:
    for index in range(3):
        users_system.create_user(f"pager-{index}", "viewer")
    seen: list[str] = []
    path = "/api/v1/users?limit=2"
    while True:
        answer = users_system.admin("GET", path)
        assert answer.status == 200, answer
        seen += [u["name"] for u in answer.body["items"]]
        token = answer.body["metadata"]["continue"]
        if token is None:
            break
        assert answer.body["metadata"]["remainingItemCount"] >= 1
        path = f"/api/v1/users?limit=2&continue={token}"
    assert seen == sorted(set(seen))
    assert {"pager-0", "pager-1", "pager-2"} <= set(seen)
    bad = users_system.admin("GET", "/api/v1/users?continue=bm9wZQ")
    assert (bad.status, bad.body["reason"]) == (400, "bad_continue")


@pytest.mark.parametrize(
    ("label", "path", "method"),
    [
        ("list", "/api/v1/users", "GET"),
        ("create", "/api/v1/users", "POST"),
        ("get", "/api/v1/users/watcher", "GET"),
        ("revoke", "/api/v1/users/watcher", "DELETE"),
        ("token", "/api/v1/users/watcher/tokens", "POST"),
        ("kubeconfig", "/api/v1/users/watcher/kubeconfig", "POST"),
    ],
)
def test_only_an_admin_manages_users(
    users_system: UsersSystem, label: str, path: str, method: str
) -> None:
    server, tokens = users_system.server, users_system.tokens
    body = json.dumps({"name": "sneaky", "role": "admin"}).encode() if method == "POST" else None
    for caller in ("viewer", "operator"):
        for credential in (tokens[caller], users_system.session(tokens[caller])):
            refused = call(server, method, path, token=credential, body=body)
            assert (refused.status, refused.body["reason"]) == (403, "forbidden"), (label, caller)
            assert "needs role admin" in refused.body["detail"]
            assert refused.headers["Content-Type"].startswith("application/problem+json")
    assert call(server, method, path, body=body).status == 401
    assert users_system.admin("GET", "/api/v1/users/watcher").body["state"] == "active"
    assert users_system.admin("GET", "/api/v1/users/sneaky").status == 404


def test_bad_user_bodies_are_problem_documents(users_system: UsersSystem) -> None:
    users_system.create_user("twin-name", "viewer")
    cases: list[tuple[object, int, str, str]] = [
        ({"name": "Bad_Name", "role": "viewer"}, 400, "bad_name", "invalid user name"),
        ({"name": "admin", "role": "viewer"}, 400, "bad_name", "bootstrap admin"),
        ({"role": "viewer"}, 400, "bad_request", "'name' is required"),
        ({"name": "x1", "role": "root"}, 400, "bad_request", "'role' must be one of"),
        ({"name": "x1", "role": "viewer", "ttlSeconds": 10}, 400, "bad_request", "ttlSeconds"),
        ({"name": "x1", "role": "viewer", "ttlSeconds": "1d"}, 400, "bad_request", "ttlSeconds"),
        ({"name": "x1", "role": "viewer", "ttlSeconds": 10**9}, 400, "bad_request", "ttlSeconds"),
        ({"name": "x1", "role": "viewer", "clusters": ["A"]}, 400, "bad_request", "'clusters'"),
        ({"name": "x1", "role": "viewer", "clusters": []}, 400, "bad_request", "'clusters'"),
        ({"name": "x1", "role": "viewer", "clusters": "a,b"}, 400, "bad_request", "'clusters'"),
        ({"name": "x1", "role": "admin", "clusters": ["a"]}, 400, "bad_request", "an admin"),
        ({"name": "x1", "role": "viewer", "ttl": 60}, 400, "unknown_field", "'ttl'"),
        ({"name": "twin-name", "role": "viewer"}, 409, "user_exists", "DELETE /api/v1/users"),
        ([1, 2], 400, "bad_json", "JSON object"),
    ]
    for body, status, reason, words in cases:
        answer = users_system.admin("POST", "/api/v1/users", body)  # type: ignore[arg-type]
        assert (answer.status, answer.body.get("reason")) == (status, reason), (body, answer)
        assert words in answer.body["detail"], (body, answer.body)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
        assert "token" not in answer.body
    unknown = users_system.admin("POST", "/api/v1/users", {"name": "x1", "role": "viewer", "z": 1})
    assert unknown.body["problems"] == [{"path": "/z", "reason": "unknown field"}]
    server = users_system.server
    for raw, status, reason in (
        (b"not json", 400, "bad_json"),
        (b"", 400, "bad_json"),
        (
            b'{"name": "x1", "role": "viewer", "pad": "' + b"x" * 20000 + b'"}',
            413,
            "body_too_large",
        ),
    ):
        answer = call(server, "POST", "/api/v1/users", token=server.admin_token, body=raw)
        assert (answer.status, answer.body["reason"]) == (status, reason), raw[:40]
    for path, body, reason in (
        ("/api/v1/users/twin-name/tokens", {"ttlSeconds": 1}, "bad_request"),
        ("/api/v1/users/twin-name/tokens", {"ttl": 60}, "unknown_field"),
        ("/api/v1/users/twin-name/kubeconfig", {"server": "http://x"}, "bad_request"),
        ("/api/v1/users/twin-name/kubeconfig", {"server": "https://x/y"}, "bad_request"),
        ("/api/v1/users/twin-name/kubeconfig", {"clusters": "a"}, "bad_request"),
        ("/api/v1/users/twin-name/kubeconfig", {"context": "a"}, "unknown_field"),
    ):
        answer = users_system.admin("POST", path, body)
        assert (answer.status, answer.body["reason"]) == (400, reason), (path, body, answer)
    for method, path, status, reason in (
        ("GET", "/api/v1/users/nobody", 404, "user_not_found"),
        ("DELETE", "/api/v1/users/nobody", 404, "user_not_found"),
        ("POST", "/api/v1/users/nobody/tokens", 404, "user_not_found"),
        ("POST", "/api/v1/users/nobody/kubeconfig", 404, "user_not_found"),
        ("GET", "/api/v1/users/Not_A_Name", 400, "bad_name"),
    ):
        answer = users_system.admin(method, path)
        assert (answer.status, answer.body["reason"]) == (status, reason), (method, path)
    listed = users_system.admin("GET", "/api/v1/users").body["items"]
    assert "x1" not in {u["name"] for u in listed}, "no refusal made a user"
    assert next(u for u in listed if u["name"] == "twin-name")["tokenCount"] == 1, (
        "no refusal issued a token"
    )
