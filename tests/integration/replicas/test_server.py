"""Two real ``tunnel-server run --store kubernetes`` processes on one namespace: the election.

Exactly one leads; /status and /readyz say who each is, whether it leads, and who is alive;
an agent's session on one replica is recorded as held by it; SIGKILL of the leader hands the
leadership to the other within a lease duration and a renewal (15 + 2 s, the defaults).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import TYPE_CHECKING

import kubernetes
import pytest

from tests.harness.daemons import Agent
from tests.harness.ha import Replica
from tests.harness.waiting import eventually
from tunnel_server.settings import ReplicaSettings

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness import kube


@pytest.fixture
def replicas(
    kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[list[Replica]]:
    store = ("--store", "kubernetes", "--kubeconfig", str(kube_crds.kubeconfig))
    args = (*store, "--namespace", namespace)
    servers = [
        Replica(workdir=tmp_path / name, extra_args=args, pod_name=f"replica-{name}")
        for name in ("one", "two")
    ]
    for server in servers:
        server.workdir.mkdir()
    try:
        for server in servers:  # one after the other: the first makes the CA
            server.start()
        # The admin token is written by the replica that made it; it works on every replica
        # (its hash is in the shared store), and the harness reads it from each data dir.
        (servers[1].data_dir / "admin-token").write_text(servers[0].admin_token)
        yield servers
    finally:
        for server in servers:
            if server.process is not None:
                server.process.stop()


def leaders(servers: list[Replica]) -> list[str]:
    return [s.pod_name for s in servers if s.status()["leader"]]


def holder(kube_crds: kube.ControlPlane, namespace: str, lease: str) -> str | None:
    """The Lease's holder as the official client reads it (None: no such Lease)."""
    api = kubernetes.config.new_client_from_config(config_file=str(kube_crds.kubeconfig))
    with api:
        try:
            read = kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(lease, namespace)
        except kubernetes.client.ApiException as error:
            if error.status == 404:  # HTTP Not Found
                return None
            raise
    held = None if read.spec is None else read.spec.holder_identity
    return str(held) if held else None


def test_one_leader_an_agent_recorded_and_a_takeover_after_sigkill(
    replicas: list[Replica], kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    one, two = replicas
    both = eventually(
        lambda: (one.status(), two.status()),
        lambda answers: (
            all(a["replicas_alive"] == ["replica-one", "replica-two"] for a in answers)
            and len(leaders(replicas)) == 1
        ),
        what="both replicas alive and exactly one leader",
        within=60,
    )
    assert [a["replica"] for a in both] == ["replica-one", "replica-two"]
    assert both[0]["peer_address"] == f"127.0.0.1:{one.port}"
    code, body = one.get("/readyz")
    ready = json.loads(body)
    assert code == 200
    assert ready["replica"] == "replica-one"
    assert ready["leader"] is both[0]["leader"]
    (leader_name,) = leaders(replicas)
    assert holder(kube_crds, namespace, "edgefleet-leader") == leader_name
    assert (
        one.metric("tunnel_server_replica_leader") + two.metric("tunnel_server_replica_leader")
        == 1.0
    )

    leader = one if leader_name == "replica-one" else two
    follower = two if leader is one else one
    agent = Agent(name="edge-1", workdir=tmp_path, server=follower)
    agent.join()
    agent.start()
    try:
        agent.wait_connected()
        eventually(
            lambda: holder(kube_crds, namespace, "edgefleet-agent-edge-1"),
            lambda held: held == follower.pod_name,
            what="the agent's Lease names the replica holding its session",
        )

        assert leader.process is not None
        leader.process.kill()
        killed = time.monotonic()
        eventually(
            follower.status,
            lambda answer: bool(answer["leader"]),
            what="the follower takes the leadership over",
            within=ReplicaSettings().lease_duration + ReplicaSettings().renew_interval + 10,
        )
        took = time.monotonic() - killed
        settings = ReplicaSettings()
        # leaseDuration as the follower observed it, plus one renew interval of its loop, plus
        # the status poll and a slack for two busy cores.
        assert took <= settings.lease_duration + settings.renew_interval + 3.0, took
        assert holder(kube_crds, namespace, "edgefleet-leader") == follower.pod_name
        eventually(
            follower.status,
            lambda answer: answer["replicas_alive"] == [follower.pod_name],
            what="the killed replica's Lease runs out",
            within=30,
        )
        assert holder(kube_crds, namespace, "edgefleet-agent-edge-1") == follower.pod_name
    finally:
        agent.stop()
    follower.stop()  # a clean shutdown deletes its Lease and gives the leadership up
    assert holder(kube_crds, namespace, f"edgefleet-replica-{follower.pod_name}") is None
    assert holder(kube_crds, namespace, "edgefleet-leader") is None
