"""``tunnel-server kubeconfig``: read back by the real kubectl, one context per cluster in scope.

The clusters are registered for real (``edge-agent join`` with ``--kind cluster`` tokens). The
``/clusters/{name}/`` proxy behind those URLs is another part's; here kubectl shows that it
reads the file as it is and trusts the embedded CA when it connects.
"""

from __future__ import annotations

import base64
import json
import subprocess
from pathlib import Path

import pytest

from tests.harness.daemons import BIN, join_agent
from tests.harness.kube import kube_bin_dir
from tests.integration.users.conftest import UsersSystem, call

CLUSTERS = ("k-a", "k-b", "k-gone")


def _kubectl(kubeconfig: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(kube_bin_dir() / "kubectl"), "--kubeconfig", str(kubeconfig), *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _cli(system: UsersSystem, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            str(BIN / "tunnel-server"),
            *args,
            "--data-dir",
            str(system.server.data_dir),
        ],
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
    server.cli("nodes", "revoke", "k-gone")
    return CLUSTERS


def _write(system: UsersSystem, name: str, *args: str) -> Path:
    path = system.workdir / f"{name}.kubeconfig"
    path.write_text(system.server.cli("kubeconfig", *args))
    path.chmod(0o600)
    return path


@pytest.mark.usefixtures("clusters")
def test_kubectl_reads_a_kubeconfig_with_a_context_per_cluster(users_system: UsersSystem) -> None:
    server = users_system.server
    users_system.create_user("kube-op", "--role", "operator")
    path = _write(users_system, "kube-op", "--user", "kube-op")
    contexts = _kubectl(path, "config", "get-contexts", "-o", "name")
    assert contexts.returncode == 0, contexts.stderr
    assert contexts.stdout.split() == ["k-a", "k-b"], "revoked clusters are left out"
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
    # kubectl connects, trusting the embedded CA: the server answers (the cluster proxy behind
    # /clusters/ is another part's and these clusters run no agent), TLS does not fail.
    reached = _kubectl(path, "get", "--raw", "/version", "--request-timeout", "10s")
    assert reached.returncode == 0 or "Error from server" in reached.stderr, reached.stderr
    assert "x509" not in reached.stderr, reached.stderr
    # Each kubeconfig holds a token of its own.
    again = _write(users_system, "kube-op-2", "--user", "kube-op", "--cluster", "k-b")
    assert _kubectl(again, "config", "get-contexts", "-o", "name").stdout.split() == ["k-b"]
    other = json.loads(_kubectl(again, "config", "view", "--raw", "-o", "json").stdout)
    assert other["users"][0]["user"]["token"] != token
    listed = json.loads(server.cli("users", "list", "--json"))
    assert next(u for u in listed if u["name"] == "kube-op")["tokens"] == 3


@pytest.mark.usefixtures("clusters")
def test_a_scoped_user_gets_its_clusters_only(users_system: UsersSystem) -> None:
    users_system.create_user("kube-view", "--role", "viewer", "--clusters", "k-b,k-later")
    path = _write(
        users_system, "kube-view", "--user", "kube-view", "--server", "https://fleet.example:9443"
    )
    assert _kubectl(path, "config", "get-contexts", "-o", "name").stdout.split() == ["k-b"]
    config = json.loads(_kubectl(path, "config", "view", "--raw", "-o", "json").stdout)
    assert config["clusters"][0]["cluster"]["server"] == "https://fleet.example:9443/clusters/k-b"
    assert config["current-context"] == "k-b"
    for args, words in (
        (("--user", "kube-view", "--cluster", "k-a"), "outside user 'kube-view''s scope"),
        (("--user", "kube-op-none", "--all-clusters"), "no user named"),
        (("--user", "kube-view", "--cluster", "k-later"), "no registered cluster named"),
        (("--user", "kube-view", "--cluster", "k-a", "--all-clusters"), "not allowed with"),
        (("--user", "kube-view", "--server", "http://x/y"), "expected https://HOST"),
        (("--user", "kube-view", "--ttl", "0"), "lifetime"),
    ):
        done = _cli(users_system, "kubeconfig", *args)
        assert done.returncode != 0, args
        assert words in done.stderr, (args, done.stderr)
        assert done.stdout == "", "no token printed on a refusal"
    users_system.create_user("kube-nowhere", "--role", "viewer", "--clusters", "k-none")
    done = _cli(users_system, "kubeconfig", "--user", "kube-nowhere")
    assert done.returncode == 1
    assert "no registered cluster is in user 'kube-nowhere''s scope" in done.stderr
    users_system.server.cli("users", "revoke", "kube-view")
    done = _cli(users_system, "kubeconfig", "--user", "kube-view")
    assert (done.returncode, done.stdout) == (1, "")
    assert "is revoked" in done.stderr
    listed = json.loads(users_system.server.cli("users", "list", "--json"))
    assert next(u for u in listed if u["name"] == "kube-nowhere")["tokens"] == 1, (
        "a refused kubeconfig issues no token"
    )
