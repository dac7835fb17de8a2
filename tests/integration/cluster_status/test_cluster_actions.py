"""``/api/v1/clusters``: the list's paging and scope, and approve / deny / revoke, on a real server.

Clusters join for real (``edge-agent join`` with ``--kind cluster`` tokens, some requiring
approval); a cluster-kind agent process holds a live tunnel session for the revoke. Users of
each role are made through ``/api/v1/users``.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import BIN, Agent, Server, join_agent
from tests.harness.waiting import eventually
from tests.integration.users.conftest import Answer, call

SCOPE = ("p-ok", "p-no", "live", "j-1", "j-2", "j-3")
"""The clusters the scoped operator may reach; ``outside`` is not among them."""


@dataclass(kw_only=True)
class Actions:
    server: Server
    workdir: Path
    tokens: dict[str, str]
    pending_tokens: dict[str, str]
    """Bootstrap tokens that require approval, by cluster name."""

    def call(
        self, method: str, path: str, *, who: str = "admin", body: bytes | None = None
    ) -> Answer:
        token = self.server.admin_token if who == "admin" else self.tokens[who]
        return call(self.server, method, path, token=token, body=body)

    def join(self, name: str, *, wait: float) -> subprocess.CompletedProcess[str]:
        """``edge-agent join`` with this cluster's approval token; its exit code tells."""
        return subprocess.run(
            [
                str(BIN / "edge-agent"),
                "join",
                "--server",
                self.server.url,
                "--token",
                self.pending_tokens[name],
                "--ca-hash",
                self.server.ca_hash,
                "--name",
                name,
                "--data-dir",
                str(self.workdir / f"cluster-{name}"),
                "--wait-approval",
                str(wait),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )


def _user(server: Server, name: str, role: str, clusters: list[str] | None) -> str:
    body = json.dumps({"name": name, "role": role, "clusters": clusters}).encode()
    answer = call(server, "POST", "/api/v1/users", token=server.admin_token, body=body)
    assert answer.status == 201, answer
    token: str = answer.body["token"]
    return token


@pytest.fixture(scope="module")
def actions(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Actions]:
    workdir = tmp_path_factory.mktemp("cluster-actions")
    server = Server(workdir=workdir)
    server.start()
    try:
        tokens = {
            "operator": _user(server, "scoped-op", "operator", list(SCOPE)),
            "outsider": _user(server, "other-op", "operator", ["elsewhere"]),
            "viewer": _user(server, "watcher", "viewer", None),
        }
        pending = {
            name: server.cli(
                "token", "create", "--kind", "cluster", "--name", name, "--require-approval"
            ).strip()
            for name in ("p-ok", "p-no")
        }
        system = Actions(server=server, workdir=workdir, tokens=tokens, pending_tokens=pending)
        for name in ("j-1", "j-2", "j-3", "outside"):
            join_agent(server, name, workdir / f"cluster-{name}", kind="cluster")
        join_agent(server, "a-node", workdir / "node-a-node")
        yield system
    finally:
        server.stop()


def test_the_list_pages_by_continue_within_the_caller_s_scope(actions: Actions) -> None:
    everything = actions.call("GET", "/api/v1/clusters")
    assert everything.status == 200
    names = [c["name"] for c in everything.body["items"]]
    assert {"j-1", "j-2", "j-3", "outside"} <= set(names)
    assert "a-node" not in names, "nodes are not clusters"
    assert names == sorted(names)
    assert everything.body["metadata"] == {"continue": None}
    row = everything.body["items"][0]
    assert {"lastSeenAt", "certExpiresAt", "podsTotal", "apiserverHealthy", "sampledAt"} <= set(row)
    assert not [key for key in row if "_" in key], "camelCase only"

    seen: list[str] = []
    path = "/api/v1/clusters?limit=1&q=j-"
    while True:
        page = actions.call("GET", path, who="operator")
        assert page.status == 200, page
        seen += [c["name"] for c in page.body["items"]]
        token = page.body["metadata"]["continue"]
        if token is None:
            break
        assert page.body["metadata"]["remainingItemCount"] == 3 - len(seen)
        path = f"/api/v1/clusters?limit=1&q=j-&continue={token}"
    assert seen == ["j-1", "j-2", "j-3"]
    first = actions.call("GET", "/api/v1/clusters?limit=1&q=j-").body["metadata"]["continue"]
    other = actions.call("GET", f"/api/v1/clusters?limit=1&q=j-2&continue={first}")
    assert (other.status, other.body["reason"]) == (400, "bad_continue"), "bound to its query"

    scoped = [
        c["name"] for c in actions.call("GET", "/api/v1/clusters", who="operator").body["items"]
    ]
    assert "outside" not in scoped
    assert {"j-1", "j-2", "j-3"} <= set(scoped)
    assert actions.call("GET", "/api/v1/clusters", who="outsider").body["items"] == []
    backwards = actions.call("GET", "/api/v1/clusters?sort=-name&q=j-").body["items"]
    assert [c["name"] for c in backwards] == ["j-3", "j-2", "j-1"]
    for query, reason in (
        ("sort=nodes_ready", "bad_parameter"),
        ("status=sleeping", "bad_parameter"),
        ("limit=0", "bad_parameter"),
        ("q=" + "x" * 101, "bad_parameter"),
        ("continue=%%%", "bad_continue"),
    ):
        refused = actions.call("GET", f"/api/v1/clusters?{query}")
        assert (refused.status, refused.body["reason"]) == (400, reason), query
    missing = actions.call("GET", "/api/v1/clusters/a-node")
    assert (missing.status, missing.body["reason"]) == (404, "cluster_not_found")
    assert "is a node" in missing.body["detail"]
    out = actions.call("GET", "/api/v1/clusters/outside", who="operator")
    assert (out.status, out.body["reason"]) == (403, "cluster_out_of_scope")


def _state(actions: Actions, name: str) -> str:
    state: str = actions.call("GET", f"/api/v1/clusters/{name}").body["state"]
    return state


def test_approve_lets_a_pending_cluster_join_and_only_once(actions: Actions) -> None:
    waiting = actions.join("p-ok", wait=0)
    assert waiting.returncode == 7, waiting.stderr  # still waiting, resumable
    row = actions.call("GET", "/api/v1/clusters/p-ok").body
    assert (row["state"], row["status"]) == ("pending", "pending")
    assert row["warnings"][-1]["code"] == "pending_approval"
    path = "/api/v1/clusters/p-ok/approve"

    refused = actions.call("POST", path, who="viewer")
    assert (refused.status, refused.body["reason"]) == (403, "forbidden")
    refused = actions.call("POST", path, who="outsider")
    assert (refused.status, refused.body["reason"]) == (403, "cluster_out_of_scope")
    for body, status, reason in (
        (b'{"force": true}', 400, "unknown_field"),
        (b"approve!", 400, "bad_json"),
        (b"[]", 400, "bad_json"),
        (b'{"x": "' + b"y" * 20000 + b'"}', 413, "body_too_large"),
    ):
        answer = actions.call("POST", path, who="operator", body=body)
        assert (answer.status, answer.body["reason"]) == (status, reason), body[:30]
        assert answer.headers["Content-Type"].startswith("application/problem+json")
    assert _state(actions, "p-ok") == "pending", "no refusal changed anything"

    approved = actions.call("POST", path, who="operator", body=b"{}")
    assert approved.status == 200, approved
    assert approved.body["state"] == "approved"
    assert {"createdAt", "metrics", "leaseSeconds"} <= set(approved.body)
    joined = actions.join("p-ok", wait=30)
    assert joined.returncode == 0, joined.stderr
    for verb in ("approve", "deny"):
        again = actions.call("POST", f"/api/v1/clusters/p-ok/{verb}", who="operator")
        assert (again.status, again.body["reason"]) == (409, "wrong_state"), verb
        assert again.body["state"] == "approved"
        assert "/api/v1/clusters/p-ok/revoke" in again.body["detail"]
    assert _state(actions, "p-ok") == "approved"


def test_deny_rejects_a_pending_join(actions: Actions) -> None:
    assert actions.join("p-no", wait=0).returncode == 7
    denied = actions.call("POST", "/api/v1/clusters/p-no/deny", who="operator")
    assert (denied.status, denied.body["state"]) == (200, "revoked")
    rejected = actions.join("p-no", wait=30)
    assert rejected.returncode == 8, rejected.stderr  # rejected while pending
    late = actions.call("POST", "/api/v1/clusters/p-no/approve", who="operator")
    assert (late.status, late.body["reason"]) == (409, "wrong_state")
    assert "new token" in late.body["detail"]


def test_unknown_names_and_nodes_are_not_clusters(actions: Actions) -> None:
    for verb in ("approve", "deny", "revoke"):
        for name, status, reason in (
            ("nowhere", 404, "cluster_not_found"),
            ("a-node", 404, "cluster_not_found"),
            ("Bad_Name", 400, "bad_name"),
        ):
            answer = actions.call("POST", f"/api/v1/clusters/{name}/{verb}")
            assert (answer.status, answer.body["reason"]) == (status, reason), (verb, name)
    node = actions.call("GET", "/api/v1/nodes/a-node")
    assert node.status == 200
    assert node.body["state"] == "approved", "a cluster action never touches a node"
    unknown_verb = actions.call("POST", "/api/v1/clusters/j-1/delete")
    assert unknown_verb.status in (404, 405)


@pytest.fixture(scope="module")
def live(actions: Actions) -> Iterator[Agent]:
    """A cluster-kind agent with a live tunnel session (it serves no API server: no member)."""
    agent = Agent(name="live", workdir=actions.workdir, server=actions.server, kind="cluster")
    agent.join()
    agent.start()
    try:
        agent.wait_connected()
        yield agent
    finally:
        agent.stop()


def _connected(agent: Agent) -> bool:
    tunnel: Any = agent.status().get("tunnel")
    return bool(tunnel and tunnel.get("connected"))


def test_revoke_cuts_the_cluster_agent_off_at_once(actions: Actions, live: Agent) -> None:
    before = actions.call("GET", "/api/v1/clusters/live").body
    assert (before["state"], before["connected"]) == ("approved", True)
    refused = actions.call("POST", "/api/v1/clusters/live/revoke", who="viewer")
    assert (refused.status, refused.body["reason"]) == (403, "forbidden")
    assert _connected(live), "a refused revoke cuts nothing"

    revoked = actions.call("POST", "/api/v1/clusters/live/revoke", who="operator")
    assert (revoked.status, revoked.body["state"]) == (200, "revoked"), revoked
    eventually(
        lambda: actions.call("GET", "/api/v1/clusters/live").body["connected"],
        lambda connected: connected is False,
        what="the revoked cluster's session closed",
    )
    # Closed by the revoke itself, not later by the store watcher (whose reason differs).
    log = actions.workdir / "agent-live.log"
    eventually(
        lambda: log.read_text(errors="replace"),
        lambda text: "this cluster was revoked" in text,
        what="the agent told why its session ended",
    )
    assert not _connected(live)
    again = actions.call("POST", "/api/v1/clusters/live/revoke", who="operator")
    assert (again.status, again.body["state"]) == (200, "revoked"), "idempotent, as for nodes"
    late = actions.call("POST", "/api/v1/clusters/live/approve", who="operator")
    assert (late.status, late.body["reason"]) == (409, "wrong_state")
