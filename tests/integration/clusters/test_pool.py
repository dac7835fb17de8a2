"""Kept-alive member connections, with real processes.

A kube-apiserver, ``tunnel-server run`` and a cluster-mode ``edge-agent run``; requests go
through ``https://SERVER/clusters/NAME/...``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import aiohttp
import pytest

from tests.harness import kube
from tests.harness.daemons import Server
from tests.integration.clusters.members import Member, register

pytestmark = pytest.mark.kube

OPENED = "edge_agent_cluster_member_connections_opened_total"
NAMESPACE_PATH = "/api/v1/namespaces/default"


@pytest.fixture(scope="module")
def member(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Member]:
    base: Path = tmp_path_factory.mktemp("pool")
    plane = kube.launch("pool", base / "plane")
    server = Server(workdir=base)
    registered: Member | None = None
    try:
        server.start()
        plane.wait_ready()
        registered = register(server, plane, "pool", base)
        yield registered
    finally:
        if registered is not None:
            registered.agent.stop()
        server.stop()
        plane.stop()


def _get(member: Member, path: str = NAMESPACE_PATH) -> tuple[int, bytes]:
    server = member.agent.server
    return server.get(f"/clusters/{member.name}{path}", token=server.admin_token)


def test_sequential_gets_reuse_a_handful_of_member_connections(member: Member) -> None:
    _get(member)
    opened = member.agent.metric(OPENED)
    for _ in range(30):
        status, body = _get(member)
        assert status == 200, body
        assert json.loads(body)["metadata"]["name"] == "default"
    assert member.agent.metric(OPENED) - opened <= 2


def test_a_restarted_api_server_does_not_fail_the_next_request(member: Member) -> None:
    assert _get(member)[0] == 200  # a kept-alive connection is now idle in the agent
    opened = member.agent.metric(OPENED)
    member.plane.stop_apiserver()
    member.plane.start_apiserver()
    member.plane.wait_ready()
    status, body = _get(member)
    assert status == 200, body
    assert member.agent.metric(OPENED) > opened  # the closed one was not used


async def test_a_watch_holds_its_own_connection_while_gets_go_on(member: Member) -> None:
    server = member.agent.server
    url = f"{server.url}/clusters/{member.name}/api/v1/namespaces?watch=1"
    headers = {"Authorization": f"Bearer {server.admin_token}"}
    async with (
        aiohttp.ClientSession() as http,
        http.get(url, headers=headers, ssl=server.ssl_context()) as watch,
    ):
        assert watch.status == 200
        first = json.loads(await watch.content.readline())
        assert first["type"] == "ADDED"
        for _ in range(5):
            async with http.get(
                f"{server.url}/clusters/{member.name}{NAMESPACE_PATH}",
                headers=headers,
                ssl=server.ssl_context(),
            ) as got:
                assert got.status == 200
    status, _ = _get(member)  # the watch's connection was given up, not pooled broken
    assert status == 200
