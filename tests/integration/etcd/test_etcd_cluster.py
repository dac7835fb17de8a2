"""A kube-apiserver on a real 3-member etcd cluster keeps taking writes when one member dies.

Issue 17's storage under the HA tunnel server: the Kubernetes API backed by etcd. A writer
creates ConfigMaps through the API server one after the other while one etcd member (the
leader, then a follower) is SIGKILLed: every write must succeed, the first time or on one retry
made once the surviving members agree on a leader. Then the member is started again on its
data dir: it rejoins, and its own copy (a serializable read from that member alone) holds
every object written while it was dead and the ones written after.
"""

from __future__ import annotations

import functools
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from tests.harness import etcd_cluster, kube
from tests.harness.procs import ServiceError
from tests.harness.waiting import eventually

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

NAMESPACE = "default"  # kube-apiserver creates it itself (no controller-manager needed)
MAX_WRITES = 400
"""Bound on one writer's objects, so a stuck condition cannot write forever."""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[etcd_cluster.EtcdCluster]:
    with etcd_cluster.etcd_cluster(tmp_path_factory.mktemp("etcd")) as started:
        yield started


@pytest.fixture(scope="module")
def plane(
    cluster: etcd_cluster.EtcdCluster, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[kube.ControlPlane]:
    started = kube.start(
        "on-etcd", tmp_path_factory.mktemp("kube-on-etcd"), etcd_servers=cluster.client_urls
    )
    try:
        yield started
    finally:
        started.stop()


def test_the_api_server_stores_in_the_three_members(
    cluster: etcd_cluster.EtcdCluster, plane: kube.ControlPlane
) -> None:
    assert plane.kine_port == 0
    assert len(plane.pids) == 1  # the API server alone: no kine
    flag = next(a for a in plane.argv if a.startswith("--etcd-servers="))
    assert flag.split("=", 1)[1].split(",") == cluster.client_urls
    assert cluster.member_names() == ["etcd0", "etcd1", "etcd2"]
    # The pinned release runs (scripts/etcd-build's default, the harness's constant).
    for member in cluster.members:
        assert member.call("/version")["etcdserver"] == etcd_cluster.ETCD_VERSION.lstrip("v")
    status, _ = plane.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {"metadata": {"name": "stored-in-etcd"}, "data": {"where": "etcd-members"}},
    )
    assert status == 201
    # Committed by a quorum: each member's own copy has it (raft applies it everywhere).
    key = f"/registry/configmaps/{NAMESPACE}/stored-in-etcd"
    for member in cluster.members:
        value = eventually(
            functools.partial(member.read_local, key),
            lambda found: found is not None,
            what=f"{key} in {member.name}'s own copy",
            ignore=(OSError,),
        )
        assert b"etcd-members" in (value or b"")


@dataclass(kw_only=True)
class Writer:
    """Creates ConfigMaps ``<prefix>-0000``, ``-0001``... until told to stop.

    A write that fails is retried once, after the running etcd members agree on a leader (a
    condition, not a delay); a retry answered 409 means the first attempt was committed after
    all, which counts as written (the object is checked afterwards).
    """

    plane: kube.ControlPlane
    cluster: etcd_cluster.EtcdCluster
    prefix: str
    stop: threading.Event = field(default_factory=threading.Event)
    written: list[str] = field(default_factory=list)
    retried: list[tuple[str, int]] = field(default_factory=list)
    failed: list[tuple[str, int, object]] = field(default_factory=list)

    def create(self, name: str) -> tuple[int, object]:
        body = {"metadata": {"name": name}, "data": {"payload": f"written-{name}"}}
        try:
            return self.plane.request(
                "POST", f"/api/v1/namespaces/{NAMESPACE}/configmaps", body, timeout=60.0
            )
        except OSError as error:  # the API server itself is up; say what happened
            return 0, repr(error)

    def run(self) -> None:
        for index in range(MAX_WRITES):
            if self.stop.is_set():
                return
            name = f"{self.prefix}-{index:04d}"
            status, answer = self.create(name)
            if status != 201:
                eventually(
                    self.cluster.leader,
                    lambda leader: leader is not None,
                    what="a leader among the running etcd members",
                    within=120.0,
                    every=0.1,
                )
                first = status
                status, answer = self.create(name)
                if status in (201, 409):
                    self.retried.append((name, first))
                else:
                    self.failed.append((name, status, answer))
                    return
            self.written.append(name)


@pytest.mark.parametrize(
    ("victim", "how"), [("leader", "kill"), ("follower", "kill"), ("follower", "stop")]
)
def test_writes_go_on_while_a_member_is_killed_and_it_rejoins(
    cluster: etcd_cluster.EtcdCluster, plane: kube.ControlPlane, victim: str, how: str
) -> None:
    """SIGKILL (its machine dies) or SIGTERM (a clean stop, e.g. a reboot) of one member."""
    leader = cluster.wait_healthy()
    index = leader if victim == "leader" else (leader + 1) % len(cluster.members)
    killed = cluster.members[index]
    writer = Writer(plane=plane, cluster=cluster, prefix=f"during-{how}-{victim}")
    thread = threading.Thread(target=writer.run, name=f"writer-{victim}", daemon=True)
    thread.start()
    try:
        eventually(lambda: len(writer.written), lambda n: n >= 5, what="5 writes before the kill")
        if how == "kill":
            cluster.kill_member(index)
        else:
            cluster.stop_member(index)
        assert not killed.running
        at_kill = len(writer.written)
        eventually(
            lambda: (len(writer.written), writer.failed),
            lambda seen: seen[0] >= at_kill + 20 or bool(seen[1]),
            what=f"20 writes after {how} of {victim} {killed.name}",
            within=180.0,
        )
    finally:
        writer.stop.set()
        thread.join(timeout=120.0)
    assert not thread.is_alive()
    assert writer.failed == [], f"failed after one retry: {writer.failed}; retried {writer.retried}"
    assert len(writer.written) >= at_kill + 20
    # The survivors elected (or kept) a leader that is not the dead member.
    new_leader = cluster.wait_healthy()
    assert new_leader != index
    if victim == "follower":
        assert new_leader == leader  # losing a follower needs no election

    # Every write is there, whole, through the API server.
    status, listed = plane.request("GET", f"/api/v1/namespaces/{NAMESPACE}/configmaps")
    assert status == 200
    found = {
        item["metadata"]["name"]: item["data"]["payload"]
        for item in listed["items"]
        if item["metadata"]["name"].startswith(writer.prefix)
    }
    assert found == {name: f"written-{name}" for name in writer.written}

    # The killed member comes back on its data dir and catches up from the leader.
    cluster.start_member(index)
    cluster.wait_healthy()
    assert cluster.member_names() == ["etcd0", "etcd1", "etcd2"]
    prefix = f"/registry/configmaps/{NAMESPACE}/{writer.prefix}-"
    eventually(
        lambda: killed.count_local(prefix),
        lambda count: count == len(writer.written),
        what=f"{killed.name}'s own copy holding the {len(writer.written)} objects",
        within=120.0,
        ignore=(OSError,),
    )
    during = writer.written[-1]  # written while it was dead
    value = killed.read_local(f"/registry/configmaps/{NAMESPACE}/{during}")
    assert value is not None
    assert f"written-{during}".encode() in value
    # And it follows new writes again.
    after = f"{writer.prefix}-after-rejoin"
    status, _ = plane.request(
        "POST",
        f"/api/v1/namespaces/{NAMESPACE}/configmaps",
        {"metadata": {"name": after}, "data": {"payload": "after"}},
    )
    assert status == 201
    eventually(
        lambda: killed.read_local(f"/registry/configmaps/{NAMESPACE}/{after}"),
        lambda found: found is not None,
        what=f"{after} in the rejoined {killed.name}'s own copy",
        ignore=(OSError,),
    )


def test_a_cluster_without_its_binary_says_how_to_build_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("EDGEFLEET_KUBE_BIN", str(tmp_path))
    with pytest.raises(ServiceError, match="scripts/etcd-build"):
        etcd_cluster.launch(tmp_path / "etcd")
    assert not (tmp_path / "etcd").exists()
