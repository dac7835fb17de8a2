"""Several ``tunnel-server run --store kubernetes`` replicas, a balancer and a light-agent swarm.

Shared by ``tests/integration/replicas/test_failover.py`` and ``scripts/bench/ha_bench.py``:

* ``start_replicas`` starts N real replicas on one namespace, one after the other (the first
  makes the CA and the admin token; the others take the CA from the Secret and are given the
  admin token file, whose hash is in the shared store);
* ``start_swarm`` starts ``tests.harness.swarm`` (N light agents) as a child process;
* ``agent_holders`` reads every agent Lease with the official ``kubernetes`` client (an
  independent reader: not the replicas' own mirror).
"""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import kubernetes

from tests.harness.daemons import BIN, Server
from tests.harness.procs import ManagedProcess

ROOT = Path(__file__).resolve().parents[2]
KIND_LABEL = "edgefleet.io/lease-kind"
NODE_ANNOTATION = "edgefleet.io/node"


@dataclass(kw_only=True)
class Replica(Server):
    """A server whose replica name comes from POD_NAME, as the Deployment's downward API sets."""

    pod_name: str = ""

    def start(self) -> None:
        self.process = ManagedProcess(
            f"tunnel-server[{self.pod_name}]",
            [
                str(BIN / "tunnel-server"),
                "run",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.data_dir),
                "--public-name",
                "127.0.0.1",
                *self.extra_args,
            ],
            log_path=self.workdir / "tunnel-server.log",
            env={"POD_NAME": self.pod_name, "POD_IP": "127.0.0.1"},
        )
        self.wait_ready()

    def status(self) -> dict[str, Any]:
        code, body = self.get("/status")
        if code != 200:
            raise RuntimeError(f"{self.pod_name} /status answered {code}: {body[:200]!r}")
        answer: dict[str, Any] = json.loads(body)
        return answer

    def connected_nodes(self) -> dict[str, bool]:
        """``connected`` of every node as this replica's ``GET /api/v1/nodes`` lists it."""
        return {name: bool(node.get("connected")) for name, node in self.nodes().items()}

    def alive(self) -> bool:
        return self.process is not None and self.process.popen.poll() is None


def start_replicas(*, kubeconfig: Path, namespace: str, workdir: Path, count: int) -> list[Replica]:
    """``count`` replicas named ``replica-0``...; on failure the started ones are stopped."""
    args = ("--store", "kubernetes", "--kubeconfig", str(kubeconfig), "--namespace", namespace)
    replicas: list[Replica] = []
    try:
        for index in range(count):
            replica = Replica(
                workdir=workdir / f"replica-{index}", extra_args=args, pod_name=f"replica-{index}"
            )
            replica.data_dir.mkdir(parents=True)
            if replicas:  # the first one made the admin token; it works on every replica
                (replica.data_dir / "admin-token").write_text(replicas[0].admin_token)
            replicas.append(replica)
            replica.start()
    except BaseException:
        stop_all(replicas)
        raise
    return replicas


def stop_all(replicas: list[Replica]) -> None:
    for replica in replicas:
        if replica.process is not None:
            replica.process.stop()


def start_swarm(
    *, url: str, first: Replica, count: int, workdir: Path, prefix: str = "ha", spread: float = 15.0
) -> ManagedProcess:
    """``count`` light agents joined through ``first``'s API, connecting to ``url``."""
    workdir.mkdir(parents=True, exist_ok=True)
    return ManagedProcess(
        "swarm",
        [
            sys.executable,
            "-m",
            "tests.harness.swarm",
            "--server",
            url,
            "--api",
            first.url,
            "--ca",
            str(first.data_dir / "ca.crt"),
            "--admin-token-file",
            str(first.data_dir / "admin-token"),
            "--count",
            str(count),
            "--prefix",
            prefix,
            "--workdir",
            str(workdir),
            "--spread",
            str(spread),
            "--until-signal",
        ],
        log_path=workdir / "swarm.log",
        env={
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
        },
    )


def swarm_status(process: ManagedProcess) -> dict[str, Any]:
    """The swarm's last ``status`` line (empty before the first one)."""
    last: dict[str, Any] = {}
    for line in process.tail(400).splitlines():
        if line.startswith('{"event":"status"'):
            last = json.loads(line)
    return last


def agent_holders(kubeconfig: Path, namespace: str) -> dict[str, str | None]:
    """Every agent Lease's node and holder, as the official client reads them."""
    api = kubernetes.config.new_client_from_config(config_file=str(kubeconfig))
    with api:
        leases = kubernetes.client.CoordinationV1Api(api).list_namespaced_lease(
            namespace, label_selector=f"{KIND_LABEL}=agent"
        )
    held: dict[str, str | None] = {}
    for lease in leases.items:
        meta = lease.metadata
        if meta is None:
            continue
        node = (meta.annotations or {}).get(NODE_ANNOTATION, meta.name)
        holder = None if lease.spec is None else lease.spec.holder_identity
        held[str(node)] = str(holder) if holder else None
    return held
