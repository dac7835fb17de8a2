"""A real 3-member etcd cluster on loopback, for the tests of EdgeFleet on Kubernetes (issue 17).

The binary is upstream etcd (go.etcd.io/etcd/server/v3 at ``ETCD_VERSION``), built by
``scripts/etcd-build`` into the kube binaries' folder (``EDGEFLEET_KUBE_BIN``). Each member gets
its own data dir, a client port and a peer port on 127.0.0.1, plain HTTP (loopback only), and a
cluster token of its own, so two clusters of one run never join each other.

Members can be stopped (SIGTERM), killed (SIGKILL) and started again on their data dir: a
restarted member rejoins the cluster it was part of and catches up from the leader. Health,
leadership and reads go through etcd's own HTTP gateway (``/health``, ``/v3/...``), so the
harness needs no etcdctl and no gRPC client; every answer is bounded and decoded as JSON.

Rules: never wait for time, wait for a condition (``eventually``); tests start a cluster with
``start`` (or ``etcd_cluster``) and stop it in a ``finally``. Put a kube-apiserver on top with
``kube.start(..., etcd_servers=cluster.client_urls)``.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import secrets
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.harness.kube import DEFAULT_BIN
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

ETCD_VERSION = "v3.6.17"
"""The release scripts/etcd-build pins (its EDGEFLEET_ETCD_VERSION default)."""
READY_TIMEOUT = 120.0
"""Seconds for a cluster to elect a leader: three cold members on two busy cores."""
HEARTBEAT_MS = 250
"""etcd's --heartbeat-interval. 2.5x the default: on two cores shared with kube-apiserver and
pytest, the default (100 ms) sees followers miss heartbeats and call needless elections."""
ELECTION_MS = 2500
"""etcd's --election-timeout: 10 heartbeats, as etcd's tuning guide says; a leader's death is
noticed (and a new one elected) within a few seconds."""
MAX_ANSWER_BYTES = 4 << 20
"""Largest HTTP answer read from a member (a range of a few keys is a few KiB)."""


def etcd_binary() -> Path:
    """The etcd binary, or a loud error saying how to build it."""
    path = Path(os.environ.get("EDGEFLEET_KUBE_BIN", DEFAULT_BIN)) / "etcd"
    if not path.is_file():
        raise ServiceError(
            f"{path} not found: run scripts/etcd-build (scripts/kube-build runs it) and set "
            "EDGEFLEET_KUBE_BIN to the folder it prints"
        )
    return path


def _b64(text: str) -> str:
    return base64.b64encode(text.encode()).decode()


def prefix_end(prefix: str) -> str:
    """The range end that makes a range over every key starting with ``prefix`` (etcd's rule)."""
    raw = prefix.encode()
    if not raw or raw[-1] == 0xFF:
        raise ValueError(f"no simple range end for prefix {prefix!r}")
    return (raw[:-1] + bytes([raw[-1] + 1])).decode()


@dataclass(kw_only=True)
class Member:
    """One etcd member: its name, ports, data dir and (while it runs) its process."""

    name: str
    data_dir: Path
    client_port: int
    peer_port: int
    log_path: Path
    process: ManagedProcess | None = None

    @property
    def client_url(self) -> str:
        return f"http://127.0.0.1:{self.client_port}"

    @property
    def peer_url(self) -> str:
        return f"http://127.0.0.1:{self.peer_port}"

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None

    def call(self, path: str, body: object = None, *, timeout: float = 5.0) -> Any:
        """One JSON request to this member's HTTP gateway: GET without body, POST with one.

        Raises ``OSError`` (refused, reset, timed out) or ``urllib.error.HTTPError``; callers
        that wait on a member list them in ``eventually(..., ignore=...)``.
        """
        data = None if body is None else json.dumps(body).encode()
        request = urllib.request.Request(  # noqa: S310 - always our own loopback http URL
            self.client_url + path,
            data=data,
            method="GET" if data is None else "POST",
            headers={"Content-Type": "application/json"},
        )
        with urllib.request.urlopen(request, timeout=timeout) as answer:  # noqa: S310
            raw = answer.read(MAX_ANSWER_BYTES + 1)
        if len(raw) > MAX_ANSWER_BYTES:
            raise ValueError(f"{self.name}: answer to {path} over {MAX_ANSWER_BYTES} bytes")
        return json.loads(raw)

    def healthy(self) -> bool:
        """``/health`` says true: this member is up and sees a leader with a quorum."""
        return bool(self.call("/health", timeout=3.0).get("health") == "true")

    def status(self) -> dict[str, Any]:
        """This member's ``Maintenance.Status``.

        Its id (``header.member_id``), the leader's id, the raft index it has applied...
        (uint64 fields come as decimal strings).
        """
        answer: dict[str, Any] = self.call("/v3/maintenance/status", {}, timeout=3.0)
        return answer

    def count_local(self, prefix: str) -> int:
        """How many keys under ``prefix`` this member's own copy has.

        A serializable read: no quorum, no leader; what this member has applied, which is what
        rejoining means.
        """
        answer = self.call(
            "/v3/kv/range",
            {
                "key": _b64(prefix),
                "range_end": _b64(prefix_end(prefix)),
                "serializable": True,
                "count_only": True,
            },
        )
        return int(answer.get("count", 0))

    def read_local(self, key: str) -> bytes | None:
        """One key's value from this member's own copy (serializable), or None."""
        answer = self.call("/v3/kv/range", {"key": _b64(key), "serializable": True})
        kvs = answer.get("kvs") or []
        return base64.b64decode(kvs[0]["value"]) if kvs else None


@dataclass(kw_only=True)
class EtcdCluster:
    """Three (or ``size``) members on loopback and the flags they share."""

    workdir: Path
    members: list[Member]
    token: str
    _started_once: set[str] = field(default_factory=set)
    _down: set[str] = field(default_factory=set)
    """Members stopped or killed on purpose (the others must run)."""

    @property
    def client_urls(self) -> list[str]:
        """Every member's client URL, for kube-apiserver's ``--etcd-servers``."""
        return [m.client_url for m in self.members]

    @property
    def initial_cluster(self) -> str:
        return ",".join(f"{m.name}={m.peer_url}" for m in self.members)

    def argv(self, member: Member) -> list[str]:
        # A member that ran before has its WAL: etcd then ignores the initial-cluster flags and
        # rejoins with the membership it recorded; "existing" says so in its log.
        state = "existing" if member.name in self._started_once else "new"
        return [
            str(etcd_binary()),
            f"--name={member.name}",
            f"--data-dir={member.data_dir}",
            f"--listen-client-urls={member.client_url}",
            f"--advertise-client-urls={member.client_url}",
            f"--listen-peer-urls={member.peer_url}",
            f"--initial-advertise-peer-urls={member.peer_url}",
            f"--initial-cluster={self.initial_cluster}",
            f"--initial-cluster-token={self.token}",
            f"--initial-cluster-state={state}",
            f"--heartbeat-interval={HEARTBEAT_MS}",
            f"--election-timeout={ELECTION_MS}",
            "--log-level=info",
        ]

    def start_member(self, index: int) -> None:
        """Start member ``index`` (again) on its data dir; does not wait (see ``wait_healthy``)."""
        member = self.members[index]
        if member.running:
            return
        member.data_dir.mkdir(parents=True, exist_ok=True)
        member.data_dir.chmod(0o700)  # etcd warns on (and 3.6 may refuse) a wider data dir
        member.process = ManagedProcess(
            f"etcd[{member.name}]", self.argv(member), log_path=member.log_path
        )
        self._started_once.add(member.name)
        self._down.discard(member.name)

    def stop_member(self, index: int) -> None:
        """SIGTERM: the member leaves cleanly (it stays in the membership, as after a reboot)."""
        member = self.members[index]
        self._down.add(member.name)
        if member.process is not None:
            member.process.stop()

    def kill_member(self, index: int) -> None:
        """SIGKILL at once: no goodbye to its peers, as when its machine dies."""
        member = self.members[index]
        self._down.add(member.name)
        if member.process is not None:
            member.process.kill()

    def leader(self) -> int | None:
        """Index of the member the running members agree leads.

        None while there is no leader or no agreement yet (an election is going on).
        """
        ids: dict[str, int] = {}
        leaders: set[str] = set()
        for index, member in enumerate(self.members):
            if not member.running:
                continue
            try:
                status = member.status()
            except (OSError, ValueError):
                return None
            ids[str(status["header"]["member_id"])] = index
            leaders.add(str(status.get("leader", "0")))
        if len(leaders) != 1:
            return None
        (leader,) = leaders
        return ids.get(leader)

    def wait_healthy(self, *, within: float = READY_TIMEOUT) -> int:
        """Wait until every running member is healthy and all agree on one leader; its index."""

        def probe() -> tuple[bool, int | None]:
            running = [m for m in self.members if m.name not in self._down]
            for member in running:
                if member.process is not None:
                    member.process.check_running()  # a crash ends the wait, with its log
            healthy = all(m.healthy() for m in running)
            return healthy, self.leader() if healthy else None

        try:
            _, leader = eventually(
                probe,
                lambda answer: answer[0] and answer[1] is not None,
                what="every running etcd member healthy, one leader",
                within=within,
                every=0.2,
                ignore=(OSError, ValueError),
            )
        except NotSeen as error:
            logs = "\n".join(
                f"--- {m.name}\n{m.process.tail(15)}" for m in self.members if m.process
            )
            raise ServiceError(f"{error}\n{logs}") from error
        assert leader is not None
        return leader

    def member_names(self) -> list[str]:
        """The membership as a running member records it (names of started members)."""
        for member in self.members:
            if member.running:
                answer = member.call("/v3/cluster/member/list", {})
                return sorted(str(m.get("name", "")) for m in answer.get("members", []))
        raise ServiceError("no etcd member runs")

    def stop(self) -> None:
        for member in self.members:
            if member.process is not None:
                member.process.stop()


def launch(workdir: Path, *, size: int = 3) -> EtcdCluster:
    """Start ``size`` members without waiting for a leader (see ``EtcdCluster.wait_healthy``)."""
    etcd_binary()  # fail before starting anything when it is missing
    workdir.mkdir(parents=True, exist_ok=True)
    members = [
        Member(
            name=f"etcd{index}",
            data_dir=workdir / f"etcd{index}.data",
            client_port=free_port(),
            peer_port=free_port(),
            log_path=workdir / f"etcd{index}.log",
        )
        for index in range(size)
    ]
    cluster = EtcdCluster(
        workdir=workdir, members=members, token=f"edgefleet-test-{secrets.token_hex(6)}"
    )
    try:
        for index in range(size):
            cluster.start_member(index)
    except BaseException:
        cluster.stop()
        raise
    return cluster


def start(workdir: Path, *, size: int = 3) -> EtcdCluster:
    """``launch`` and wait for a healthy cluster with a leader; stops it on failure."""
    cluster = launch(workdir, size=size)
    try:
        cluster.wait_healthy()
    except BaseException:
        cluster.stop()
        raise
    return cluster


@contextlib.contextmanager
def etcd_cluster(workdir: Path, *, size: int = 3) -> Iterator[EtcdCluster]:
    """A healthy cluster for the ``with`` block, stopped afterwards."""
    cluster = start(workdir, size=size)
    try:
        yield cluster
    finally:
        cluster.stop()
