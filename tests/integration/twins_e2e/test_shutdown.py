"""SIGTERM while a twin long-poll waits: the server answers it and exits promptly.

``GET /api/v1/devices/{id}/twin?wait=30&desiredVersion=N`` may wait 30 s, longer than the
server's drain (``shutdown_grace``, 10 s). Before the fix the drain waited the grace for the
handler, then as long again before cancelling it: ``tunnel-server run`` exited ~22 s after
SIGTERM, and the harness (10 s grace) SIGKILLed it.

The server is the real ``tunnel-server run``. Its device was onboarded in an earlier run: the
twin database is written before the start by the cloud's own batch code (the same call an
agent's ``device`` record makes), which spares a broker and an agent this test does not need.
"""

from __future__ import annotations

import json
import os
import signal
import time
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from tests.harness.daemons import Server
from tests.harness.waiting import eventually
from tunnel_server.twins import CloudTwinReplica, CloudTwinsSettings
from tunnel_server.twins.models import load_models
from tunnel_server.twins.store import TwinStore

DEVICE = "edge-1:th-0"
WAIT = 30  # the longest long-poll the API allows: it must not be what ends the test
EXIT_WITHIN = 8.0  # generous: a behaviour check (the grace is 10 s), not a benchmark


def onboard_earlier(data_dir: Path, node: str, device: str) -> None:
    """Leave ``data_dir/twins.sqlite3`` as a run in which ``node`` onboarded ``device`` would."""
    data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    settings = CloudTwinsSettings()
    store = TwinStore(
        data_dir / "twins.sqlite3",
        durability=settings.durability,
        cache_devices=settings.cache_devices,
        max_dead_letters=settings.max_dead_letters,
    )
    try:
        cloud = CloudTwinReplica(store=store, models=load_models(None), settings=settings)
        origin = f"{node}.boot1"
        record = {"outboxId": 1, "kind": "device", "device": device, "origin": origin}
        record |= {"model": "thermostat", "modelVersion": "1.0.0"}
        result = cloud.apply_batch(node=node, origin=origin, records=[record])
        assert result.applied == 1, result
    finally:
        store.close()


@pytest.fixture
def server(tmp_path: Path) -> Iterator[Server]:
    server = Server(workdir=tmp_path)
    node, _, device = DEVICE.partition(":")
    onboard_earlier(server.data_dir, node, device)
    server.start()
    try:
        yield server
    finally:
        server.stop()


def long_poll(server: Server, path: str) -> tuple[int, dict[str, Any], dict[str, str]]:
    request = urllib.request.Request(  # noqa: S310 - our own server
        server.url + path, headers={"Authorization": f"Bearer {server.admin_token}"}
    )
    with urllib.request.urlopen(request, timeout=WAIT + 10, context=server.ssl_context()) as answer:  # noqa: S310
        return answer.status, json.loads(answer.read()), dict(answer.headers)


def wait_long_polls(server: Server, count: int, *, within: float = 10.0) -> None:
    eventually(
        lambda: server.metric("tunnel_server_twins_long_polls"),
        lambda waiting: waiting == count,
        what=f"{count} long-polls waiting",
        within=within,
    )


def test_sigterm_answers_a_waiting_long_poll_and_exits_promptly(server: Server) -> None:
    assert server.process is not None
    status, twin, _ = long_poll(server, f"/api/v1/devices/{DEVICE}/twin")
    assert status == 200
    wanted = twin["desired"]["$version"] + 5  # a version nobody writes: the poll waits
    path = f"/api/v1/devices/{DEVICE}/twin?wait={WAIT}&desiredVersion={wanted}"
    with ThreadPoolExecutor(1) as pool:
        answer = pool.submit(long_poll, server, path)
        wait_long_polls(server, 1)
        stopped = time.monotonic()
        os.kill(server.process.pid, signal.SIGTERM)
        code = server.process.popen.wait(timeout=WAIT)
        elapsed = time.monotonic() - stopped
        assert code == 0, server.process.tail()
        assert elapsed < EXIT_WITHIN, f"exited {elapsed:.1f} s after SIGTERM"
        status, body, headers = answer.result(timeout=5)
    # The answer a long-poll gets when its wait runs out: the twin as it is, version not
    # reached (the client polls again and finds the server gone or restarted).
    assert status == 200
    assert body == twin
    assert headers.get("Connection") == "close"
    assert "Traceback" not in server.process.tail(200)
