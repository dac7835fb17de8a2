"""End to end: ``edge-agent run`` in cluster mode reports its member to ``/api/v1/clusters``.

A real ``tunnel-server``, a real member kube-apiserver, and the agent process reaching it with
a ServiceAccount token under the RBAC docs/clusters.md gives (list nodes and pods, GET
/version and /readyz, nothing more): the counts are right, the API server healthy, and the
cluster goes offline when the agent stops.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.harness import kube
from tests.harness.daemons import Server
from tests.harness.waiting import eventually
from tests.integration.cluster_status.conftest import EXPECTED, camel
from tests.integration.clusters.members import ClusterAgent, prepare_member
from tests.integration.console.conftest import Api

pytestmark = pytest.mark.kube

CLUSTER = "west"


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    started = Server(workdir=tmp_path)
    started.start()
    try:
        yield started
    finally:
        started.stop()


def test_cluster_mode_agent_reports_and_goes_offline(
    server: Server, populated: kube.ControlPlane, tmp_path: Path
) -> None:
    api = Api(server=server, token=server.admin_token)
    agent = ClusterAgent(
        name=CLUSTER,
        workdir=tmp_path,
        server=server,
        plane=populated,
        agent_token=prepare_member(populated),
        interval=1.0,
        run_args=("--status-interval", "1"),
    )
    agent.join()
    agent.start()
    try:
        agent.wait_connected()

        def cluster() -> dict[str, Any]:
            return api.get(f"/api/v1/clusters/{CLUSTER}")

        row = eventually(
            cluster,
            lambda row: row["status"] == "online" and row["apiserverHealthy"] is not None,
            what=f"cluster {CLUSTER} online with its API server's health",
        )
        assert row["apiserverHealthy"] is True, row["metrics"]
        expected = {camel(key): value for key, value in EXPECTED.items()}
        assert {key: row[key] for key in expected} == expected
        assert row["version"] == kube.KUBE_VERSION
        assert row["podsTotal"] == 10
        assert row["agentVersion"]
        assert row["metrics"]["cluster.apiserver.latency_ms"] >= 0
    finally:
        agent.stop()
    row = eventually(
        cluster, lambda row: row["status"] == "offline", what="offline after the agent stops"
    )
    assert row["apiserverHealthy"] is None
    assert row["podsRunning"] == EXPECTED["pods.running"], "the last counts stay"
