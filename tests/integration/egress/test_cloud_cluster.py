"""The egress server and autonomy against a real kube-apiserver as the cloud cluster.

Node objects carry the addresses the egress maps CONNECT hosts by; the autonomy webhook is
registered with the MutatingWebhookConfiguration ``tunnel-server autonomy-webhook`` prints;
the controller patches live pods when a node gains or loses ``edgefleet.io/autonomy=true``.
No kubelet runs: the nodes are API objects, and the agent's ``kubelet`` target is a socket that
listens and never answers (a 200 proves the CONNECT reached the node).
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import pytest
from kubernetes import client, config

from tests.harness import kube
from tests.harness.daemons import Agent, Server, command
from tests.harness.waiting import eventually

pytestmark = pytest.mark.kube

AUTONOMY = "edgefleet.io/autonomy"
NAMESPACE = "egress-autonomy"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"


@dataclass
class Cloud:
    server: Server
    socket: Path
    core: client.CoreV1Api


def create_node(core: client.CoreV1Api, name: str, addresses: list[tuple[str, str]]) -> None:
    """A Node object with status.addresses and the kubelet port, as a kubelet would report."""
    with contextlib.suppress(client.ApiException):
        core.delete_node(name)
    core.create_node(client.V1Node(metadata=client.V1ObjectMeta(name=name)))
    core.patch_node_status(
        name,
        {
            "status": {
                "addresses": [{"type": t, "address": a} for t, a in addresses],
                "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}},
            }
        },
    )


@pytest.fixture(scope="module")
def cloud(
    tmp_path_factory: pytest.TempPathFactory, kube_cluster: kube.ControlPlane
) -> Iterator[Cloud]:
    workdir = tmp_path_factory.mktemp("egress-cloud")
    short = Path(tempfile.mkdtemp(prefix="egress-", dir="/tmp"))
    kubelet = socket.create_server(("127.0.0.1", 0))  # listens; the agent's dial succeeds
    server = Server(
        workdir=workdir,
        extra_args=(
            "--kube-upstream",
            str(kube_cluster.kubeconfig),
            "--egress-uds",
            str(short / "egress.sock"),
            "--autonomy",
        ),
    )
    agent = Agent(
        name="edge-m",
        workdir=workdir,
        server=server,
        targets={"kubelet": f"127.0.0.1:{kubelet.getsockname()[1]}"},
    )
    api = config.new_client_from_config(config_file=str(kube_cluster.kubeconfig))
    core = client.CoreV1Api(api)
    webhook = None
    try:
        for name, addresses in (
            ("edge-m", [("InternalIP", "10.77.0.1"), ("Hostname", "edge-m-host")]),
            ("plain-1", [("InternalIP", "10.77.0.9")]),
            ("shared-a", [("InternalIP", "10.77.0.50")]),
            ("shared-b", [("InternalIP", "10.77.0.50")]),
        ):
            create_node(core, name, addresses)
        with contextlib.suppress(client.ApiException):
            core.create_namespace(client.V1Namespace(metadata=client.V1ObjectMeta(name=NAMESPACE)))
        server.start()
        agent.join()
        agent.start()
        agent.wait_connected()
        # Local to the server machine (it prints, it calls no API): the data dir, not the CLI's
        # --server (which here would mean the URL kube-apiserver dials).
        webhook = command("tunnel-server", "autonomy-webhook", "--data-dir", server.data_dir)
        kubectl(kube_cluster, "apply", "-f", "-", stdin=webhook)
        yield Cloud(server=server, socket=short / "egress.sock", core=core)
    finally:
        if webhook is not None:
            kubectl(kube_cluster, "delete", "mutatingwebhookconfiguration", "edgefleet-autonomy")
        with contextlib.suppress(client.ApiException):
            core.delete_namespace(NAMESPACE)
        for name in ("edge-m", "plain-1", "shared-a", "shared-b", "auto-1"):
            with contextlib.suppress(client.ApiException):
                core.delete_node(name)
        api.close()
        agent.stop()
        server.stop()
        kubelet.close()
        shutil.rmtree(short, ignore_errors=True)


def kubectl(plane: kube.ControlPlane, *args: str, stdin: str | None = None) -> str:
    done = subprocess.run(
        [str(kube.kube_bin_dir() / "kubectl"), "--kubeconfig", str(plane.kubeconfig), *args],
        input=stdin,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def connect(cloud: Cloud, authority: str) -> str:
    """The status line the egress server answers kube-apiserver's CONNECT with."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
        conn.settimeout(15)
        conn.connect(str(cloud.socket))
        conn.sendall(f"CONNECT {authority} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n".encode())
        head = b""
        while b"\r\n" not in head:
            chunk = conn.recv(4096)
            if not chunk:
                break
            head += chunk
    return head.split(b"\r\n", 1)[0].decode()


@pytest.mark.parametrize("host", ["10.77.0.1", "edge-m-host", "edge-m"])
def test_a_node_address_maps_to_its_agent(cloud: Cloud, host: str) -> None:
    eventually(
        lambda: connect(cloud, f"{host}:10250"),
        lambda line: line == "HTTP/1.1 200 Connection established",
        what=f"CONNECT {host} established",
    )


@pytest.mark.parametrize(
    ("authority", "expected"),
    [
        ("10.77.0.9:10250", "HTTP/1.1 404 node plain-1 (address 10.77.0.9) has no EdgeFleet agent"),
        ("10.77.0.50:10250", "HTTP/1.1 409 address 10.77.0.50 belongs to several nodes"),
        ("10.77.0.77:10250", "HTTP/1.1 404 no edge node has the name or address 10.77.0.77"),
        ("10.77.0.1:10255", "HTTP/1.1 403 port 10255 is not the kubelet port (10250)"),
    ],
)
def test_addresses_of_no_edge_node_are_refused(cloud: Cloud, authority: str, expected: str) -> None:
    eventually(
        lambda: connect(cloud, authority),
        lambda line: line.startswith(expected),
        what=f"CONNECT {authority} refused",
    )


def pod_body(name: str, node: str, *, owner: str | None = None) -> client.V1Pod:
    metadata: dict[str, Any] = {"name": name}
    if owner:
        metadata["ownerReferences"] = [
            {
                "apiVersion": "apps/v1",
                "kind": owner,
                "name": "x",
                "uid": "0d4c3c1e-0000-4000-8000-000000000001",
            }
        ]
    body = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": metadata,
        "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox"}]},
    }
    # The client sends a dict as it is; typed as the model its signature names.
    return cast("client.V1Pod", body)


def tolerations(cloud: Cloud, name: str) -> dict[str, int | None]:
    return seconds_of(cloud.core.read_namespaced_pod(name, NAMESPACE))


def ours(cloud: Cloud, name: str) -> dict[str, str]:
    return our_annotations(cloud.core.read_namespaced_pod(name, NAMESPACE))


def our_annotations(pod: client.V1Pod) -> dict[str, str]:
    assert pod.metadata is not None
    found = pod.metadata.annotations or {}
    return {k: v for k, v in found.items() if k.startswith("edgefleet.io/")}


def label(cloud: Cloud, node: str, value: str | None, *, duration: str | None = None) -> None:
    patch: dict[str, Any] = {"metadata": {"labels": {AUTONOMY: value}}}
    if duration is not None:
        patch["metadata"]["annotations"] = {"edgefleet.io/autonomy-duration": duration}
    cloud.core.patch_node(node, patch)


def seconds_of(pod: client.V1Pod) -> dict[str, int | None]:
    assert pod.spec is not None
    return {
        t.key: t.toleration_seconds
        for t in pod.spec.tolerations or []
        if t.key in (UNREACHABLE, NOT_READY) and t.effect == "NoExecute"
    }


def test_the_webhook_gives_pods_created_on_an_autonomous_node_the_duration(cloud: Cloud) -> None:
    create_node(cloud.core, "auto-1", [("InternalIP", "10.77.0.2")])
    label(cloud, "auto-1", "true", duration="2h")
    names = iter(f"bound-{i}" for i in range(1000))

    # The answer to the create is the object as admission left it: only the webhook can have
    # changed it (the controller patches later). The webhook reads the node from the server's
    # watch, so the first pods may come before it saw the label.
    def created() -> client.V1Pod:
        return cloud.core.create_namespaced_pod(NAMESPACE, pod_body(next(names), "auto-1"))

    pod = eventually(
        created,
        lambda pod: seconds_of(pod) == {UNREACHABLE: 7200, NOT_READY: 7200},
        what="a pod created with 2h tolerations",
    )
    assert our_annotations(pod) == {
        "edgefleet.io/original-unreachable-toleration-seconds": "300",
        "edgefleet.io/original-not-ready-toleration-seconds": "300",
    }
    plain = cloud.core.create_namespaced_pod(NAMESPACE, pod_body("bound-plain", "edge-m"))
    assert seconds_of(plain) == {UNREACHABLE: 300, NOT_READY: 300}


def test_the_controller_patches_live_pods_and_restores_them(cloud: Cloud) -> None:
    cloud.core.create_namespaced_pod(NAMESPACE, pod_body("live", "plain-1"))
    daemon = cloud.core.create_namespaced_pod(
        NAMESPACE, pod_body("daemon", "plain-1", owner="DaemonSet")
    )
    assert tolerations(cloud, "live") == {UNREACHABLE: 300, NOT_READY: 300}
    label(cloud, "plain-1", "true")
    eventually(
        lambda: tolerations(cloud, "live"),
        lambda t: t == {UNREACHABLE: None, NOT_READY: None},
        what="live pod tolerates forever",
    )
    assert ours(cloud, "live") == {
        "edgefleet.io/original-unreachable-toleration-seconds": "300",
        "edgefleet.io/original-not-ready-toleration-seconds": "300",
    }
    label(cloud, "plain-1", None)
    eventually(
        lambda: (tolerations(cloud, "live"), ours(cloud, "live")),
        lambda seen: seen == ({UNREACHABLE: 300, NOT_READY: 300}, {}),
        what="live pod restored",
    )
    # The DaemonSet pod was never patched (DaemonSet pods tolerate forever already).
    after = cloud.core.read_namespaced_pod("daemon", NAMESPACE)
    assert after.metadata is not None
    assert daemon.metadata is not None
    assert after.metadata.resource_version == daemon.metadata.resource_version


def post_review(cloud: Cloud, body: bytes) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(  # noqa: S310 - our own https URL
        cloud.server.url + "/webhooks/autonomy",
        data=body,
        headers={"Content-Type": "application/json"},
        method="POST",
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - our own https URL
            request, timeout=30, context=cloud.server.ssl_context()
        ) as answer:
            return int(answer.status), json.loads(answer.read())
    except urllib.error.HTTPError as error:
        with error:
            return error.code, json.loads(error.read() or b"{}")


@pytest.mark.parametrize(
    ("body", "status"),
    [
        (b"not json", 400),
        (b'{"kind": "ConfigMap"}', 400),
        (b'{"kind": "AdmissionReview", "request": {}}', 400),
        (b"[" * 100 + b"]" * 100, 400),
        (b'{"kind": "AdmissionReview", "pad": "' + b"x" * (4 * 1024 * 1024) + b'"}', 413),
    ],
)
def test_the_webhook_refuses_what_is_no_admission_review(
    cloud: Cloud, body: bytes, status: int
) -> None:
    answered, error = post_review(cloud, body)
    assert answered == status
    assert error.get("reason")
    assert error.get("detail")


def test_the_webhook_allows_other_kinds_unchanged(cloud: Cloud) -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {"uid": "u-1", "kind": {"kind": "ConfigMap"}, "operation": "CREATE"},
    }
    status, answer = post_review(cloud, json.dumps(review).encode())
    assert status == 200
    assert answer["response"] == {"uid": "u-1", "allowed": True}


@pytest.mark.parametrize("node", ["../../api/v1/namespaces", "edge-m?watch=1", "no-such-node"])
def test_the_webhook_allows_pods_of_unknown_or_impossible_nodes_unchanged(
    cloud: Cloud, node: str
) -> None:
    review = {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": "u-2",
            "kind": {"kind": "Pod"},
            "operation": "CREATE",
            "object": {"metadata": {"name": "p"}, "spec": {"nodeName": node, "containers": []}},
        },
    }
    status, answer = post_review(cloud, json.dumps(review).encode())
    assert status == 200
    assert answer["response"] == {"uid": "u-2", "allowed": True}
