"""kubectl exec, logs -f, port-forward and cp through the cloud proxy to a registered member.

A whole member cluster (``tests.harness.member``: kube-apiserver, controller manager,
scheduler, kwok serving the kubelet API) registered with a cluster-mode agent process; kubectl
talks to ``https://SERVER/clusters/C``. kubectl 1.36 speaks WebSocket first
(``v5.channel.k8s.io``, ``SPDY/3.1+portforward.k8s.io``); each test runs again with
``KUBECTL_REMOTE_COMMAND_WEBSOCKETS`` / ``KUBECTL_PORT_FORWARD_WEBSOCKETS=false``, which makes
kubectl upgrade to SPDY/3.1 instead. Either way the upgrade and the bytes after it cross the
cloud and the agent untouched.
"""

from __future__ import annotations

import hashlib
import os
import secrets
import socket
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness import member
from tests.harness.daemons import Server
from tests.harness.procs import ManagedProcess, free_port
from tests.harness.waiting import eventually
from tests.integration.clusters.members import Member, kubectl_path, register, run_kubectl
from tests.integration.harness.test_member_real import Sink, deployment, running_pods

pytestmark = pytest.mark.kube

TIMEOUT = 360  # seconds per test: a member cluster starts in 10 s idle, far more when busy
PROTOCOLS = {
    "websocket": {},
    "spdy": {
        "KUBECTL_REMOTE_COMMAND_WEBSOCKETS": "false",
        "KUBECTL_PORT_FORWARD_WEBSOCKETS": "false",
    },
}
MB = 1024 * 1024


@dataclass
class Registered:
    cluster: member.MemberCluster
    via: Member


@pytest.fixture(scope="module")
def registered(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Registered]:
    base = tmp_path_factory.mktemp("streaming")
    server = Server(workdir=base)
    via: Member | None = None
    with member.running_member("stream", base / "stream", nodes=1) as cluster:
        try:
            server.start()
            via = register(server, cluster.plane, "stream", base)
            yield Registered(cluster=cluster, via=via)
        finally:
            if via is not None:
                via.agent.stop()
            server.stop()


@pytest.fixture(scope="module")
def pod(registered: Registered) -> tuple[str, str]:
    """One Running pod on a kwok node: (namespace, name)."""
    namespace = f"s-{secrets.token_hex(4)}"
    registered.via.kubectl("create", "namespace", namespace)
    registered.via.kubectl("apply", "-n", namespace, "-f", "-", stdin=deployment("solo", 1))
    (found,) = running_pods(registered.cluster, namespace, "solo", 1)
    return namespace, str(found["metadata"]["name"])


def _kubectl(registered: Registered, protocol: str, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, **PROTOCOLS[protocol]}
    return run_kubectl(registered.via.kubeconfig, *args, stdin=stdin, env=env, timeout=120).stdout


def _background(
    registered: Registered, protocol: str, name: str, log: Path, *args: str
) -> ManagedProcess:
    argv = [str(kubectl_path()), f"--kubeconfig={registered.via.kubeconfig}", *args]
    return ManagedProcess(name, argv, log_path=log, env=PROTOCOLS[protocol])


def _output(process: ManagedProcess) -> str:
    process.check_running()
    return process.tail()


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_exec_with_stdin(registered: Registered, pod: tuple[str, str], protocol: str) -> None:
    namespace, name = pod
    lines = [f"line {i} {secrets.token_hex(8)}" for i in range(3)]
    # kwok never closes a command's stdin: run something that ends on its own (head -n 3).
    out = _kubectl(
        registered,
        protocol,
        "exec",
        "-i",
        "-n",
        namespace,
        name,
        "--",
        "head",
        "-n",
        "3",
        stdin="\n".join(lines) + "\n",
    )
    assert out.splitlines() == lines
    failed = run_kubectl(
        registered.via.kubeconfig,
        "exec",
        "-n",
        namespace,
        name,
        "--",
        "sh",
        "-c",
        "exit 3",
        check=False,
        env={**os.environ, **PROTOCOLS[protocol]},
    )
    assert failed.returncode != 0
    assert "exit status 3" in failed.stderr


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_logs_follow(
    registered: Registered, pod: tuple[str, str], protocol: str, tmp_path: Path
) -> None:
    namespace, name = pod
    log_file = tmp_path / "main.log"
    member.write_cri_log(log_file, ["first line"])
    rule = f"logs-{protocol}-{secrets.token_hex(3)}"
    registered.cluster.add_logs(rule, log_file, namespaces=[namespace], pods=[name])
    follower = _background(
        registered,
        protocol,
        "kubectl logs -f",
        tmp_path / "f.out",
        "logs",
        "-f",
        "-n",
        namespace,
        name,
    )
    try:
        eventually(lambda: _output(follower), lambda t: "first line" in t, what="logs", within=60)
        member.write_cri_log(log_file, ["appended later"])
        eventually(
            lambda: _output(follower),
            lambda t: "appended later" in t,
            what="kubectl logs -f through the proxy shows a line appended afterwards",
            within=60,
        )
    finally:
        follower.stop()
        registered.cluster.delete_rule("clusterlogs", rule)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize(("protocol", "size"), [("websocket", 100 * MB), ("spdy", 100 * MB)])
def test_port_forward_moves_100_mb_with_its_sha256(
    registered: Registered, pod: tuple[str, str], protocol: str, size: int, tmp_path: Path
) -> None:
    namespace, name = pod
    sink = Sink(size)
    rule = f"pf-{protocol}-{secrets.token_hex(3)}"
    registered.cluster.add_port_forward(rule, sink.port, namespaces=[namespace], pods=[name])
    local = free_port()
    forwarder = _background(
        registered,
        protocol,
        "kubectl port-forward",
        tmp_path / "pf.out",
        "port-forward",
        "-n",
        namespace,
        f"pod/{name}",
        f"{local}:8080",
    )
    block = hashlib.sha256(b"edgefleet-pf").digest() * 2048  # 64 KiB, not compressible by TLS
    expected = hashlib.sha256()
    try:
        eventually(
            lambda: _output(forwarder),
            lambda text: f"Forwarding from 127.0.0.1:{local}" in text,
            what="kubectl port-forward listening",
            within=60.0,
        )
        with socket.create_connection(("127.0.0.1", local), timeout=120.0) as connection:
            sent = 0
            while sent < size:
                chunk = block[: size - sent]
                connection.sendall(chunk)
                expected.update(chunk)
                sent += len(chunk)
            answer = b""
            while len(answer) < 64:
                chunk = connection.recv(64)
                if not chunk:
                    break
                answer += chunk
        assert answer.decode() == expected.hexdigest()
    finally:
        forwarder.stop()
        sink.close()
        registered.cluster.delete_rule("clusterportforwards", rule)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("protocol", PROTOCOLS)
def test_cp_and_a_binary_upload(
    registered: Registered, pod: tuple[str, str], protocol: str, tmp_path: Path
) -> None:
    """``kubectl cp`` from the pod, and 3 MB of binary stdin into the pod through exec.

    (``kubectl cp`` *into* a pod runs ``tar -x`` reading stdin to its end, and kwok v0.8.0
    never closes an exec's stdin: it hangs against the member directly too, so the upload
    goes through ``exec -i ... head -c N``, the same stdin path with bytes that must not
    change.)
    """
    namespace, name = pod
    # kwok runs exec'd commands as local processes, in exec_workdir.
    inside = registered.cluster.exec_workdir / f"cp-{protocol}"
    inside.mkdir(parents=True, exist_ok=True)
    payload = os.urandom(3 * MB)
    (inside / "in-pod.bin").write_bytes(payload)
    back = tmp_path / "down.bin"
    _kubectl(registered, protocol, "cp", f"{namespace}/{name}:{inside}/in-pod.bin", str(back))
    assert hashlib.sha256(back.read_bytes()).digest() == hashlib.sha256(payload).digest()

    upload = subprocess.run(
        [
            str(kubectl_path()),
            f"--kubeconfig={registered.via.kubeconfig}",
            "exec",
            "-i",
            "-n",
            namespace,
            name,
            "--",
            "sh",
            "-c",
            f"head -c {len(payload)} > {inside}/up.bin",
        ],
        input=payload,
        capture_output=True,
        timeout=120,
        check=False,
        env={**os.environ, **PROTOCOLS[protocol]},
    )
    assert upload.returncode == 0, upload.stderr
    assert (
        hashlib.sha256((inside / "up.bin").read_bytes()).digest()
        == hashlib.sha256(payload).digest()
    )
