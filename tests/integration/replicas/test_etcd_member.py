"""Three replicas on a kube-apiserver whose storage is a real 3-member etcd: a member dies.

Issue 17: "kill one etcd member: no request fails beyond a retry". Three real ``tunnel-server
run --store kubernetes`` replicas on one namespace of a kube-apiserver that stores in a real
3-member etcd cluster (``tests/harness/etcd_cluster.py``); light agents
(``tests.harness.swarm``) reach them through one balancer address, as the other replica
tests do. While a steady stream of requests runs, the etcd member that leads is SIGKILLed,
started again, then a follower is:

* node proxy GETs through a replica that does not hold the agent (peer forwarding);
* REST reads: ``GET /api/v1/nodes`` on each replica, every node listed and connected;
* REST writes: a bootstrap token created (``POST /api/v1/tokens``: one create in the API) and
  revoked (``DELETE``: a read and a replace), round robin over the replicas;
* ``tunnel-server apply -f`` of a new ManagedCluster (the real CLI, a GET and a PUT), whose
  status the hub controller -- one of the leader's singletons -- then writes.

The retry rule (docs/ha.md, "etcd member loss"): a request that fails (an error status, a
refused or reset connection, no answer within ``ATTEMPT_TIMEOUT_S``) is sent once more, as
soon as the running etcd members agree on a leader (a condition, at once when they already
do); a second failure fails the test. A retried revoke answered 404 counts as done (its
first attempt was committed). Asserted besides: no agent ever reconnected (the swarm's
``sessions_opened`` and its holders are the same at the end), each replica's Lease kept
renewing (its ``renewTime``, read with the official ``kubernetes`` client, never stood still
for a lease duration), the restarted member rejoined (every member healthy, one leader, its
own copy holds an object written after it came back) and writes work after it. The longest
request latency in each kill's window is printed (``-s``), not asserted.
"""

from __future__ import annotations

import itertools
import json
import statistics
import subprocess
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes
import pytest

from tests.harness import etcd_cluster, kube
from tests.harness.balancer import Balancer
from tests.harness.ha import (
    KIND_LABEL,
    Replica,
    agent_holders,
    start_replicas,
    start_swarm,
    stop_all,
    swarm_status,
)
from tests.harness.procs import ManagedProcess, ServiceError
from tests.harness.waiting import NotSeen, eventually
from tunnel_server.settings import ReplicaSettings

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

CRDS = Path(__file__).resolve().parents[3] / "packaging" / "kubernetes" / "tunnel-server" / "crds"
NAMESPACE = "edgefleet-etcd"
AGENTS = 6
"""Light agents: two per replica (the balancer spreads round robin)."""
ATTEMPT_TIMEOUT_S = 30.0
"""Seconds one attempt may take before it counts as failed: above the store's own request
timeout (10 s), so a write that hangs on the API is answered by the replica first."""
SETTLE_S = 120.0
"""Seconds allowed for each wait on 2 busy cores."""
CLUSTER_YAML = """\
apiVersion: fleet.edgefleet.io/v1alpha1
kind: ManagedCluster
metadata:
  name: {name}
  labels: {{purpose: etcd-member-loss}}
spec:
  hubAcceptsClient: true
"""


# ---------------------------------------------------------------- the stack


@dataclass
class Stack:
    cluster: etcd_cluster.EtcdCluster
    plane: kube.ControlPlane
    replicas: list[Replica]
    balancer: Balancer
    swarm: ManagedProcess
    workdir: Path

    @property
    def nodes(self) -> set[str]:
        return {f"etcd-{i:05d}" for i in range(AGENTS)}


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    """Three etcd members, kube-apiserver on them (CRDs), 3 replicas, a balancer, the agents."""
    workdir = tmp_path_factory.mktemp("etcd-member")
    with etcd_cluster.etcd_cluster(workdir / "etcd") as cluster:
        plane = kube.start("ha-on-etcd", workdir / "kube", etcd_servers=cluster.client_urls)
        replicas: list[Replica] = []
        balancer: Balancer | None = None
        swarm: ManagedProcess | None = None
        try:
            plane.kubectl("apply", "-k", str(CRDS))
            plane.kubectl("wait", "--for=condition=Established", "--timeout=60s", "crd", "--all")
            status, answer = plane.request(
                "POST", "/api/v1/namespaces", {"metadata": {"name": NAMESPACE}}
            )
            assert status == 201, answer
            replicas = start_replicas(
                kubeconfig=plane.kubeconfig, namespace=NAMESPACE, workdir=workdir, count=3
            )
            balancer = Balancer([r.port for r in replicas])
            balancer.start()
            swarm = start_swarm(
                url=f"https://127.0.0.1:{balancer.port}",
                first=replicas[0],
                count=AGENTS,
                workdir=workdir / "swarm",
                prefix="etcd",
            )
            yield Stack(
                cluster=cluster,
                plane=plane,
                replicas=replicas,
                balancer=balancer,
                swarm=swarm,
                workdir=workdir,
            )
        finally:
            if swarm is not None:
                swarm.stop()
            if balancer is not None:
                balancer.stop()
            stop_all(replicas)
            plane.stop()


# ---------------------------------------------------------------- requests with one retry


def call(replica: Replica, method: str, path: str, body: object = None) -> tuple[int, bytes | str]:
    """One request with the admin token: (status, body), or (0, the error) without an answer."""
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(  # noqa: S310 - our own loopback https URL
        replica.url + path,
        data=data,
        method=method,
        headers={
            "Authorization": f"Bearer {replica.admin_token}",
            "Content-Type": "application/json",
        },
    )
    try:
        with urllib.request.urlopen(  # noqa: S310 - ours
            request, timeout=ATTEMPT_TIMEOUT_S, context=replica.ssl_context()
        ) as answer:
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()
    except OSError as error:  # refused, reset, timed out: no answer
        return 0, repr(error)


@dataclass(frozen=True)
class Outcome:
    kind: str
    started: float
    """``time.monotonic()`` when the first attempt was sent."""
    first_s: float
    """Seconds of the first attempt."""
    total_s: float
    """Seconds until the request was done (both attempts and the wait between them)."""
    retried: str | None = None
    """Why the first attempt failed, when it did."""
    failed: str | None = None
    """Why the retry failed too: the test fails."""


Attempt = Callable[[int], str | None]
"""Attempt 1 or 2 (the retry) of a request: None when it succeeded, else why not."""


@dataclass
class Load:
    """The steady stream of requests: one thread per kind, each request retried at most once."""

    stack: Stack
    holders: dict[str, str]
    stop: threading.Event = field(default_factory=threading.Event)
    outcomes: list[Outcome] = field(default_factory=list)
    applied: list[str] = field(default_factory=list)
    tokens: list[str] = field(default_factory=list)
    """Ids of the bootstrap tokens made, in order (their objects are named by them)."""
    threads: list[threading.Thread] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def request(self, kind: str, attempt: Attempt) -> bool:
        """The retry rule: once more when the first attempt fails, once etcd has a leader."""
        started = time.monotonic()
        why = attempt(1)
        first = time.monotonic() - started
        failed = None
        if why is not None:
            try:
                eventually(
                    self.stack.cluster.leader,
                    lambda leader: leader is not None,
                    what="a leader among the running etcd members, before the retry",
                    within=SETTLE_S,
                    every=0.1,
                )
            except NotSeen as error:
                failed = f"{why}; no retry: {error}"
            else:
                failed = attempt(2)
        outcome = Outcome(
            kind=kind,
            started=started,
            first_s=first,
            total_s=time.monotonic() - started,
            retried=why,
            failed=failed,
        )
        with self._lock:
            self.outcomes.append(outcome)
        return failed is None

    def done(self, kind: str, *, since: float) -> int:
        """Requests of ``kind`` answered since ``since`` that succeeded (first time or on retry).

        Answered, not sent: a request in flight at a kill counts, the most telling one.
        """
        with self._lock:
            return sum(
                1
                for o in self.outcomes
                if o.kind == kind and o.started + o.total_s >= since and not o.failed
            )

    def failures(self) -> list[Outcome]:
        with self._lock:
            return [o for o in self.outcomes if o.failed]

    # -- the kinds

    def proxy_forwarded(self, index: int) -> bool:
        node = sorted(self.holders)[index % len(self.holders)]
        others = [r for r in self.stack.replicas if r.pod_name != self.holders[node]]
        through = others[index % len(others)]

        def attempt(_attempt: int) -> str | None:
            code, body = call(through, "GET", f"/api/v1/nodes/{node}/proxy/web/")
            if (code, body) == (200, f"hello {node}".encode()):
                return None
            return f"{through.pod_name} {node}: {code} {body!r:.200}"

        return self.request("proxy", attempt)

    def read_nodes(self, index: int) -> bool:
        replica = self.stack.replicas[index % len(self.stack.replicas)]

        def attempt(_attempt: int) -> str | None:
            code, body = call(replica, "GET", "/api/v1/nodes")
            if code != 200 or isinstance(body, str):
                return f"{replica.pod_name}: {code} {body!r:.200}"
            listed = {n["name"]: bool(n.get("connected")) for n in json.loads(body)["items"]}
            if listed != dict.fromkeys(self.stack.nodes, True):
                return f"{replica.pod_name} lists {listed}"
            return None

        return self.request("read", attempt)

    def write_token(self, index: int) -> bool:
        replica = self.stack.replicas[index % len(self.stack.replicas)]
        made: dict[str, str] = {}

        def create(_attempt: int) -> str | None:
            code, body = call(replica, "POST", "/api/v1/tokens", {"name": f"etcd-w-{index}"})
            if code != 201 or isinstance(body, str):
                return f"create on {replica.pod_name}: {code} {body!r:.200}"
            made["id"] = json.loads(body)["id"]
            with self._lock:
                self.tokens.append(made["id"])
            return None

        def revoke(attempt: int) -> str | None:
            code, body = call(replica, "DELETE", f"/api/v1/tokens/{made['id']}")
            if code == 204 or (attempt == 2 and code == 404):
                return None
            return f"revoke on {replica.pod_name}: {code} {body!r:.200}"

        return self.request("write", create) and self.request("write", revoke)

    def apply_cluster(self, index: int) -> bool:
        replica = self.stack.replicas[index % len(self.stack.replicas)]
        name = f"etcd-mc-{index:03d}"
        manifest = self.stack.workdir / f"{name}.yaml"
        manifest.write_text(CLUSTER_YAML.format(name=name))

        def attempt(_attempt: int) -> str | None:
            try:
                replica.cli("apply", "-f", manifest)
            except (ServiceError, subprocess.TimeoutExpired) as error:
                return f"apply on {replica.pod_name}: {error}"[:400]
            return None

        ok = self.request("apply", attempt)
        if ok:
            with self._lock:
                self.applied.append(name)
        return ok

    def start(self) -> None:
        kinds: dict[str, Callable[[int], bool]] = {
            "proxy": self.proxy_forwarded,
            "read": self.read_nodes,
            "write": self.write_token,
            "apply": self.apply_cluster,
        }
        for kind, one in kinds.items():
            thread = threading.Thread(
                target=self._run, args=(one,), name=f"load-{kind}", daemon=True
            )
            self.threads.append(thread)
            thread.start()

    def _run(self, one: Callable[[int], bool]) -> None:
        index = 0
        while not self.stop.is_set() and one(index):  # a failure ends the thread: the test fails
            index += 1

    def wait_done(self, counts: dict[str, int], *, since: float, what: str) -> None:
        """Wait until each kind has ``counts[kind]`` successes answered since ``since``."""
        eventually(
            lambda: ({k: self.done(k, since=since) for k in counts}, self.failures()),
            lambda seen: bool(seen[1]) or all(seen[0][k] >= n for k, n in counts.items()),
            what=what,
            within=SETTLE_S,
        )
        assert self.failures() == [], self.failures()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=ATTEMPT_TIMEOUT_S * 2 + 10)
        assert not any(t.is_alive() for t in self.threads)


# ---------------------------------------------------------------- observers


@dataclass
class Renewals:
    """Every replica Lease's ``renewTime`` as the official client reads it, twice a second."""

    kubeconfig: Path
    stop: threading.Event = field(default_factory=threading.Event)
    seen: dict[str, list[float]] = field(default_factory=dict)
    leaders: list[str] = field(default_factory=list)
    read_errors: int = 0
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="lease-renewals", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        api = kubernetes.config.new_client_from_config(config_file=str(self.kubeconfig))
        with api:
            leases = kubernetes.client.CoordinationV1Api(api)
            while not self.stop.wait(0.5):
                try:
                    listed = leases.list_namespaced_lease(
                        NAMESPACE,
                        label_selector=f"{KIND_LABEL} in (replica,leader)",
                        _request_timeout=10,
                    )
                except (kubernetes.client.ApiException, OSError, ValueError):
                    self.read_errors += 1  # an observer: its own misses are not the replicas'
                    continue
                for lease in listed.items:
                    spec = lease.spec
                    labels = (lease.metadata.labels if lease.metadata else None) or {}
                    if spec is None or spec.renew_time is None:
                        continue
                    if labels.get(KIND_LABEL) == "leader":
                        if not self.leaders or self.leaders[-1] != spec.holder_identity:
                            self.leaders.append(str(spec.holder_identity))
                        continue
                    times = self.seen.setdefault(str(spec.holder_identity), [])
                    renewed = spec.renew_time.timestamp()
                    if not times or times[-1] != renewed:
                        times.append(renewed)

    def longest_gap(self) -> dict[str, float]:
        """Per replica, the most seconds between two renewals it wrote (as seen)."""
        return {
            name: max(b - a for a, b in itertools.pairwise(times))
            for name, times in self.seen.items()
            if len(times) > 1
        }

    def finish(self) -> None:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)


def labelled_metric(replica: Replica, name: str, **labels: str) -> float:
    """One sample of ``name`` with exactly ``labels`` from /metrics (0 when not written yet)."""
    inside = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    _, body = replica.get("/metrics")
    for line in body.decode().splitlines():
        if line.startswith(f"{name}{{{inside}}} "):
            return float(line.split()[-1])
    return 0.0


def window_figures(load: Load, start: float, end: float) -> dict[str, Any]:
    """Per kind, among the requests sent in [start, end]: count, longest, median, retried."""
    figures: dict[str, Any] = {}
    for kind in ("proxy", "read", "write", "apply"):
        sent = [o for o in load.outcomes if o.kind == kind and start <= o.started <= end]
        if sent:
            figures[kind] = {
                "n": len(sent),
                "max_s": round(max(o.total_s for o in sent), 3),
                "p50_s": round(statistics.median(o.total_s for o in sent), 3),
                "retried": sum(1 for o in sent if o.retried),
            }
    return figures


def kill_and_rejoin(stack: Stack, load: Load, victim: str) -> dict[str, Any]:
    """SIGKILL the etcd member that leads (or a follower), wait for requests, restart it."""
    cluster = stack.cluster
    leader = cluster.wait_healthy()
    index = leader if victim == "leader" else (leader + 1) % len(cluster.members)
    member = cluster.members[index]
    killed = time.monotonic()
    cluster.kill_member(index)
    assert not member.running
    new_leader = cluster.wait_healthy()  # the survivors agree on a leader that is not it
    assert new_leader != index
    if victim == "follower":
        assert new_leader == leader  # losing a follower needs no election
    elected = time.monotonic()
    load.wait_done(
        {"proxy": 20, "read": 6, "write": 5, "apply": 1},
        since=killed,
        what=f"requests of every kind served after the SIGKILL of {victim} {member.name}",
    )
    load.wait_done(
        {"write": 3},
        since=elected,
        what=f"writes once etcd agrees on a leader without {member.name}",
    )
    cluster.start_member(index)
    cluster.wait_healthy()
    rejoined = time.monotonic()
    assert cluster.member_names() == ["etcd0", "etcd1", "etcd2"]
    load.wait_done({"write": 3}, since=rejoined, what=f"writes after {member.name} rejoined")
    # Its own copy (a serializable read: this member alone) has a token made after it came back.
    key = f"/registry/edgefleet.io/bootstraptokens/{NAMESPACE}/{load.tokens[-1]}"
    eventually(
        lambda: member.read_local(key),
        lambda value: value is not None,
        what=f"{key} in the rejoined {member.name}'s own copy",
        ignore=(OSError,),
    )
    return {
        "victim": f"{victim} {member.name}",
        "election_s": round(elected - killed, 2),
        "rejoin_s": round(rejoined - elected, 2),
        "during": window_figures(load, killed - 1.0, rejoined),
    }


# ---------------------------------------------------------------- the test


def test_requests_go_on_while_an_etcd_member_dies_and_rejoins(stack: Stack) -> None:
    replicas, names = stack.replicas, {r.pod_name for r in stack.replicas}
    eventually(
        lambda: [r.status()["replicas_alive"] for r in replicas],
        lambda alive: all(sorted(a) == sorted(names) for a in alive),
        what="every replica sees all three alive",
        within=SETTLE_S,
    )
    first = eventually(
        lambda: (swarm_status(stack.swarm), agent_holders(stack.plane.kubeconfig, NAMESPACE)),
        lambda seen: (
            seen[0].get("connected") == AGENTS
            and set(seen[1]) == stack.nodes
            and set(seen[1].values()) == names
        ),
        what=f"all {AGENTS} agents connected, held by all three replicas",
        within=SETTLE_S,
    )
    holders = {node: str(holder) for node, holder in first[1].items()}
    opened = int(first[0]["sessions_opened"])
    assert opened == AGENTS

    renewals = Renewals(kubeconfig=stack.plane.kubeconfig)
    renewals.start()
    load = Load(stack=stack, holders=holders)
    load.start()
    try:
        began = time.monotonic()
        load.wait_done({"proxy": 10, "read": 3, "write": 3}, since=began, what="a baseline")
        baseline = window_figures(load, began, time.monotonic())
        kills = [kill_and_rejoin(stack, load, victim) for victim in ("leader", "follower")]
    finally:
        load.finish()
        renewals.finish()
    assert load.failures() == [], load.failures()

    # Agents were never disconnected: no new session, the same holders.
    status = swarm_status(stack.swarm)
    assert status["connected"] == AGENTS, status
    assert int(status["sessions_opened"]) == opened, status
    assert status["failures"] == {}, status
    assert agent_holders(stack.plane.kubeconfig, NAMESPACE) == holders

    # Each replica's Lease kept being renewed: never a lease duration without a renewal.
    gaps = renewals.longest_gap()
    assert set(gaps) == names, renewals.seen
    assert all(gap < ReplicaSettings().lease_duration for gap in gaps.values()), gaps
    assert [r.status()["replicas_alive"] for r in replicas] == [sorted(names)] * 3

    # The leader's singletons ran on: the hub controller wrote the status of every cluster
    # applied, the ones applied during the kills included; one replica leads.
    def conditions() -> dict[str, bool]:
        code, body = call(replicas[0], "GET", "/api/v1/fleet/managedclusters")
        assert code == 200, body
        items = json.loads(body)["items"]
        return {
            i["metadata"]["name"]: bool((i.get("status") or {}).get("conditions")) for i in items
        }

    eventually(
        conditions,
        lambda seen: all(seen.get(name) for name in load.applied),
        what="the hub controller's conditions on every ManagedCluster applied",
        within=SETTLE_S,
    )
    assert sum(bool(r.status()["leader"]) for r in replicas) == 1

    renew_failures = {
        r.pod_name: {
            lease: labelled_metric(r, "tunnel_server_lease_renew_failures_total", lease=lease)
            for lease in ("replica", "leader")
        }
        for r in replicas
    }
    print(  # noqa: T201 - the figures of the run (docs/ha.md, "etcd member loss")
        json.dumps(
            {
                "baseline": baseline,
                "kills": kills,
                "longest_renewal_gap_s": {k: round(v, 2) for k, v in gaps.items()},
                "leaders_seen": renewals.leaders,
                "renew_failures": renew_failures,
                "requests": len(load.outcomes),
                "retried": [o.retried for o in load.outcomes if o.retried],
            }
        )
    )
