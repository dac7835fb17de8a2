"""``POST /api/v1/users/{name}/kubeconfig``: read back by the real kubectl, used on a real member.

The clusters are registered for real (``edge-agent join`` with ``--kind cluster`` tokens). The
first tests show that kubectl reads the file as it is and trusts the embedded CA; the last one
runs kubectl with a kubeconfig from the API against a real member cluster through its agent.
"""

from __future__ import annotations

import base64
import json
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import kube
from tests.harness.daemons import join_agent
from tests.harness.kube import kube_bin_dir
from tests.integration.clusters.members import Member, register, whoami
from tests.integration.users.conftest import Answer, UsersSystem, call

CLUSTERS = ("k-a", "k-b", "k-gone")


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@pytest.fixture(scope="module")
def clusters(users_system: UsersSystem) -> tuple[str, ...]:
    server = users_system.server
    for name in CLUSTERS:
        join_agent(server, name, users_system.workdir / f"cluster-{name}", kind="cluster")
    revoked = users_system.admin("POST", "/api/v1/clusters/k-gone/revoke")
    assert revoked.status == 200, revoked
    return CLUSTERS


def _kubeconfig(system: UsersSystem, user: str, body: dict[str, Any] | None = None) -> Answer:
    return system.admin("POST", f"/api/v1/users/{user}/kubeconfig", body or {})


def _write(system: UsersSystem, name: str, user: str, body: dict[str, Any] | None = None) -> Path:
    answer = _kubeconfig(system, user, body)
    assert answer.status == 201, answer
    path = system.workdir / f"{name}.kubeconfig"
    path.write_text(answer.body["kubeconfig"])
    path.chmod(0o600)
    return path


@pytest.mark.usefixtures("clusters")
def test_kubectl_reads_a_kubeconfig_with_a_context_per_cluster(users_system: UsersSystem) -> None:
    server = users_system.server
    users_system.create_user("kube-op", "operator")
    answer = _kubeconfig(users_system, "kube-op")
    assert answer.status == 201, answer
    assert set(answer.body) == {"kubeconfig", "expiresAt", "clusters"}
    assert answer.body["clusters"] == ["k-a", "k-b"], "revoked clusters are left out"
    path = users_system.workdir / "kube-op.kubeconfig"
    path.write_text(answer.body["kubeconfig"])
    contexts = _kubectl(path, "config", "get-contexts", "-o", "name")
    assert contexts.returncode == 0, contexts.stderr
    assert contexts.stdout.split() == ["k-a", "k-b"]
    current = _kubectl(path, "config", "current-context")
    assert current.stdout.strip() == "k-a"
    view = _kubectl(path, "config", "view", "--raw", "-o", "json")
    assert view.returncode == 0, view.stderr
    config = json.loads(view.stdout)
    by_name = {c["name"]: c["cluster"] for c in config["clusters"]}
    assert by_name["k-a"]["server"] == f"https://127.0.0.1:{server.port}/clusters/k-a"
    assert by_name["k-b"]["server"] == f"https://127.0.0.1:{server.port}/clusters/k-b"
    for cluster in by_name.values():
        assert base64.b64decode(cluster["certificate-authority-data"]) == server.ca_pem
    (user,) = config["users"]
    token = user["user"]["token"]
    me = call(server, "GET", "/api/v1/me", token=token)
    assert (me.status, me.body["user"], me.body["role"]) == (200, "kube-op", "operator")
    # kubectl connects, trusting the embedded CA: the server answers (these clusters run no
    # agent, so 503), TLS does not fail.
    reached = _kubectl(path, "get", "--raw", "/version", "--request-timeout", "10s")
    assert reached.returncode == 0 or "Error from server" in reached.stderr, reached.stderr
    assert "x509" not in reached.stderr, reached.stderr
    # Each kubeconfig holds a token of its own.
    again = _write(users_system, "kube-op-2", "kube-op", {"clusters": ["k-b"], "ttlSeconds": 600})
    assert _kubectl(again, "config", "get-contexts", "-o", "name").stdout.split() == ["k-b"]
    other = json.loads(_kubectl(again, "config", "view", "--raw", "-o", "json").stdout)
    assert other["users"][0]["user"]["token"] != token
    assert users_system.admin("GET", "/api/v1/users/kube-op").body["tokenCount"] == 3


@pytest.mark.usefixtures("clusters")
def test_a_scoped_user_gets_its_clusters_only(users_system: UsersSystem) -> None:
    users_system.create_user("kube-view", "viewer", clusters=["k-b", "k-later"])
    path = _write(users_system, "kube-view", "kube-view", {"server": "https://fleet.example:9443"})
    assert _kubectl(path, "config", "get-contexts", "-o", "name").stdout.split() == ["k-b"]
    config = json.loads(_kubectl(path, "config", "view", "--raw", "-o", "json").stdout)
    assert config["clusters"][0]["cluster"]["server"] == "https://fleet.example:9443/clusters/k-b"
    assert config["current-context"] == "k-b"
    for user, body, status, reason, words in (
        ("kube-view", {"clusters": ["k-a"]}, 400, "outside_scope", "outside user 'kube-view'"),
        ("kube-op-none", {}, 404, "user_not_found", "no user named"),
        ("kube-view", {"clusters": ["k-later"]}, 404, "cluster_not_found", "no registered"),
        ("kube-view", {"server": "http://x/y"}, 400, "bad_request", "https://HOST"),
        ("kube-view", {"ttlSeconds": 0}, 400, "bad_request", "ttlSeconds"),
    ):
        answer = _kubeconfig(users_system, user, body)
        assert (answer.status, answer.body["reason"]) == (status, reason), (body, answer)
        assert words in answer.body["detail"], (body, answer.body)
        assert "kubeconfig" not in answer.body, "no token on a refusal"
    users_system.create_user("kube-nowhere", "viewer", clusters=["k-none"])
    answer = _kubeconfig(users_system, "kube-nowhere")
    assert (answer.status, answer.body["reason"]) == (409, "no_clusters")
    assert "no registered cluster is in user 'kube-nowhere''s scope" in answer.body["detail"]
    assert users_system.admin("DELETE", "/api/v1/users/kube-view").status == 200
    answer = _kubeconfig(users_system, "kube-view")
    assert (answer.status, answer.body["reason"]) == (409, "user_inactive")
    assert "is revoked" in answer.body["detail"]
    nowhere = users_system.admin("GET", "/api/v1/users/kube-nowhere").body
    assert nowhere["tokenCount"] == 1, "a refused kubeconfig issues no token"


# ---------------------------------------------------------------- a real member cluster


@pytest.fixture(scope="module")
def member(users_system: UsersSystem, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    base = tmp_path_factory.mktemp("kubeconfig-member")
    plane = kube.start("k-real", base / "plane")
    registered = None
    try:
        registered = register(users_system.server, plane, "k-real", base)
        yield registered
    finally:
        if registered is not None:
            registered.agent.stop()
        plane.stop()


@pytest.mark.kube
def test_a_kubeconfig_from_the_api_works_with_kubectl_on_a_member(
    users_system: UsersSystem, member: Member
) -> None:
    # An admin: the member binds it to cluster-admin (the member runs no clusterrole-aggregation
    # controller, so its `edit` and `view` are empty here and the member's RBAC would refuse).
    users_system.create_user("kube-real", "admin")
    path = _write(users_system, "kube-real", "kube-real", {"clusters": [member.name]})
    made = _kubectl(path, "create", "configmap", "from-api", "--from-literal=a=b", "-n", "default")
    assert made.returncode == 0, made.stderr
    listed = _kubectl(path, "get", "configmaps", "-n", "default", "-o", "name")
    assert "configmap/from-api" in listed.stdout.split(), listed.stderr
    seen = member.direct("get", "configmap", "from-api", "-n", "default", "-o", "json").stdout
    assert json.loads(seen)["data"] == {"a": "b"}
    me = whoami(member, path)
    assert me["username"] == "edgefleet:admin"
    assert me["extra"] == {"user.edgefleet.io": ["kube-real"]}
    # Its user revoked through the API: the same kubeconfig is refused at once.
    assert users_system.admin("DELETE", "/api/v1/users/kube-real").status == 200
    refused = _kubectl(path, "get", "configmaps", "-n", "default")
    assert refused.returncode != 0
    assert "user 'kube-real' was revoked" in refused.stderr, refused.stderr
