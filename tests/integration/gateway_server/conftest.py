"""One tunnel server with ``--gateway-listen``, two cluster agents, two backend HTTP servers.

Real processes throughout: ``tunnel-server run`` (through ``server_proc``, which only swaps in
a fixed route table), two clusters joined with cluster tokens whose sessions are the agent's
own tunnel client (``standin_agent``: a STAND-IN for the Service target until the agent
serves it), and one aiohttp backend per cluster that answers with its name.

Routes (``Host`` -> backends in the order to try):

- ``web.test``: gw-a/default/web:80 (backend ``a``)
- ``retry.test``: gw-a/default/down:80 (no ready endpoints), then gw-b/default/web:80
- ``down.test``: gw-a/default/down:80 only
- ``offline.test``: gw-c/default/web:80 (a cluster that never joined)
- ``pair.test``: gw-a/default/web:80, then gw-b/default/web:80
"""

from __future__ import annotations

import contextlib
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.harness.certs import KeyPair
from tests.harness.daemons import REPO, Server, join_agent
from tests.harness.procs import ManagedProcess, free_port, wait_port
from tests.harness.waiting import eventually

ROUTES = {
    "web.test": ["gw-a/default/web:80"],
    "retry.test": ["gw-a/default/down:80", "gw-b/default/web:80"],
    "down.test": ["gw-a/default/down:80"],
    "offline.test": ["gw-c/default/web:80"],
    "pair.test": ["gw-a/default/web:80", "gw-b/default/web:80"],
}
IDLE_TIMEOUT = 2.0
"""Seconds of ``--gateway-idle-timeout``: short, so the slow-client test is quick."""
RESPONSE_TIMEOUT = 3.0
"""Seconds of ``--gateway-response-timeout``: short, so the 504 test is quick."""
STREAM_IDLE_TIMEOUT = 3.0
"""Seconds of ``--gateway-stream-idle-timeout``: short, so the stalled-answer test is quick."""
MAX_BODY = 30 * 1024 * 1024
"""Bytes of ``--gateway-max-body-bytes``: above the 20 MB transfers, below the 413 test's."""


@dataclass(kw_only=True)
class GatewayServer(Server):
    """``Server`` started through ``server_proc`` (the same CLI, a fixed route table)."""

    routes_file: Path | None = None

    def start(self) -> None:
        assert self.routes_file is not None
        self.process = ManagedProcess(
            "tunnel-server",
            [
                sys.executable,
                "-m",
                "tests.integration.gateway_server.server_proc",
                str(self.routes_file),
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
            env={"PYTHONPATH": str(REPO)},
        )
        self.wait_ready()


@dataclass
class Gateway:
    server: GatewayServer
    host: str
    port: int
    agents: dict[str, ManagedProcess]

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"


def backend(name: str, workdir: Path, host: str = "127.0.0.1") -> tuple[ManagedProcess, int]:
    """A ``backend_http`` process answering as ``name`` on ``host``; it and its port."""
    port = free_port(host)
    proc = ManagedProcess(
        f"backend[{name}]",
        [
            sys.executable,
            "-m",
            "tests.integration.gateway_server.backend_http",
            "--host",
            host,
            "--port",
            str(port),
            "--name",
            name,
        ],
        log_path=workdir / f"backend-{name}.log",
        env={"PYTHONPATH": str(REPO)},
    )
    wait_port(host, port, timeout=30, proc=proc)
    return proc, port


def _agent(server: Server, name: str, workdir: Path, services: dict[str, str]) -> ManagedProcess:
    data_dir = workdir / f"agent-{name}"
    join_agent(server, name, data_dir, kind="cluster")
    proc = ManagedProcess(
        f"standin-agent[{name}]",
        [
            sys.executable,
            "-m",
            "tests.integration.gateway_server.standin_agent",
            "--data-dir",
            str(data_dir),
            *[f"--service={target}={where}" for target, where in services.items()],
        ],
        log_path=workdir / f"agent-{name}.log",
        env={"PYTHONPATH": str(REPO)},
    )

    def up() -> bool:
        proc.check_running()
        return (data_dir / "standin-up").exists()

    eventually(up, bool, what=f"stand-in agent {name} connected", within=30)
    return proc


@contextlib.contextmanager
def running_gateway(base: Path, *, tls: KeyPair | None = None) -> Iterator[Gateway]:
    """The server (HTTPS on the gateway with ``tls``), two stand-in agents, two backends."""
    routes = base / "routes.json"
    routes.write_text(json.dumps(ROUTES))
    port = free_port()
    tls_args = (
        ()
        if tls is None
        else (
            "--gateway-cert-file",
            str(tls.cert_path),
            "--gateway-key-file",
            str(tls.key_path),
        )
    )
    server = GatewayServer(
        workdir=base,
        routes_file=routes,
        extra_args=(
            "--gateway-listen",
            f"127.0.0.1:{port}",
            "--gateway-idle-timeout",
            f"{IDLE_TIMEOUT:g}s",
            "--gateway-response-timeout",
            f"{RESPONSE_TIMEOUT:g}s",
            "--gateway-stream-idle-timeout",
            f"{STREAM_IDLE_TIMEOUT:g}s",
            "--gateway-max-body-bytes",
            str(MAX_BODY),
            *tls_args,
        ),
    )
    procs: list[ManagedProcess] = []
    try:
        backend_a, port_a = backend("a", base)
        backend_b, port_b = backend("b", base)
        procs += [backend_a, backend_b]
        server.start()
        agents = {
            "gw-a": _agent(
                server,
                "gw-a",
                base,
                {
                    "service/default/web:80": f"127.0.0.1:{port_a}",
                    "service/default/down:80": "unready",
                },
            ),
            "gw-b": _agent(server, "gw-b", base, {"service/default/web:80": f"127.0.0.1:{port_b}"}),
        }
        procs += agents.values()
        yield Gateway(server=server, host="127.0.0.1", port=port, agents=agents)
    finally:
        for proc in procs:
            proc.stop()
        server.stop()


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gateway]:
    with running_gateway(tmp_path_factory.mktemp("gateway")) as running:
        yield running
