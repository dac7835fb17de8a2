"""Routes' health and response side through real processes: checks, ejection, retries, mirrors.

The world is that of ``conftest.py`` (the tunnel server with its default router, one member
cluster registered as ``gw-a`` and ``gw-b`` by two real agents), with more backends, each a
``backend_http`` process behind its own Service:

- ``web`` (backend ``a``) and ``web-b`` (``b``), as in ``conftest.py``;
- ``web-c`` (``c``): answers 500 while ``c.fail`` exists (the passive-ejection test);
- ``web-d`` (``d``): answers 500 while ``d.fail`` exists (the retry-on-codes test);
- ``web-m`` (``m``): the mirror target; it logs every request it gets to ``m.log``;
- ``web-r`` (``r``): made unready by the ready-count test.

Routes (``ROUTES``), each on its own host so each test's backends are its own:

- ``checked`` (``checked.test``): ``healthCheck`` every second on ``/headers``; a 50/50 b.
- ``passive`` (``passive.test``): gw-a ``web-c`` / gw-b ``web-b``, 50/50, no checks.
- ``retrying`` (``retry.test``): gw-a ``web-d`` / gw-b ``web-b``, retry on 500.
- ``respond`` (``respond.test``): response header modifier, a session cookie, a 100 % mirror
  to gw-b ``web-m``; backends gw-a ``web`` / gw-b ``web-b``.
- ``big`` (``big.test``): gw-a ``web`` alone (100 MB both ways, WebSocket).
- ``counted`` (``counted.test``): gw-a ``web-r`` / gw-b ``web-b``, 50/50, no checks: only the
  agents' ready-endpoint counts can take gw-a out before a request fails.
"""

from __future__ import annotations

import hashlib
import sys
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.harness import member
from tests.harness.daemons import REPO, Server
from tests.harness.procs import ManagedProcess, free_port, wait_port
from tests.harness.waiting import eventually
from tests.integration.gateway_agent.test_gateway_agent import HOST
from tests.integration.gateway_route.conftest import (
    API,
    PATH,
    World,
    _agent,
    _ready,
    conditions,
    get,
    ref,
)
from tests.integration.gateway_server.backend_http import pattern
from tests.integration.gateway_server.conftest import _service, _services, _slice
from tests.integration.gateway_server.test_gateway_data_path import MB, _chunks

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]

SLICES = "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices"
CHECK = {
    "path": "/headers",
    "intervalSeconds": 1,
    "timeoutSeconds": 1,
    "unhealthyThreshold": 2,
    "healthyThreshold": 1,
}
MIRROR = {"cluster": "gw-b", "namespace": "demo", "name": "web-m", "port": 80}
ROUTES: dict[str, dict[str, Any]] = {
    "checked": {
        "hostnames": ["checked.test"],
        "healthCheck": CHECK,
        "rules": [{"backendRefs": [ref("gw-a", "web", 50), ref("gw-b", "web-b", 50)]}],
    },
    "passive": {
        "hostnames": ["passive.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web-c", 50), ref("gw-b", "web-b", 50)]}],
    },
    "retrying": {
        "hostnames": ["retry.test"],
        "rules": [
            {
                "retry": {"attempts": 1, "codes": [500]},
                "backendRefs": [ref("gw-a", "web-d", 50), ref("gw-b", "web-b", 50)],
            }
        ],
    },
    "respond": {
        "hostnames": ["respond.test"],
        "rules": [
            {
                "filters": [
                    {
                        "type": "ResponseHeaderModifier",
                        "responseHeaderModifier": {
                            "set": [{"name": "X-Served-By", "value": "gateway"}],
                            "remove": ["x-backend"],
                        },
                    },
                    {
                        "type": "RequestMirror",
                        "requestMirror": {"backendRef": MIRROR, "percent": 100},
                    },
                ],
                "sessionPersistence": {"type": "Cookie", "sessionName": "shop-session"},
                "backendRefs": [ref("gw-a", "web", 50), ref("gw-b", "web-b", 50)],
            }
        ],
    },
    "big": {"hostnames": ["big.test"], "rules": [{"backendRefs": [ref("gw-a", "web")]}]},
    "counted": {
        "hostnames": ["counted.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web-r", 50), ref("gw-b", "web-b", 50)]}],
    },
}


@dataclass(kw_only=True)
class More:
    world: World
    cluster: member.MemberCluster
    ports: dict[str, int]
    base: Path

    def ready(self, service: str, backend: str, *, ready: bool) -> None:
        """Rewrite ``service``'s EndpointSlice with its one endpoint ready or not."""
        doc = _slice(service, self.ports[backend], ready=ready)
        self.cluster.api("PUT", f"{SLICES}/{service}-1", doc)

    def backend_status(self, route: str) -> dict[str, dict[str, Any]]:
        return {b["name"]: b for b in self.world.status(route).get("backends", [])}


def _backend(name: str, base: Path) -> tuple[ManagedProcess, int]:
    """``backend_http`` as ``name``, failing while ``base/<name>.fail`` exists, logging."""
    assert HOST is not None
    port = free_port(HOST)
    proc = ManagedProcess(
        f"backend[{name}]",
        [
            sys.executable,
            "-m",
            "tests.integration.gateway_server.backend_http",
            "--host",
            HOST,
            "--port",
            str(port),
            "--name",
            name,
            "--fail-file",
            str(base / f"{name}.fail"),
            "--request-log",
            str(base / f"{name}.log"),
        ],
        log_path=base / f"backend-{name}.log",
        env={"PYTHONPATH": str(REPO)},
    )
    wait_port(HOST, port, timeout=30, proc=proc)
    return proc, port


def _serving(world: World, services: list[str]) -> None:
    def ready() -> list[object]:
        out: list[object] = []
        for agent in world.agents.values():
            cluster = agent.status()["cluster"]
            assert isinstance(cluster, dict)
            seen = cluster["gateway"]["services"]
            out += [seen.get(f"demo/{name}", {}).get("80") for name in services]
        return out

    eventually(
        ready,
        lambda counts: counts == [1] * len(counts),
        what=f"both agents see a ready endpoint of {services}",
        within=60,
        ignore=(OSError, KeyError, TypeError),
    )


def _apply(world: World) -> None:
    for name, spec in ROUTES.items():
        doc = {"apiVersion": API, "kind": "MultiClusterRoute", "metadata": {"name": name}}
        answer = world.api("PUT", f"{PATH}/{name}", {**doc, "spec": spec})
        assert answer.status in (200, 201), answer
    eventually(
        lambda: {
            name: conditions(world.status(name)).get("Accepted", {}).get("status")
            for name in ROUTES
        },
        lambda seen: set(seen.values()) == {"True"},
        what="every route Accepted by the gateway",
        within=30,
    )


@pytest.fixture(scope="module")
def more(tmp_path_factory: pytest.TempPathFactory) -> Iterator[More]:
    base = tmp_path_factory.mktemp("gateway-more")
    port = free_port()
    server = Server(workdir=base, extra_args=("--gateway-listen", f"127.0.0.1:{port}"))
    procs: list[ManagedProcess] = []
    world = World(server=server, gateway_port=port)
    with member.running_member("gwmore", base / "member", nodes=1) as cluster:
        try:
            ports: dict[str, int] = {}
            for name in ("a", "b", "c", "d", "m", "r"):
                proc, ports[name] = _backend(name, base)
                procs.append(proc)
            _services(cluster, {"a": ports["a"], "b": ports["b"]})
            for name in ("c", "d", "m", "r"):
                cluster.api("POST", "/api/v1/namespaces/demo/services", _service(f"web-{name}"))
                cluster.api("POST", SLICES, _slice(f"web-{name}", ports[name], ready=True))
            server.start()
            for name in ("gw-a", "gw-b"):
                world.agents[name] = _agent(name, server, cluster, base)
            for agent in world.agents.values():
                _ready(agent)
            _serving(world, ["web-c", "web-d", "web-m", "web-r"])
            _apply(world)
            yield More(world=world, cluster=cluster, ports=ports, base=base)
        finally:
            for agent in world.agents.values():
                agent.stop()
            for proc in procs:
                proc.stop()
            server.stop()


def test_unready_endpoints_move_traffic_before_a_request_fails(more: More) -> None:
    """Endpoints made unready: checks mark the backend at once; no GET sees an error."""
    world = more.world
    with world.client() as client:
        before = Counter(get(client, "checked.test").body["backend"] for _ in range(40))
        assert set(before) == {"a", "b"}, before
        more.ready("web", "a", ready=False)
        started = time.monotonic()
        answers = []
        health: dict[str, Any] = {}
        # Keep the traffic going while the agent and the checks notice: every GET answered.
        while time.monotonic() - started < 30:
            answers.append(get(client, "checked.test"))
            health = more.backend_status("checked")["gw-a/demo/web:80"]
            if "NoReadyEndpoints" in health.get("reasons", []):
                break
        else:
            pytest.fail(f"gw-a/demo/web:80 never NoReadyEndpoints: {health}")
        assert {a.status for a in answers} == {200}
        after = [get(client, "checked.test") for _ in range(60)]
        assert Counter((a.status, a.body["backend"]) for a in after) == {(200, "b"): 60}
        # Back: ready again, then the check passes; slow start gives it a small share first.
        more.ready("web", "a", ready=True)
        eventually(
            lambda: more.backend_status("checked")["gw-a/demo/web:80"]["state"],
            lambda state: state == "Healthy",
            what="gw-a/demo/web:80 healthy again after its endpoint is ready",
            within=30,
        )
        back = eventually(
            lambda: [get(client, "checked.test") for _ in range(60)],
            lambda seen: any(a.body["backend"] == "a" for a in seen),
            what="gw-a takes requests again",
            within=30,
        )
        assert {a.status for a in back} == {200}


def test_a_reported_count_of_0_moves_traffic_before_any_request_fails(more: More) -> None:
    """No checks, no requests meanwhile: the agent's count alone takes gw-a out, then back."""
    world = more.world
    key = "gw-a/demo/web-r:80"
    eventually(
        lambda: more.backend_status("counted")[key].get("readyEndpoints"),
        lambda count: count == 1,
        what=f"{key}'s ready count (1) in the route status",
        within=30,
        ignore=(KeyError,),
    )
    with world.client() as client:
        before = Counter(get(client, "counted.test").body["backend"] for _ in range(40))
        assert set(before) == {"r", "b"}, before
        more.ready("web-r", "r", ready=False)
        started = time.monotonic()
        # Not one request until the status shows the count: nothing else can mark the backend.
        health = eventually(
            lambda: more.backend_status("counted")[key],
            lambda seen: seen.get("readyEndpoints") == 0,
            what=f"{key} reported with 0 ready endpoints",
            within=30,
        )
        took = time.monotonic() - started
        assert health["reasons"] == ["NoReadyEndpoints"], health
        after = [get(client, "counted.test") for _ in range(100)]
        assert Counter((a.status, a.body["backend"]) for a in after) == {(200, "b"): 100}
        print(f"ready count 0 in the route status {took:.2f} s after the slice changed")  # noqa: T201

        more.ready("web-r", "r", ready=True)
        eventually(
            lambda: more.backend_status("counted")[key],
            lambda seen: seen.get("readyEndpoints") == 1 and seen["state"] == "Healthy",
            what=f"{key} healthy again with 1 ready endpoint",
            within=30,
        )
        back = eventually(
            lambda: [get(client, "counted.test") for _ in range(40)],
            lambda seen: any(a.body["backend"] == "r" for a in seen),
            what="gw-a/web-r takes requests again",
            within=30,
        )
        assert {a.status for a in back} == {200}


def test_a_backend_answering_500_is_ejected_by_passive_health(more: More) -> None:
    """Backend c answers 500: after 5 in a row it is ejected and b takes everything."""
    (more.base / "c.fail").touch()
    try:
        with more.world.client() as client:
            answers = [get(client, "passive.test") for _ in range(100)]
    finally:
        (more.base / "c.fail").unlink()
    errors = [a for a in answers if a.status == 500]
    assert 1 <= len(errors) <= 5, Counter(a.status for a in answers)
    assert {(a.status, a.body["backend"]) for a in answers[-60:]} == {(200, "b")}
    eventually(
        lambda: more.backend_status("passive")["gw-a/demo/web-c:80"],
        lambda health: health["state"] == "Ejected",
        what="the passive route's status shows gw-a/demo/web-c:80 ejected",
        within=10,
    )


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def test_a_status_in_the_retry_codes_is_retried_on_the_other_backend(more: More) -> None:
    """Backend d answers 500, a retry code of the route: every GET is answered by b."""
    (more.base / "d.fail").touch()
    try:
        with more.world.client() as client:
            answers = [get(client, "retry.test") for _ in range(40)]
    finally:
        (more.base / "d.fail").unlink()
    assert Counter((a.status, a.body["backend"]) for a in answers) == {(200, "b"): 40}
    tried = (more.base / "d.log").read_text().splitlines()
    assert any(line.startswith("GET /headers") for line in tried), tried  # d was asked


def test_response_modifier_session_cookie_and_mirror(more: More) -> None:
    """Response head modified, a sticky cookie session, a copy of each request mirrored.

    The client's answers are the backends' own (the mirror's are dropped).
    """
    with more.world.client() as client:
        first = get(client, "respond.test", **{"X-Request-Id": "mirror-0"})
        headers = _lower(first.headers)
        assert first.status == 200
        assert headers["x-served-by"] == "gateway"
        assert "x-backend" not in headers  # removed by the route
        cookie = headers["set-cookie"]
        assert cookie.startswith("shop-session="), cookie
        assert "HttpOnly" in cookie, cookie
        session = cookie.split(";")[0]
        pinned = [
            get(client, "respond.test", Cookie=session, **{"X-Request-Id": f"mirror-{n}"})
            for n in range(1, 30)
        ]
    assert {(a.status, a.body["backend"]) for a in pinned} == {(200, first.body["backend"])}
    assert all("set-cookie" not in _lower(a.headers) for a in pinned)
    wanted = {f"mirror-{n}" for n in range(30)}
    mirrored = eventually(
        lambda: {
            line.split()[-1]
            for line in (more.base / "m.log").read_text().splitlines()
            if line.startswith("GET /headers")
        },
        lambda seen: wanted <= seen,
        what="a copy of every request at the mirror",
        within=15,
        ignore=(FileNotFoundError,),
    )
    assert {"mirror-0", "mirror-29"} <= mirrored


def test_metrics_and_status_figures_by_route_and_backend(more: More) -> None:
    """Per-route series on /metrics, figures in status.backends, a deleted route's dropped."""
    world = more.world
    with world.client() as client:
        answers = [get(client, "big.test") for _ in range(50)]
    assert {a.status for a in answers} == {200}
    _, body = world.server.get("/metrics")
    text = body.decode()
    assert (
        'tunnel_server_gateway_requests_total{backend="gw-a/demo/web:80",code="2xx",'
        'route="big"}' in text
    )
    assert 'tunnel_server_gateway_request_seconds_bucket{backend="gw-a/demo/web:80"' in text
    # The passive test's 500s: errors of route "passive" on backend c.
    assert (
        'tunnel_server_gateway_errors_total{backend="gw-a/demo/web-c:80",route="passive"}' in text
    )
    figures = eventually(
        lambda: more.backend_status("big")["gw-a/demo/web:80"],
        lambda backend: backend.get("requests", 0) >= 50,
        what="the big route's status counts its requests (refreshed every 10 s)",
        within=30,
    )
    assert figures["errors"] == 0
    assert 0 < figures["latencyP50Ms"] <= figures["latencyP99Ms"]
    answer = world.api("DELETE", f"{PATH}/passive")
    assert answer.status in (200, 204), answer

    def metrics() -> str:
        return world.server.get("/metrics")[1].decode()

    eventually(
        metrics,
        lambda text: 'route="passive"' not in text,
        what="the deleted route's series dropped",
        within=30,
    )


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=300))


async def test_100_mb_up_and_down_and_a_websocket_through_a_route(more: More) -> None:
    """100 MB each way through a MultiClusterRoute, sha256 checked; a WebSocket echo."""
    size = 100 * MB
    data = pattern(size)
    digest = hashlib.sha256(data).hexdigest()
    url = f"http://127.0.0.1:{more.world.gateway_port}"
    host = {"Host": "big.test"}
    async with _session() as http:
        async with http.post(f"{url}/upload", data=_chunks(data), headers=host) as answer:
            assert answer.status == 200
            assert await answer.json() == {"bytes": size, "sha256": digest, "backend": "a"}
        async with http.get(f"{url}/download?bytes={size}", headers=host) as answer:
            assert answer.status == 200
            assert answer.headers["Content-Length"] == str(size)
            got = hashlib.sha256()
            async for chunk in answer.content.iter_any():
                got.update(chunk)
            assert got.hexdigest() == digest
        del data
        blob = pattern(MB)
        async with http.ws_connect(f"{url}/ws", headers=host) as ws:
            await ws.send_str("hello")
            assert await ws.receive_str(timeout=30) == "a:hello"
            await ws.send_bytes(blob)
            assert await ws.receive_bytes(timeout=30) == blob
