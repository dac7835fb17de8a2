"""Two real ``tunnel-server run --store kubernetes`` processes: one fleet, one controller.

A ManagedCluster applied through one replica (``tunnel-server apply -f``) is listed by the
other, its status written by the hub controller, which runs on the leader only.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tests.harness.ha import Replica
from tests.harness.waiting import eventually
from tests.integration.replicas.test_server import leaders, replicas

__all__ = ["replicas"]

CLUSTER = """\
apiVersion: fleet.edgefleet.io/v1alpha1
kind: ManagedCluster
metadata:
  name: far-east
  labels: {region: apac}
spec:
  hubAcceptsClient: true
"""


def _clusters(server: Replica) -> dict[str, Any]:
    code, body = server.get("/api/v1/fleet/managedclusters", token=server.admin_token)
    assert code == 200, body
    return {item["metadata"]["name"]: item for item in json.loads(body)["items"]}


def _log(server: Replica) -> str:
    return (server.workdir / "tunnel-server.log").read_text(errors="replace")


def test_a_cluster_applied_on_one_replica_is_served_by_the_other(
    replicas: list[Replica], tmp_path: Path
) -> None:
    one, two = replicas
    leader = eventually(lambda: leaders(replicas), lambda found: len(found) == 1, what="a leader")
    manifest = tmp_path / "cluster.yaml"
    manifest.write_text(CLUSTER)
    one.cli("apply", "-f", manifest)
    seen = eventually(
        lambda: _clusters(two).get("far-east"),
        lambda item: item is not None and bool(item.get("status", {}).get("conditions")),
        what="the other replica lists the cluster, with the controller's conditions",
        within=60,
    )
    assert seen is not None
    assert seen["metadata"]["labels"] == {"region": "apac"}
    assert _clusters(one)["far-east"]["metadata"]["uid"] == seen["metadata"]["uid"]
    # The hub controller runs on the leader only.
    by_name = {one.pod_name: one, two.pod_name: two}
    follower = next(s for s in replicas if s.pod_name not in leader)
    assert "starting fleet.hub-controller" in _log(by_name[leader[0]])
    assert "starting fleet.hub-controller" not in _log(follower)
