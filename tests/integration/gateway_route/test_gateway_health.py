"""Health, failover and the response side between two real clusters: checks, ejection, retries.

The world is ``conftest.pair()``: the tunnel server with its default router, two member
clusters ``gw-a`` and ``gw-b``, each with its own agent and ``demo/web`` pointing at its own
backend (answering ``gw-a`` / ``gw-b``). This module adds (``LAYOUT``):

- in gw-a: ``web-h`` and ``web-r`` (both to backend ``gw-a``; the tests make their endpoints
  unready, not the process), ``web-c`` (backend ``c``, made to answer 500 by the passive test),
  ``web-d`` (``d``, answers 500 in the retry test), ``web-x`` (never ready);
- in gw-b: ``web-m`` (``m``, the mirror target, logs every request to ``m.log``), ``web-x``
  (never ready).

Routes (``ROUTES``), each on its own host, each test's backends its own where a test breaks
one; a test that breaks something shared (the kill test: all of gw-a) puts it back:

- ``checked`` (``checked.test``): ``healthCheck`` every second; gw-a ``web-h`` / gw-b ``web``.
- ``counted`` (``counted.test``): gw-a ``web-r`` / gw-b ``web``, no checks.
- ``passive`` (``passive.test``): gw-a ``web-c`` / gw-b ``web``, no checks, no retry codes.
- ``retrying`` (``retry.test``): gw-a ``web-d`` / gw-b ``web``, retry on 500.
- ``down`` (``down.test``): gw-a ``web-x`` / gw-b ``web-x``: every backend down.
- ``respond`` (``respond.test``): response header modifier, a session cookie, a 100 % mirror
  to gw-b ``web-m``; gw-a ``web`` / gw-b ``web``.
- ``big`` (``big.test``): gw-a ``web`` alone (100 MB both ways, WebSocket).
- ``pair`` (``pair.test``) gw-a ``web`` / gw-b ``web`` and ``only-a`` (``only-a.test``) gw-a
  ``web`` alone: the kill test's.

Failover figures (seconds from the fault until every request is a clean answer of the other
cluster, ``failover()``) are printed and recorded as test properties, never asserted: the
benchmark (scripts/bench/gateway) holds the 1 s goal; the tests assert the behaviour.
"""

from __future__ import annotations

import hashlib
import http.client
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any, Self

import aiohttp
import pytest

from tests.harness.waiting import eventually
from tests.integration.gateway_route.conftest import (
    PATH,
    World,
    conditions,
    get,
    pair,
    ref,
    wait_serving,
)
from tests.integration.gateway_server.backend_http import pattern
from tests.integration.gateway_server.test_gateway_data_path import MB, _chunks

pytestmark = [pytest.mark.kube, pytest.mark.timeout(900)]

CHECK = {
    "path": "/headers",
    "intervalSeconds": 1,
    "timeoutSeconds": 1,
    "unhealthyThreshold": 2,
    "healthyThreshold": 1,
}
MIRROR = {"cluster": "gw-b", "namespace": "demo", "name": "web-m", "port": 80}
LAYOUT = {
    "gw-a": {
        "web-h": ("gw-a", True),
        "web-r": ("gw-a", True),
        "web-c": ("c", True),
        "web-d": ("d", True),
        "web-x": ("gw-a", False),
    },
    "gw-b": {"web-m": ("m", True), "web-x": ("gw-b", False)},
}
GW_A_SERVING = {"web": 1, **{s: int(ready) for s, (_, ready) in LAYOUT["gw-a"].items()}}
"""gw-a's agent's ready counts as the module found them."""
ROUTES: dict[str, dict[str, Any]] = {
    "checked": {
        "hostnames": ["checked.test"],
        "healthCheck": CHECK,
        "rules": [{"backendRefs": [ref("gw-a", "web-h", 50), ref("gw-b", "web", 50)]}],
    },
    "counted": {
        "hostnames": ["counted.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web-r", 50), ref("gw-b", "web", 50)]}],
    },
    "passive": {
        "hostnames": ["passive.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web-c", 50), ref("gw-b", "web", 50)]}],
    },
    "retrying": {
        "hostnames": ["retry.test"],
        "rules": [
            {
                "retry": {"attempts": 1, "codes": [500]},
                "backendRefs": [ref("gw-a", "web-d", 50), ref("gw-b", "web", 50)],
            }
        ],
    },
    "down": {
        "hostnames": ["down.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web-x"), ref("gw-b", "web-x")]}],
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
                "backendRefs": [ref("gw-a", "web", 50), ref("gw-b", "web", 50)],
            }
        ],
    },
    "big": {"hostnames": ["big.test"], "rules": [{"backendRefs": [ref("gw-a", "web")]}]},
    "pair": {
        "hostnames": ["pair.test"],
        "rules": [{"backendRefs": [ref("gw-a", "web", 50), ref("gw-b", "web", 50)]}],
    },
    "only-a": {"hostnames": ["only-a.test"], "rules": [{"backendRefs": [ref("gw-a", "web")]}]},
}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Iterator[World]:
    base = tmp_path_factory.mktemp("gateway-health")
    with pair(base, layout=LAYOUT, backends=("c", "d", "m"), routes=ROUTES) as running:
        yield running


@dataclass(frozen=True)
class Record:
    start: float
    end: float
    status: int
    backend: str
    """Who answered (``X-Backend``), or ``""`` for the gateway's own answers."""


class Load:
    """GETs on ``host``, one after another on a keep-alive connection, in a thread, recorded.

    A client error (an exception, not an HTTP status) ends the load and is raised by
    ``stop()``, so a test sees it.
    """

    def __init__(self, world: World, host: str) -> None:
        self._world = world
        self._host = host
        self._stop = threading.Event()
        self.records: list[Record] = []
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name=f"load[{host}]", daemon=True)

    def _run(self) -> None:
        connection = http.client.HTTPConnection("127.0.0.1", self._world.gateway_port, timeout=30)
        try:
            while not self._stop.is_set():
                start = time.monotonic()
                connection.request("GET", "/headers", headers={"Host": self._host})
                response = connection.getresponse()
                response.read()
                backend = response.headers.get("X-Backend", "")
                self.records.append(Record(start, time.monotonic(), response.status, backend))
        except BaseException as error:  # noqa: BLE001 - handed to the test by stop()
            self.error = error
        finally:
            connection.close()

    def since(self, moment: float) -> list[Record]:
        """The requests started after ``moment``."""
        return [r for r in list(self.records) if r.start > moment]

    def wait(self, what: str, check: Callable[[list[Record]], bool], *, after: float) -> None:
        """Until ``check`` holds for the requests started after ``after``."""

        def probe() -> list[Record]:
            if self.error is not None:
                raise AssertionError(f"the load failed: {self.error!r}")
            return self.since(after)

        eventually(probe, check, what=what, within=120, every=0.05)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=60)
        if self.error is not None and exc[0] is None:
            raise AssertionError(f"the load failed: {self.error!r}") from self.error


def last(records: list[Record], count: int, backend: str) -> bool:
    """The last ``count`` requests were all answered 200 by ``backend``."""
    tail = records[-count:]
    return len(tail) == count and all((r.status, r.backend) == (200, backend) for r in tail)


def failover(records: list[Record], fault_at: float, faulty: str) -> float:
    """Seconds from ``fault_at`` until every request is a clean answer of the other cluster.

    To the end of the last request that was not: an error, an answer of ``faulty``, or one
    slower than max(0.1 s, 3 x the p99 of the requests before the fault) (held by a retry).
    """
    before = sorted(r.end - r.start for r in records if r.end < fault_at)
    p99 = before[int(len(before) * 0.99)] if before else 0.0
    slow = max(0.1, 3 * p99)
    bad = [
        r.end
        for r in records
        if r.end >= fault_at and (r.status != 200 or r.backend == faulty or r.end - r.start > slow)
    ]
    return max(bad, default=fault_at) - fault_at


def report(
    record_property: Callable[[str, object], None],
    what: str,
    records: list[Record],
    fault_at: float,
    faulty: str,
) -> None:
    """Print and record the failover figure and the slowest request after the fault."""
    seconds = failover(records, fault_at, faulty)
    slowest = max((r.end - r.start for r in records if r.end >= fault_at), default=0.0)
    record_property(f"failover_s[{what}]", round(seconds, 3))
    record_property(f"slowest_after_fault_s[{what}]", round(slowest, 3))
    # The figures the issue asks for (its goal, < 1 s, is the benchmark's to hold).
    print(f"failover ({what}): {seconds:.3f} s; slowest request after it {slowest:.3f} s")  # noqa: T201


def both(records: list[Record], a: str, b: str) -> bool:
    return {r.backend for r in records} >= {a, b}


def test_unready_endpoints_move_traffic_before_a_request_fails(
    world: World, record_property: Callable[[str, object], None]
) -> None:
    """gw-a's endpoints made unready: all traffic on gw-b, no GET sees an error; then back."""
    key = "gw-a/demo/web-h:80"
    with Load(world, "checked.test") as load:
        load.wait("both clusters answer", lambda rs: both(rs, "gw-a", "gw-b"), after=0)
        fault_at = time.monotonic()
        world.ready("gw-a", "web-h", "gw-a", ready=False)
        load.wait("every request on gw-b", lambda rs: last(rs, 60, "gw-b"), after=fault_at)
        eventually(
            lambda: world.backend_status("checked")[key].get("reasons", []),
            lambda reasons: "NoReadyEndpoints" in reasons,
            what=f"{key} NoReadyEndpoints in the route status",
            within=30,
        )
        report(record_property, "endpoints unready", load.records, fault_at, "gw-a")
        # Back: ready again; slow start gives it a share again.
        back_at = time.monotonic()
        world.ready("gw-a", "web-h", "gw-a", ready=True)
        eventually(
            lambda: world.backend_status("checked")[key]["state"],
            lambda state: state == "Healthy",
            what=f"{key} healthy again after its endpoint is ready",
            within=30,
        )
        load.wait("gw-a answers again", lambda rs: both(rs, "gw-a", "gw-b"), after=back_at)
    assert {r.status for r in load.records} == {200}


def test_a_reported_count_of_0_moves_traffic_before_any_request_fails(
    world: World, record_property: Callable[[str, object], None]
) -> None:
    """No checks, no requests meanwhile: gw-a's agent's count alone takes it out, then back."""
    key = "gw-a/demo/web-r:80"
    eventually(
        lambda: world.backend_status("counted")[key].get("readyEndpoints"),
        lambda count: count == 1,
        what=f"{key}'s ready count (1) in the route status",
        within=30,
        ignore=(KeyError,),
    )
    with world.client() as client:
        before = Counter(get(client, "counted.test").body["backend"] for _ in range(40))
        assert set(before) == {"gw-a", "gw-b"}, before
        world.ready("gw-a", "web-r", "gw-a", ready=False)
        started = time.monotonic()
        # Not one request until the status shows the count: nothing else can mark the backend.
        health = eventually(
            lambda: world.backend_status("counted")[key],
            lambda seen: seen.get("readyEndpoints") == 0,
            what=f"{key} reported with 0 ready endpoints",
            within=30,
        )
        took = time.monotonic() - started
        assert health["reasons"] == ["NoReadyEndpoints"], health
        after = [get(client, "counted.test") for _ in range(100)]
        assert Counter((a.status, a.body["backend"]) for a in after) == {(200, "gw-b"): 100}
        record_property("ready_count_0_in_status_s", round(took, 3))
        print(f"ready count 0 in the route status {took:.2f} s after the slice changed")  # noqa: T201

        world.ready("gw-a", "web-r", "gw-a", ready=True)
        eventually(
            lambda: world.backend_status("counted")[key],
            lambda seen: seen.get("readyEndpoints") == 1 and seen["state"] == "Healthy",
            what=f"{key} healthy again with 1 ready endpoint",
            within=30,
        )
        back = eventually(
            lambda: [get(client, "counted.test") for _ in range(40)],
            lambda seen: any(a.body["backend"] == "gw-a" for a in seen),
            what="gw-a/web-r takes requests again",
            within=60,
        )
        assert {a.status for a in back} == {200}


def test_a_cluster_answering_500_is_ejected_and_comes_back(
    world: World, record_property: Callable[[str, object], None]
) -> None:
    """gw-a's backend c answers 500: ejected, all on gw-b; back once c answers again.

    No retry codes on the route, so the client sees the 500s until passive health ejects c:
    at most the 5 in a row that eject it. Back after the ejection time (30 s the first time).
    """
    key = "gw-a/demo/web-c:80"
    with Load(world, "passive.test") as load:
        load.wait("both clusters answer", lambda rs: both(rs, "c", "gw-b"), after=0)
        with world.failing("c"):
            fault_at = time.monotonic()
            load.wait("every request on gw-b", lambda rs: last(rs, 60, "gw-b"), after=fault_at)
            eventually(
                lambda: world.backend_status("passive")[key],
                lambda health: health["state"] == "Ejected",
                what=f"the passive route's status shows {key} ejected",
                within=10,
            )
        report(record_property, "servers answer 500", load.records, fault_at, "c")
        errors = [r for r in load.since(fault_at) if r.status != 200]
        assert 1 <= len(errors) <= 5, Counter((r.status, r.backend) for r in errors)
        assert {(r.status, r.backend) for r in errors} == {(500, "c")}
        # Back after the ejection (30 s the first time), then slow start.
        back_at = time.monotonic()
        load.wait("c answers again", lambda rs: any(r.backend == "c" for r in rs), after=back_at)
    assert {r.status for r in load.since(back_at)} == {200}


def test_a_status_in_the_retry_codes_is_retried_on_the_other_cluster(world: World) -> None:
    """gw-a's backend d answers 500, a retry code of the route: gw-b answers every GET."""
    with world.failing("d"), world.client() as client:
        answers = [get(client, "retry.test") for _ in range(40)]
    assert Counter((a.status, a.body["backend"]) for a in answers) == {(200, "gw-b"): 40}
    tried = (world.base / "d.log").read_text().splitlines()
    assert any(line.startswith("GET /headers") for line in tried), tried  # d was asked


def test_a_route_whose_backends_are_all_down_answers_503_with_a_reason(world: World) -> None:
    """Both clusters' ``web-x`` have no ready endpoint: 503, each backend's reason named."""
    with world.client() as client:
        down = get(client, "down.test")
        still = get(client, "pair.test")
    assert down.status == 503, down
    assert down.body["reason"] == "no_healthy_backend", down.body
    for cluster in ("gw-a", "gw-b"):
        assert f"{cluster}/demo/web-x:80: unhealthy: NoReadyEndpoints" in down.body["detail"]
    assert down.headers.get("Retry-After") == "1"
    assert still.status == 200


def _lower(headers: dict[str, str]) -> dict[str, str]:
    return {name.lower(): value for name, value in headers.items()}


def test_response_modifier_session_cookie_and_mirror(world: World) -> None:
    """Response head modified, a sticky cookie session, a copy of each request mirrored.

    The client's answers are the backends' own (the mirror's are dropped).
    """
    with world.client() as client:
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
            for line in (world.base / "m.log").read_text().splitlines()
            if line.startswith("GET /headers")
        },
        lambda seen: wanted <= seen,
        what="a copy of every request at the mirror",
        within=15,
        ignore=(FileNotFoundError,),
    )
    assert {"mirror-0", "mirror-29"} <= mirrored


def test_metrics_and_status_figures_by_route_and_backend(world: World) -> None:
    """Per-route series on /metrics, figures in status.backends, a deleted route's dropped."""
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
        lambda: world.backend_status("big")["gw-a/demo/web:80"],
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


async def test_100_mb_up_and_down_and_a_websocket_through_a_route(world: World) -> None:
    """100 MB each way through a MultiClusterRoute, sha256 checked; a WebSocket echo."""
    size = 100 * MB
    data = pattern(size)
    digest = hashlib.sha256(data).hexdigest()
    url = f"http://127.0.0.1:{world.gateway_port}"
    host = {"Host": "big.test"}
    async with _session() as http:
        async with http.post(f"{url}/upload", data=_chunks(data), headers=host) as answer:
            assert answer.status == 200
            assert await answer.json() == {"bytes": size, "sha256": digest, "backend": "gw-a"}
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
            assert await ws.receive_str(timeout=30) == "gw-a:hello"
            await ws.send_bytes(blob)
            assert await ws.receive_bytes(timeout=30) == blob


def test_a_killed_agent_moves_every_request_to_the_other_cluster_and_back(
    world: World, record_property: Callable[[str, object], None]
) -> None:
    """SIGKILL of gw-a's agent under load: every request on gw-b; back after a restart.

    No GET fails (one in flight is retried on gw-b); a route with gw-a alone answers 503
    saying why. The agent restarted, gw-a takes a small share first (slow start), then its
    whole weight.
    """
    agent = world.agents["gw-a"]
    with Load(world, "pair.test") as load:
        load.wait("both clusters answer", lambda rs: both(rs, "gw-a", "gw-b"), after=0)
        assert agent.process is not None
        fault_at = time.monotonic()
        agent.process.kill()  # SIGKILL: no goodbye on the tunnel
        load.wait("every request on gw-b", lambda rs: last(rs, 100, "gw-b"), after=fault_at)
        report(record_property, "agent killed", load.records, fault_at, "gw-a")
        with world.client() as client:
            alone = get(client, "only-a.test")
        assert alone.status == 503, alone
        assert alone.body["reason"] == "no_healthy_backend"
        assert "gw-a/demo/web:80: unhealthy: Unreachable" in alone.body["detail"]
        assert alone.headers.get("Retry-After") == "1"
        # Recovery: the same agent started again.
        agent.start()
        wait_serving(agent, GW_A_SERVING)
        back_at = time.monotonic()
        load.wait("gw-a answers again", lambda rs: any(r.backend == "gw-a" for r in rs), after=0)
        first = next(r.start for r in load.since(back_at - 60) if r.backend == "gw-a")
        load.wait("60 more requests", lambda rs: len(rs) >= 60, after=first)
        early = Counter(r.backend for r in load.since(first)[:60])
        load.wait(
            "gw-a's whole weight back (50 %)",
            lambda rs: 0.4 <= sum(r.backend == "gw-a" for r in rs[-200:]) / 200 <= 0.6,
            after=first,
        )
    # Slow start: a share well below its weight (about 1/10 of it at first).
    assert early["gw-a"] / 60 < 0.35, early
    assert {r.status for r in load.records} == {200}, Counter(r.status for r in load.records)
    after_kill = load.since(fault_at)
    assert all(r.backend == "gw-b" for r in after_kill if r.end < first), "gw-a answered dead"
    assert conditions(world.status("pair"))["Accepted"]["status"] == "True"
