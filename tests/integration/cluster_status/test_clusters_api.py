"""A cluster's status from a real member API server to ``/api/v1/clusters`` on a real server.

A cluster identity (``token create --kind cluster`` + ``edge-agent join``), the agent's own
``TunnelClient`` and ``NodeStatusReporter`` with ``ClusterStatusSource`` as its ``cluster``
source (what cluster mode runs) in the test's event loop, a real ``tunnel-server`` process,
a real kube-apiserver. The same with the ``edge-agent run`` process in cluster mode is
``test_cluster_agent.py``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import prometheus_client
import pytest

from edge_agent.cluster.status import SOURCE_NAME, ClusterStatusSource, GetJson
from edge_agent.node_status import NodeStatusReporter, NodeStatusSettings
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tests.harness import kube
from tests.harness.daemons import Server, join_agent
from tests.harness.waiting import eventually_async
from tests.integration.cluster_status.conftest import EXPECTED, camel
from tests.integration.console.conftest import Api

pytestmark = pytest.mark.kube

CLUSTER = "east"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    started = Server(workdir=tmp_path_factory.mktemp("clusters-api"))
    started.start()
    try:
        yield started
    finally:
        started.stop()


def join_cluster(server: Server, name: str, data_dir: Path) -> None:
    join_agent(server, name, data_dir, kind="cluster")


_SCHEMATHESIS_CONFIG = """
[dictionaries.clusters]
values = ["{cluster}"]

[parameters]
"path.name" = {{ dictionary = "clusters", probability = 0.7 }}

[[operations]]
include-operation-id = "listClusters"
# `continue` is an opaque token: a made-up one is schema-valid, but not a token this list gave
# for this query, so 400 bad_continue is the right answer (docs/api.md, "Lists").
checks.positive_data_acceptance.expected-statuses = ["2xx", "400"]
"""


def schemathesis(server: Server, workdir: Path) -> None:
    """Run schemathesis on the two cluster operations; the real cluster answers 200 mostly."""
    ca = workdir / "ca.crt"
    ca.write_bytes(server.ca_pem)
    config = workdir / "schemathesis.toml"
    config.write_text(_SCHEMATHESIS_CONFIG.format(cluster=CLUSTER))
    har = workdir / "run.har"
    done = subprocess.run(
        [
            str(Path(sys.executable).parent / "schemathesis"),
            "--config-file",
            str(config),
            "run",
            f"{server.url}/api/openapi.json",
            "--header",
            f"Authorization: Bearer {server.admin_token}",
            "--tls-verify",
            str(ca),
            "--checks",
            "all",
            "--include-operation-id",
            "listClusters",
            "--include-operation-id",
            "getCluster",
            "--max-examples",
            "50",
            "--phases",
            "examples,coverage,fuzzing",
            "--workers",
            "1",
            "--request-timeout",
            "10",
            "--seed",
            "1",
            "--continue-on-failure",
            "--report",
            "har",
            "--report-har-path",
            str(har),
        ],
        capture_output=True,
        text=True,
        timeout=240,
        cwd=workdir,
        check=False,
    )
    assert done.returncode == 0, done.stdout[-8000:] + done.stderr[-2000:]
    answers = [
        (urlsplit(e["request"]["url"]).path, e["response"]["status"])
        for e in json.loads(har.read_text())["log"]["entries"]
    ]
    assert (f"/api/v1/clusters/{CLUSTER}", 200) in answers, answers[:40]


def expected_row() -> dict[str, Any]:
    """EXPECTED (the ``cluster.*`` keys) as the API's row names them."""
    return {camel(key): value for key, value in EXPECTED.items()}


# A member API server, two agents' worth of tasks and a schemathesis run of ~200 requests (the
# paging parameters doubled them): over the default 120 s on a loaded 2-core machine.
@pytest.mark.timeout(300)
async def test_a_cluster_reports_and_goes_offline(
    server: Server, populated: kube.ControlPlane, get_json: GetJson, tmp_path: Path
) -> None:
    api = Api(server=server, token=server.admin_token)
    data_dir = tmp_path / "agent"
    await asyncio.to_thread(join_cluster, server, CLUSTER, data_dir)
    client = TunnelClient(
        data_dir=data_dir,
        settings=TunnelClientSettings(backoff_base=0.1, backoff_cap=0.5),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    source = ClusterStatusSource(get_json=get_json, interval=0.5)
    reporter = NodeStatusReporter(
        client=client,
        settings=NodeStatusSettings(interval=0.5, full_every=2.0),
        data_dir=data_dir,
        extra_sources={SOURCE_NAME: source.metrics},
    )

    async def cluster() -> dict[str, Any]:
        return await asyncio.to_thread(api.get, f"/api/v1/clusters/{CLUSTER}")

    async with asyncio.TaskGroup() as group:
        tunnel = group.create_task(client.run(), name="test.tunnel")
        sampling = group.create_task(source.run(), name="test.cluster-status")
        reporting = group.create_task(reporter.run(), name="test.reporter")
        row = await eventually_async(
            cluster,
            lambda row: row["status"] == "online" and row["podsTotal"] is not None,
            what=f"cluster {CLUSTER} online with its counts",
        )
        assert {key: row[key] for key in expected_row()} == expected_row()
        assert row["version"] == kube.KUBE_VERSION
        assert row["podsTotal"] == 10
        assert row["apiserverHealthy"] is True
        assert row["metrics"]["cluster.version"] == kube.KUBE_VERSION
        listed = await asyncio.to_thread(api.get, "/api/v1/clusters")
        assert [c["name"] for c in listed["items"]] == [CLUSTER]
        # The answers, the real cluster's included, match the OpenAPI document.
        await asyncio.to_thread(schemathesis, server, tmp_path)

        # The member API server goes away: the agent says so, the counts stay.
        populated.stop_apiserver()
        try:
            row = await eventually_async(
                cluster,
                lambda row: row["apiserverHealthy"] is False,
                what="the API server reported unhealthy",
            )
            assert row["podsRunning"] == EXPECTED["pods.running"]
            assert row["warnings"][0]["code"] == "apiserver_unhealthy"
        finally:
            populated.start_apiserver()
            await asyncio.to_thread(populated.wait_ready)
        await eventually_async(
            cluster, lambda row: row["apiserverHealthy"] is True, what="healthy again"
        )

        # The agent stops: offline at once (its status stream ends), health unknown.
        client.stop()
        async with asyncio.timeout(30):
            await tunnel
        row = await eventually_async(
            cluster, lambda row: row["status"] == "offline", what="offline after the agent stops"
        )
        assert row["apiserverHealthy"] is None
        assert row["podsRunning"] == EXPECTED["pods.running"]
        reporting.cancel()
        sampling.cancel()
