"""kubectl through ``https://SERVER/clusters/C``: two registered clusters, real processes.

A real tunnel-server, two real control planes each with a cluster-mode ``edge-agent`` process
(ServiceAccount token, RBAC limited to the three impersonation names), and the real kubectl
with a kubeconfig whose server is the cloud's cluster proxy.
"""

from __future__ import annotations

import json
import os
import ssl
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from kubernetes import client, config, watch

from tests.harness import kube
from tests.harness.daemons import BIN, REPO, Agent
from tests.harness.waiting import eventually
from tests.integration.clusters.conftest import Fleet
from tests.integration.clusters.members import (
    ClusterAgent,
    Member,
    kubectl_path,
    proxy_kubeconfig,
    run_kubectl,
    whoami,
)
from tunnel_server.api.access import Role
from tunnel_server.identity.users import create_user
from tunnel_server.store import SqliteStore

pytestmark = pytest.mark.kube

CONFIGMAP = """
apiVersion: v1
kind: ConfigMap
metadata: {{name: {name}, namespace: {namespace}}}
data: {{where: {where}}}
"""


def _namespace(member: Member, name: str) -> str:
    member.kubectl("create", "namespace", name)
    return name


def _raw(
    fleet: Fleet,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes | None = None,
    bearer: str | None = None,
    anonymous: bool = False,
) -> tuple[int, dict[str, object]]:
    """One request to the cloud (as its admin by default); the status and the JSON answer."""
    server = fleet.server
    sent = dict(headers or {})
    if not anonymous:
        sent["Authorization"] = f"Bearer {bearer or server.admin_token}"
    if body is not None:
        sent.setdefault("Content-Type", "application/json")
    request = urllib.request.Request(  # noqa: S310 - our own https URL
        server.url + path, method=method, headers=sent, data=body
    )
    context: ssl.SSLContext = server.ssl_context()
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as answer:  # noqa: S310
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            raw = error.read()
        try:
            return error.code, json.loads(raw)
        except ValueError:
            return error.code, {"text": raw.decode(errors="replace")}


def _is_status(answer: dict[str, object], code: int) -> bool:
    return (
        answer.get("kind") == "Status"
        and answer.get("apiVersion") == "v1"
        and answer.get("status") == "Failure"
        and answer.get("code") == code
        and isinstance(answer.get("message"), str)
        and isinstance(answer.get("reason"), str)
    )


def test_get_apply_delete(fleet: Fleet) -> None:
    a = fleet.a
    namespace = _namespace(a, "crud")
    a.kubectl("apply", "-f", "-", stdin=CONFIGMAP.format(name="cm", namespace=namespace, where="a"))
    there = json.loads(a.direct("get", "configmap", "cm", "-n", namespace, "-o", "json").stdout)
    assert there["data"] == {"where": "a"}
    got = json.loads(a.kubectl("get", "configmap", "cm", "-n", namespace, "-o", "json").stdout)
    assert got["metadata"]["uid"] == there["metadata"]["uid"]
    # DELETE carries DeleteOptions in its body (here dryRun): it must reach the member as sent.
    a.kubectl("delete", "configmap", "cm", "-n", namespace, "--dry-run=server")
    a.direct("get", "configmap", "cm", "-n", namespace)  # a dry run: still there
    status, _ = _raw(
        fleet,
        f"/clusters/{a.name}/api/v1/namespaces/{namespace}/configmaps/cm",
        method="DELETE",
        body=json.dumps({"kind": "DeleteOptions", "apiVersion": "v1", "dryRun": ["All"]}).encode(),
    )
    assert status == 200
    a.direct("get", "configmap", "cm", "-n", namespace)  # the body's dryRun held
    a.kubectl("delete", "configmap", "cm", "-n", namespace, "--wait=true")
    gone = a.direct("get", "configmap", "cm", "-n", namespace, check=False)
    assert gone.returncode != 0
    assert "NotFound" in gone.stderr


def test_two_clusters_each_see_only_their_own(fleet: Fleet) -> None:
    for member, where in ((fleet.a, "a"), (fleet.b, "b")):
        namespace = _namespace(member, f"own-{where}")
        member.kubectl(
            "apply",
            "-f",
            "-",
            stdin=CONFIGMAP.format(name="mine", namespace=namespace, where=where),
        )
    names_a = fleet.a.kubectl("get", "namespaces", "-o", "name").stdout.split()
    names_b = fleet.b.kubectl("get", "namespaces", "-o", "name").stdout.split()
    assert "namespace/own-a" in names_a
    assert "namespace/own-a" not in names_b
    assert "namespace/own-b" in names_b
    assert "namespace/own-b" not in names_a
    data_b = fleet.b.kubectl("get", "cm", "mine", "-n", "own-b", "-o", "jsonpath={.data.where}")
    assert data_b.stdout == "b"


def test_the_member_sees_the_cloud_user_impersonated(fleet: Fleet) -> None:
    user = whoami(fleet.a)
    assert user["username"] == "edgefleet:admin"
    assert user["groups"] == ["edgefleet:admin", "system:authenticated"]
    assert user["extra"] == {"user.edgefleet.io": ["admin"]}


def test_forged_impersonation_changes_nothing(fleet: Fleet) -> None:
    # kubectl's own --as/--as-group become Impersonate-* headers: the cloud drops them.
    forged = run_kubectl(
        fleet.a.kubeconfig,
        "--as=system:admin",
        "--as-group=system:masters",
        "--as-uid=0",
        "auth",
        "whoami",
        "-o",
        "json",
    )
    user = json.loads(forged.stdout)["status"]["userInfo"]
    assert user["username"] == "edgefleet:admin"
    assert "system:masters" not in user["groups"]
    # The same headers by hand, with an extra key and a second Authorization-like header.
    review = json.dumps(
        {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}
    ).encode()
    status, answer = _raw(
        fleet,
        f"/clusters/{fleet.a.name}/apis/authentication.k8s.io/v1/selfsubjectreviews",
        method="POST",
        headers={
            "Impersonate-User": "system:admin",
            "Impersonate-Group": "system:masters",
            "Impersonate-Extra-user.edgefleet.io": "someone-else",
            "Impersonate-Extra-scopes": "all",
        },
        body=review,
    )
    assert status == 201, answer
    info = answer["status"]["userInfo"]  # type: ignore[index]
    assert info["username"] == "edgefleet:admin"
    assert info["extra"] == {"user.edgefleet.io": ["admin"]}


def test_member_rbac_decides_for_the_impersonated_role(fleet: Fleet) -> None:
    """The member refuses the viewer role's delete; the admin role's passes.

    The agent's credential acts as each role: until the cloud has users of other roles, the
    agent's own ServiceAccount token sends the very headers the cloud would send for them.
    The member here runs no controller manager, so the aggregated ``view`` role is empty:
    the refusal comes from RBAC either way.
    """
    a = fleet.a
    namespace = _namespace(a, "rbac")
    a.kubectl("create", "configmap", "keep", "-n", namespace)
    agent_kubeconfig = a.agent.member_kubeconfig()
    viewer = ("--as=edgefleet:viewer", "--as-group=edgefleet:viewer")
    refused = run_kubectl(
        agent_kubeconfig, *viewer, "delete", "configmap", "keep", "-n", namespace, check=False
    )
    assert refused.returncode != 0
    assert 'User "edgefleet:viewer" cannot delete resource "configmaps"' in refused.stderr
    a.direct("get", "configmap", "keep", "-n", namespace)  # still there
    admin = ("--as=edgefleet:admin", "--as-group=edgefleet:admin")
    run_kubectl(agent_kubeconfig, *admin, "delete", "configmap", "keep", "-n", namespace)
    assert a.direct("get", "configmap", "keep", "-n", namespace, check=False).returncode != 0


@pytest.mark.parametrize(
    "forged",
    [
        ("--as=system:admin",),
        ("--as=edgefleet:admin", "--as-group=system:masters"),
        ("--as=edgefleet:admin", "--as-uid=0"),
        ("--as=system:serviceaccount:kube-system:default",),
    ],
)
def test_agent_rbac_impersonates_only_the_three_names(
    fleet: Fleet, forged: tuple[str, ...]
) -> None:
    refused = run_kubectl(
        fleet.a.agent.member_kubeconfig(), *forged, "get", "namespaces", check=False
    )
    assert refused.returncode != 0
    assert "cannot impersonate" in refused.stderr


def test_unknown_cluster_is_a_404_status(fleet: Fleet, tmp_path: Path) -> None:
    status, answer = _raw(fleet, "/clusters/no-such-cluster/api/v1/namespaces")
    assert status == 404
    assert _is_status(answer, 404)
    assert answer["reason"] == "NotFound"
    assert "no cluster named 'no-such-cluster'" in str(answer["message"])
    kubeconfig = proxy_kubeconfig(tmp_path / "k", fleet.server, "no-such-cluster")
    # (Commands that start with discovery print client-go's own text for any 404.)
    failed = run_kubectl(kubeconfig, "get", "--raw", "/api/v1/namespaces", check=False)
    assert failed.returncode != 0
    assert "no cluster named 'no-such-cluster'" in failed.stderr


def test_a_node_is_not_a_cluster(fleet: Fleet, tmp_path: Path) -> None:
    node = Agent(name="edge-node-1", workdir=tmp_path, server=fleet.server)
    node.join()
    status, answer = _raw(fleet, "/clusters/edge-node-1/api/v1/namespaces")
    assert status == 404
    assert _is_status(answer, 404)
    assert "'edge-node-1' is a node, not a cluster" in str(answer["message"])


def test_offline_cluster_is_a_503_status(fleet: Fleet, tmp_path: Path) -> None:
    idle = ClusterAgent(name="cluster-idle", workdir=tmp_path, server=fleet.server)
    idle.join()  # registered, never started: no session
    status, answer = _raw(fleet, "/clusters/cluster-idle/version")
    assert status == 503
    assert _is_status(answer, 503)
    assert answer["reason"] == "ServiceUnavailable"
    assert str(answer["message"]).startswith("cluster cluster-idle is offline")
    kubeconfig = proxy_kubeconfig(tmp_path / "k", fleet.server, "cluster-idle")
    failed = run_kubectl(kubeconfig, "get", "--raw", "/api/v1/pods", check=False)
    assert failed.returncode != 0
    assert "cluster cluster-idle is offline" in failed.stderr


def test_unauthenticated_is_a_401_status(fleet: Fleet) -> None:
    status, answer = _raw(fleet, f"/clusters/{fleet.a.name}/version", anonymous=True)
    assert status == 401
    assert _is_status(answer, 401)
    status, answer = _raw(fleet, f"/clusters/{fleet.a.name}/version", bearer="not-a-token")
    assert status == 401
    assert _is_status(answer, 401)


def test_oversized_headers_are_refused_before_the_tunnel(fleet: Fleet) -> None:
    path = f"/clusters/{fleet.a.name}/version"
    many = {f"X-Filler-{i}": "x" for i in range(110)}
    status, answer = _raw(fleet, path, headers=many)
    assert status == 431
    assert _is_status(answer, 431)
    # Past aiohttp's own parser limits (128 headers, 8,190 bytes a line) the server's HTTP
    # parser answers 400 itself, before any route runs.
    too_many = {f"X-Filler-{i}": "x" for i in range(200)}
    assert _raw(fleet, path, headers=too_many)[0] == 400
    assert _raw(fleet, path, headers={"X-Huge": "z" * 9000})[0] == 400
    large = {f"X-Large-{i}": "y" * 8000 for i in range(9)}  # each under aiohttp's line limit
    status, answer = _raw(fleet, path, headers=large)
    assert status == 431
    assert "request headers too large" in str(answer["message"])
    status, answer = _raw(fleet, path)  # and the cluster still answers
    assert status == 200
    assert "gitVersion" in answer


@pytest.fixture
def kubectl_watch(fleet: Fleet) -> Iterator[tuple[subprocess.Popen[str], list[str]]]:
    """``kubectl get cm -w -o name`` in namespace ``watch`` through the proxy, lines collected."""
    _namespace(fleet.a, "watch")
    process = subprocess.Popen(
        [
            str(kubectl_path()),
            "--kubeconfig",
            str(fleet.a.kubeconfig),
            "get",
            "configmaps",
            "-n",
            "watch",
            "--watch",
            "-o",
            "name",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    lines: list[str] = []
    assert process.stdout is not None
    stdout = process.stdout
    reader = threading.Thread(target=lambda: lines.extend(stdout), daemon=True)
    reader.start()
    try:
        yield process, lines
    finally:
        process.kill()
        process.wait()
        reader.join(timeout=10)
        stdout.close()


def test_watch_across_an_agent_restart(
    fleet: Fleet, kubectl_watch: tuple[subprocess.Popen[str], list[str]]
) -> None:
    """A watch resumed across an agent restart misses nothing.

    kubectl's watch streams, and ends cleanly when the agent goes; a watch resumed from the
    last resourceVersion after the restart gets every change, including those made meanwhile.

    (kubectl 1.36's ``get -w`` does not re-watch by itself: it exits when its watch stream
    ends, as it does when a direct API server closes it. The resume is a client's job; the
    official Python client does it here, from the resourceVersion kubectl's watch had reached.)
    """
    a = fleet.a
    process, lines = kubectl_watch
    a.kubectl("create", "configmap", "before", "-n", "watch")
    eventually(lambda: list(lines), lambda seen: "configmap/before\n" in seen, what="watch event")
    resume_from = json.loads(
        a.kubectl("get", "configmap", "before", "-n", "watch", "-o", "json").stdout
    )["metadata"]["resourceVersion"]

    a.agent.tunnel_options["drain_grace"] = 1.0
    a.agent.stop()
    eventually(process.poll, lambda code: code is not None, what="kubectl's watch to end")
    a.direct("create", "configmap", "during", "-n", "watch")  # while the agent is away
    a.agent.start()
    a.agent.wait_connected()
    a.agent.wait_ready()
    a.kubectl("create", "configmap", "after", "-n", "watch")

    with config.new_client_from_config(config_file=str(a.kubeconfig)) as api:
        core = client.CoreV1Api(api)
        seen: list[tuple[str, str]] = []
        watcher = watch.Watch()
        for event in watcher.stream(
            core.list_namespaced_config_map,
            "watch",
            resource_version=resume_from,
            timeout_seconds=30,
        ):
            seen.append((event["type"], event["object"].metadata.name))
            if ("ADDED", "after") in seen:
                watcher.stop()
    assert seen[:2] == [("ADDED", "during"), ("ADDED", "after")]


def _user(fleet: Fleet, name: str, role: Role, clusters: tuple[str, ...] | None) -> str:
    """A cloud user made in the server's store; its bearer token."""
    store = SqliteStore.open(fleet.server.data_dir)
    try:
        _, token = create_user(
            store,
            name,
            role=role,
            clusters=clusters,
            ttl=3600.0,
            now=time.time(),
        )
    finally:
        store.close()
    return token


def test_a_cloud_viewer_is_refused_a_delete_by_the_member(fleet: Fleet, tmp_path: Path) -> None:
    a = fleet.a
    namespace = _namespace(a, "viewer")
    a.kubectl("create", "configmap", "keep", "-n", namespace)
    token = _user(fleet, "vera", "viewer", None)
    kubeconfig = proxy_kubeconfig(tmp_path / "vera", fleet.server, a.name, token=token)
    user = whoami(a, kubeconfig)
    assert user["username"] == "edgefleet:viewer"
    assert user["extra"] == {"user.edgefleet.io": ["vera"]}
    refused = run_kubectl(kubeconfig, "delete", "configmap", "keep", "-n", namespace, check=False)
    assert refused.returncode != 0
    assert 'User "edgefleet:viewer" cannot delete resource "configmaps"' in refused.stderr
    a.direct("get", "configmap", "keep", "-n", namespace)


def test_an_operator_scoped_to_a_gets_403_on_b_before_the_tunnel(
    fleet: Fleet, tmp_path: Path
) -> None:
    token = _user(fleet, "otto", "operator", (fleet.a.name,))
    on_a = proxy_kubeconfig(tmp_path / "otto-a", fleet.server, fleet.a.name, token=token)
    assert whoami(fleet.a, on_a)["username"] == "edgefleet:operator"
    exchanges = dict(fleet.b.agent.status()["cluster"]["exchanges"])  # type: ignore[index]
    status, answer = _raw(fleet, f"/clusters/{fleet.b.name}/version", bearer=token)
    assert status == 403
    assert _is_status(answer, 403)
    assert f"may not reach cluster '{fleet.b.name}'" in str(answer["message"])
    on_b = proxy_kubeconfig(tmp_path / "otto-b", fleet.server, fleet.b.name, token=token)
    refused = run_kubectl(on_b, "get", "--raw", "/api/v1/namespaces", check=False)
    assert refused.returncode != 0
    assert f"may not reach cluster '{fleet.b.name}'" in refused.stderr
    # Nothing left the cloud for B: its agent served no exchange meanwhile.
    assert fleet.b.agent.status()["cluster"]["exchanges"] == exchanges  # type: ignore[index]


def test_the_agent_process_reports_cluster_status(fleet: Fleet) -> None:
    """The real cluster-mode agent's GetJson feeds the status collector; the cloud shows it."""

    def row() -> dict[str, object]:
        status, body = fleet.server.get(
            f"/api/v1/clusters/{fleet.a.name}", token=fleet.server.admin_token
        )
        assert status == 200, body
        answer: dict[str, object] = json.loads(body)
        return answer

    found = eventually(
        row,
        lambda r: r["version"] == kube.KUBE_VERSION and r["apiserverHealthy"] is True,
        what="cluster.* of the agent in /api/v1/clusters",
        within=60.0,
        every=0.5,
    )
    assert found["status"] == "online"
    assert found["nodesTotal"] == 0  # a bare control plane: no nodes
    assert fleet.a.agent.status()["cluster"]["version"] == kube.KUBE_VERSION  # type: ignore[index]


def test_a_cluster_agent_without_its_cluster_table_is_a_503(fleet: Fleet, tmp_path: Path) -> None:
    plain = ClusterAgent(
        name="cluster-plain", workdir=tmp_path, server=fleet.server, serve_cluster=False
    )
    plain.join()
    plain.start()
    try:
        plain.wait_connected()
        status, answer = _raw(fleet, "/clusters/cluster-plain/version")
        assert status == 503
        assert _is_status(answer, 503)
        assert "does not serve its API server: run it with a [cluster] section" in str(
            answer["message"]
        )
    finally:
        plain.stop()


def test_a_node_identity_with_a_cluster_table_refuses_to_start(
    fleet: Fleet, tmp_path: Path
) -> None:
    node = Agent(name="edge-node-2", workdir=tmp_path, server=fleet.server)
    node.join()
    node.tables["cluster"] = {"kubeconfig": str(fleet.a.agent.member_kubeconfig())}
    done = subprocess.run(
        [
            str(BIN / "edge-agent"),
            "run",
            "--config",
            str(node.write_config()),
            "--data-dir",
            str(node.data_dir),
            "--local-api-port",
            str(node.local_api_port),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert done.returncode == 2, done.stderr
    assert "this agent joined as node 'edge-node-2'" in done.stderr


def test_the_raw_path_and_query_reach_the_member(fleet: Fleet) -> None:
    a = fleet.a
    namespace = _namespace(a, "rawpath")
    a.kubectl("create", "configmap", "x-1", "-n", namespace)
    a.kubectl("create", "configmap", "x-2", "-n", namespace)
    status, answer = _raw(
        fleet,
        f"/clusters/{a.name}/api/v1/namespaces/{namespace}/configmaps"
        "?fieldSelector=metadata.name%3Dx-2&limit=5",
    )
    assert status == 200, answer
    assert [i["metadata"]["name"] for i in answer["items"]] == ["x-2"]  # type: ignore[attr-defined]


def test_paths_that_cannot_be_sent_on_are_a_400(fleet: Fleet) -> None:
    status, answer = _raw(fleet, f"/clusters/{fleet.a.name}/api/v1/namespaces/%00/pods")
    assert status == 400
    assert _is_status(answer, 400)
    assert "NUL, CR and LF are refused even encoded" in str(answer["message"])
    status, answer = _raw(fleet, "/clusters/a%2Fb/version")  # a name with a slash: none such
    assert status == 404
    assert _is_status(answer, 404)
