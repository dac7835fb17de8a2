"""SIGKILL of one of three replicas holding a fleet of light agents: all back on the others.

Three real ``tunnel-server run --store kubernetes`` replicas on one namespace of the real
kube-apiserver; ``FAILOVER_AGENTS`` light agents (``tests.harness.swarm``: each a real tunnel
session with its own client certificate, reconnecting as ``edge-agent run`` does) reach them
through one balancer address (``tests.harness.balancer``), because an agent takes one server
address, as it would through the tunnel Service. The replica holding the most agents is
killed; then, waiting for conditions only:

* every agent has a session again, on the surviving replicas;
* every agent Lease (read with the official client) names a surviving replica;
* ``GET /api/v1/nodes/NAME`` answers ``connected`` for every node on both survivors;
* a node proxy request through each survivor reaches an agent the killed one held;
* meanwhile, from the kill until they are all back, node proxy requests for the killed
  replica's agents through the survivors are answered 200, or 503 ``agent_reconnecting``
  with ``Retry-After`` -- never a 502, never ``node_offline`` (``replicas.holder_view``: the
  refused peer dial marks the killed replica dead at once, before its Lease runs out).

``test_node_list_says_connected_on_every_replica``: the list (``GET /api/v1/nodes``, from
``api/table.py``'s ``NodeTable``) counts every node a live replica holds as connected
(``opener.connected_nodes``), as ``GET /api/v1/nodes/NAME`` does (``opener.connected``).
"""

from __future__ import annotations

import itertools
import json
import os
import threading
import time
import urllib.error
import urllib.request
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from edge_agent.settings import TunnelClientSettings
from tests.harness.balancer import Balancer
from tests.harness.ha import (
    Replica,
    agent_holders,
    start_replicas,
    start_swarm,
    stop_all,
    swarm_status,
)
from tests.harness.procs import ManagedProcess
from tests.harness.waiting import eventually

if TYPE_CHECKING:
    from tests.harness import kube

pytestmark = pytest.mark.timeout(600)

FAILOVER_AGENTS = int(os.environ.get("EDGEFLEET_FAILOVER_AGENTS", "100"))
"""Light agents in the test; the issue asks for 100 (an environment variable to try more)."""
SETTLE_S = 120.0
"""Seconds allowed for each wait on 2 busy cores: joins and reconnects of the whole swarm."""
HEALTHY_AFTER_S = TunnelClientSettings().healthy_after
"""A session that lived this long spreads its reconnect (edge-agent: over 15 s): a replica
that dies under a settled fleet, the usual case, and the one whose gap a client sees."""


def connected_one_by_one(replica: Replica, nodes: set[str]) -> dict[str, bool]:
    """``connected`` of each node as ``GET /api/v1/nodes/NAME`` on ``replica`` answers it."""
    answers = {}
    for node in sorted(nodes):
        code, body = replica.get(f"/api/v1/nodes/{node}", token=replica.admin_token)
        assert code == 200, (replica.pod_name, node, body)
        answers[node] = bool(json.loads(body)["connected"])
    return answers


def hello(replica: Replica, node: str) -> tuple[int, bytes]:
    return replica.get(f"/api/v1/nodes/{node}/proxy/web/", token=replica.admin_token)


def answer(replica: Replica, node: str) -> tuple[int, str, str | None]:
    """A node proxy GET: status, the problem's reason ("" on 200), its Retry-After."""
    request = urllib.request.Request(  # noqa: S310 - our own server
        f"{replica.url}/api/v1/nodes/{node}/proxy/web/",
        headers={"Authorization": f"Bearer {replica.admin_token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=replica.ssl_context()) as ok:  # noqa: S310 - ours
            ok.read()
            return int(ok.status), "", ok.headers.get("Retry-After")
    except urllib.error.HTTPError as error:
        with error:
            body = error.read()
            try:
                reason = str(json.loads(body).get("reason"))
            except ValueError:
                reason = body[:80].decode(errors="replace")
            return error.code, reason, error.headers.get("Retry-After")


@dataclass
class Prober:
    """Node proxy requests for ``nodes`` through ``replicas``, round robin, until stopped."""

    replicas: list[Replica]
    nodes: list[str]
    seen: Counter[tuple[int, str, str | None]] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    thread: threading.Thread | None = None

    def start(self) -> None:
        self.thread = threading.Thread(target=self._run, name="failover-prober", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        targets = itertools.cycle(itertools.product(self.nodes, self.replicas))
        while not self.stop.is_set():
            node, replica = next(targets)
            try:
                self.seen[answer(replica, node)] += 1
            except OSError as error:  # the connection itself failed: counted, not raised
                self.seen[0, type(error).__name__, None] += 1

    def finish(self) -> Counter[tuple[int, str, str | None]]:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=60)
        return self.seen


@dataclass
class Fleet:
    replicas: list[Replica]
    balancer: Balancer
    swarm: ManagedProcess | None = None
    prober: Prober | None = None

    def start_swarm(self, count: int, workdir: Path) -> ManagedProcess:
        self.swarm = start_swarm(
            url=f"https://127.0.0.1:{self.balancer.port}",
            first=self.replicas[0],
            count=count,
            workdir=workdir,
        )
        return self.swarm


@pytest.fixture
def fleet(kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path) -> Iterator[Fleet]:
    """Three replicas on the test's namespace and a balancer in front of them."""
    replicas = start_replicas(
        kubeconfig=kube_crds.kubeconfig, namespace=namespace, workdir=tmp_path, count=3
    )
    balancer = Balancer([r.port for r in replicas])
    balancer.start()
    made = Fleet(replicas=replicas, balancer=balancer)
    try:
        yield made
    finally:
        if made.prober is not None:
            made.prober.finish()
        if made.swarm is not None:
            made.swarm.stop()
        balancer.stop()
        stop_all(replicas)


def test_sigkill_one_of_three_replicas_every_agent_back_on_the_others(
    fleet: Fleet, kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    replicas = fleet.replicas
    names = {r.pod_name for r in replicas}
    eventually(
        lambda: [r.status()["replicas_alive"] for r in replicas],
        lambda alive: all(sorted(a) == sorted(names) for a in alive),
        what="every replica sees all three alive",
        within=60,
    )
    swarm = fleet.start_swarm(FAILOVER_AGENTS, tmp_path / "swarm")
    nodes = {f"ha-{i:05d}" for i in range(FAILOVER_AGENTS)}
    first = eventually(
        lambda: (swarm_status(swarm), agent_holders(kube_crds.kubeconfig, namespace)),
        lambda seen: (
            seen[0].get("connected") == FAILOVER_AGENTS
            and set(seen[1]) == nodes
            and all(holder in names for holder in seen[1].values())
        ),
        what=f"all {FAILOVER_AGENTS} agents connected and each Lease naming a replica",
        within=SETTLE_S,
    )
    opened_before = int(first[0]["sessions_opened"])
    connected_at = time.monotonic()
    held = Counter(first[1].values())
    # The balancer spreads round robin: every replica holds some of the fleet.
    assert set(held) == names, held
    victim_name, victim_count = held.most_common(1)[0]
    victim = next(r for r in replicas if r.pod_name == victim_name)
    survivors = [r for r in replicas if r is not victim]
    survivor_names = {r.pod_name for r in survivors}
    orphans = sorted(n for n, h in first[1].items() if h == victim_name)
    orphan = orphans[0]
    prober = fleet.prober = Prober(survivors, orphans)
    # The condition is the sessions' age itself: settled sessions reconnect spread out.
    time.sleep(max(0.0, HEALTHY_AFTER_S + 1 - (time.monotonic() - connected_at)))
    assert victim.process is not None
    victim.process.kill()
    prober.start()

    eventually(
        lambda: swarm_status(swarm),
        lambda status: (
            status.get("connected") == FAILOVER_AGENTS
            and int(status["sessions_opened"]) >= opened_before + victim_count
        ),
        what=f"the {victim_count} agents of {victim_name} connected again",
        within=SETTLE_S,
    )
    after = eventually(
        lambda: agent_holders(kube_crds.kubeconfig, namespace),
        lambda holders: (
            set(holders) == nodes and all(h in survivor_names for h in holders.values())
        ),
        what="every agent Lease names a surviving replica",
        within=SETTLE_S,
    )
    assert Counter(after.values()).total() == FAILOVER_AGENTS
    seen = prober.finish()
    # Until they were back: "reconnecting, retry in 1 s" (kubectl and client-go retry that),
    # never a 502 (the peer link to the dead replica) nor "offline".
    failed = {k: n for k, n in seen.items() if k[0] != 200}
    assert set(failed) <= {(503, "agent_reconnecting", "1")}, seen
    assert failed, f"no request met the reconnect: {seen}"
    eventually(
        lambda: [connected_one_by_one(r, nodes) for r in survivors],
        lambda answers: all(a == dict.fromkeys(nodes, True) for a in answers),
        what="GET /api/v1/nodes/NAME answers connected for every node on both survivors",
        within=SETTLE_S,
    )
    eventually(
        lambda: [r.status()["replicas_alive"] for r in survivors],
        lambda alive: all(sorted(a) == sorted(survivor_names) for a in alive),
        what=f"the Lease of {victim_name} runs out on both survivors",
        within=60,
    )
    # A node the killed replica held answers through either survivor (one of them holds
    # it now, the other forwards).
    for survivor in survivors:
        code, body = hello(survivor, orphan)
        assert (code, body) == (200, f"hello {orphan}".encode()), (survivor.pod_name, body)


def test_node_list_says_connected_on_every_replica(
    fleet: Fleet, kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> None:
    """Agents spread over three replicas: every replica's node list says all are connected."""
    count = 6
    replicas = fleet.replicas
    names = {r.pod_name for r in replicas}
    fleet.start_swarm(count, tmp_path / "swarm")
    nodes = {f"ha-{i:05d}" for i in range(count)}
    eventually(
        lambda: agent_holders(kube_crds.kubeconfig, namespace),
        lambda holders: set(holders) == nodes and set(holders.values()) == names,
        what="the agents held by all three replicas",
        within=SETTLE_S,
    )
    # Every replica answers one by one that all are connected (opener.connected) ...
    for replica in replicas:
        assert connected_one_by_one(replica, nodes) == dict.fromkeys(nodes, True)
    # ... and so should its list.
    eventually(
        lambda: [r.connected_nodes() for r in replicas],
        lambda answers: all(a == dict.fromkeys(nodes, True) for a in answers),
        what="GET /api/v1/nodes says connected for every node on every replica",
        within=10,
    )
