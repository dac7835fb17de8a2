"""``ClusterStatusSource`` when a sample fails: the last good values stay, healthy turns false.

The happy path runs against a real kube-apiserver (tests/integration/cluster_status); here a
``GetJson`` over a dict injects the faults (an API server that stops answering, one that
hangs, a list that is not a list) and counts what is fetched (paging).
"""

from __future__ import annotations

import asyncio
import json
import logging
from typing import Any

import pytest

from edge_agent.cluster.member_api import MemberApiError
from edge_agent.cluster.status import ClusterStatusSource


def node(name: str, *, ready: bool, cpu: str, memory: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "status": {
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
            "allocatable": {"cpu": cpu, "memory": memory},
        },
    }


class FakeApi:
    """Lists served in pages of the asked size; ``fail`` makes every GET raise."""

    def __init__(self, nodes: list[dict[str, Any]], pods: list[dict[str, Any]]) -> None:
        self.objects = {"/api/v1/nodes": nodes, "/api/v1/pods": pods}
        self.fail: Exception | None = None
        self.readyz: Exception = json.JSONDecodeError("Expecting value", "ok", 0)
        """What GET /readyz raises: by default a 200 "ok" that is not JSON."""
        self.hang = False
        self.paths: list[str] = []

    async def get_json(self, path: str) -> Any:
        self.paths.append(path)
        if self.hang:
            await asyncio.Event().wait()
        if self.fail is not None:
            raise self.fail
        if path == "/readyz":
            raise self.readyz
        if path == "/version":
            return {"gitVersion": "v1.36.3"}
        base, _, query = path.partition("?")
        params = dict(p.split("=", 1) for p in query.split("&"))
        start = int(params.get("continue", "0"))
        limit = int(params["limit"])
        items = self.objects[base][start : start + limit]
        more = start + limit < len(self.objects[base])
        return {"metadata": {"continue": str(start + limit) if more else ""}, "items": items}


def pods(count: int, phase: str, cpu: str) -> list[dict[str, Any]]:
    spec = {"containers": [{"name": "c", "resources": {"requests": {"cpu": cpu}}}]}
    return [{"spec": spec, "status": {"phase": phase}} for _ in range(count)]


@pytest.fixture
def api() -> FakeApi:
    return FakeApi(
        [
            node("a", ready=True, cpu="4", memory="8Gi"),
            node("b", ready=False, cpu="2", memory="4Gi"),
            node("c", ready=True, cpu="1", memory="1Gi"),
        ],
        pods(5, "Running", "100m") + pods(2, "Succeeded", "1") + pods(1, "Bogus", "1"),
    )


async def test_paging_and_counts(api: FakeApi) -> None:
    source = ClusterStatusSource(get_json=api.get_json, interval=10, page_size=2)
    assert source.metrics() == {}, "nothing before the first sample"
    assert await source.sample()
    metrics = source.metrics()
    assert metrics["nodes.total"] == 3
    assert metrics["nodes.ready"] == 2
    assert metrics["cpu.allocatable_cores"] == 7.0
    assert metrics["memory.allocatable_bytes"] == 13 * 2**30
    assert metrics["pods.running"] == 5
    assert metrics["pods.succeeded"] == 2
    assert metrics["pods.unknown"] == 1
    assert metrics["cpu.requested_cores"] == 1.5  # 5 x 100m + the unknown one; not Succeeded
    assert metrics["apiserver.healthy"] is True
    assert metrics["version"] == "v1.36.3"
    node_pages = [p for p in api.paths if p.startswith("/api/v1/nodes")]
    assert node_pages == ["/api/v1/nodes?limit=2", "/api/v1/nodes?limit=2&continue=2"]
    assert len([p for p in api.paths if p.startswith("/api/v1/pods")]) == 4


async def test_a_failed_sample_keeps_the_last_values(
    api: FakeApi, caplog: pytest.LogCaptureFixture
) -> None:
    source = ClusterStatusSource(get_json=api.get_json, interval=10)
    assert await source.sample()
    good = source.metrics()
    api.fail = ConnectionResetError("the member API server went away")
    with caplog.at_level(logging.WARNING, logger="edge_agent.cluster.status"):
        assert not await source.sample()
        assert not await source.sample()
    assert source.metrics() == {**good, "apiserver.healthy": False}
    assert source.last_error is not None
    assert "went away" in source.last_error
    assert len(caplog.records) == 1, "one line when it goes bad, not one per sample"
    api.fail = None
    api.objects["/api/v1/pods"] = pods(1, "Pending", "2")
    assert await source.sample()
    assert source.metrics()["apiserver.healthy"] is True
    assert source.metrics()["pods.pending"] == 1
    assert source.metrics()["cpu.requested_cores"] == 2.0


async def test_a_hung_api_server_fails_the_sample_at_its_timeout(api: FakeApi) -> None:
    source = ClusterStatusSource(get_json=api.get_json, interval=0.1, timeout=0.2)
    api.hang = True
    assert not await source.sample()
    assert source.metrics() == {"apiserver.healthy": False}
    assert source.last_error is not None
    assert "within" in source.last_error


@pytest.mark.parametrize(
    "answer",
    [None, [], {"items": "no"}, {"items": [1, 2], "metadata": {"continue": 5}}],
)
async def test_answers_that_are_not_lists(api: FakeApi, answer: object) -> None:
    real = api.get_json

    async def odd(path: str) -> Any:
        return answer if path.startswith("/api/v1/nodes") else await real(path)

    source = ClusterStatusSource(get_json=odd, interval=10)
    worked = await source.sample()
    if worked:  # items that are not objects are skipped, a non-string continue ends the list
        assert source.metrics()["nodes.total"] == 0
    else:
        assert source.metrics() == {"apiserver.healthy": False}


async def test_run_samples_every_interval(api: FakeApi) -> None:
    three = asyncio.Event()
    real = api.get_json

    async def counting(path: str) -> Any:
        if path == "/readyz" and source.samples >= 3:
            three.set()
        return await real(path)

    source = ClusterStatusSource(get_json=counting, interval=0.05)
    async with asyncio.timeout(10), asyncio.TaskGroup() as group:
        task = group.create_task(source.run(), name="test.cluster-status")
        await three.wait()
        task.cancel()


@pytest.mark.parametrize(
    ("error", "ready"),
    [
        # The agent's MemberApi: 200 "ok" is "not JSON" (with its status); a 500 and no answer
        # are not ready, nor is an error without a status, whatever its text says.
        (MemberApiError("GET /readyz on https://x: the answer is not JSON"), False),
        (MemberApiError("GET /readyz on https://x: the answer is not JSON", status=200), True),
        (MemberApiError("GET /readyz on https://x: HTTP 500: [-]etcd failed", status=500), False),
        (MemberApiError("GET /readyz on https://x failed: Connection refused"), False),
        (json.JSONDecodeError("Expecting value", "ok", 0), True),
        (ConnectionResetError("reset"), False),
    ],
)
async def test_readyz_answers(api: FakeApi, error: Exception, *, ready: bool) -> None:
    api.readyz = error
    source = ClusterStatusSource(get_json=api.get_json, interval=10)
    assert await source.sample() is ready
    assert source.metrics()["apiserver.healthy"] is ready
