"""Our own daemons as real processes: a tunnel server, joined agents, their config files.

Used by the end-to-end tests and the benchmarks. Everything runs on loopback, each process
in its own group and dying with the test process (see ``procs``).
"""

from __future__ import annotations

import hashlib
import json
import ssl
import subprocess
import sys
import urllib.request
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

BIN = Path(sys.executable).parent
START_TIMEOUT = 30.0
REPO = Path(__file__).resolve().parents[2]
"""The tree under test: agents (and test launchers, ``python -m tests...``) import it."""

TomlValue = str | int | float | bool | Path | list[str]


def _toml(value: TomlValue) -> str:
    if isinstance(value, list):
        return "[" + ", ".join(_toml(item) for item in value) + "]"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    return json.dumps(str(value))  # a TOML basic string: JSON's escapes are TOML's


def write_agent_config(path: Path, tables: Mapping[str, Mapping[str, TomlValue]]) -> Path:
    """An ``edge-agent`` config file: one TOML table per key (``"tunnel"``, ``"twins"``...)."""
    lines: list[str] = []
    for table, values in tables.items():
        lines += [f"[{table}]", *(f"{key} = {_toml(value)}" for key, value in values.items()), ""]
    path.write_text("\n".join(lines))
    return path


def launch_agent(
    *,
    label: str,
    config: Path,
    data_dir: Path,
    local_api_port: int,
    log_path: Path,
    launcher: tuple[str, ...] = (),
    run_args: tuple[str, ...] = (),
) -> ManagedProcess:
    """``edge-agent run`` as a managed process.

    With ``launcher`` (a test module that runs the same daemon with test-only routes), that
    module instead, with the same options and this tree on PYTHONPATH.
    """
    program = [sys.executable, "-m", *launcher] if launcher else [str(BIN / "edge-agent"), "run"]
    return ManagedProcess(
        label,
        [
            *program,
            "--config",
            str(config),
            "--data-dir",
            str(data_dir),
            "--local-api-port",
            str(local_api_port),
            *run_args,
        ],
        log_path=log_path,
        env={"PYTHONPATH": str(REPO)},  # the tree under test, whatever the venv points at
    )


def command(program: str, *args: str | Path, timeout: float = 60.0) -> str:
    """Run one of our CLIs to completion; its stdout, or a loud error with its stderr."""
    done = subprocess.run(
        [str(BIN / program), *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if done.returncode != 0:
        raise ServiceError(
            f"{program} {' '.join(map(str, args))} failed ({done.returncode}): {done.stderr}"
        )
    return done.stdout


@dataclass(kw_only=True)
class Server:
    workdir: Path
    port: int = field(default_factory=free_port)
    extra_args: tuple[str, ...] = ()
    process: ManagedProcess | None = None

    @property
    def data_dir(self) -> Path:
        return self.workdir / "server"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.data_dir / "admin-token").read_text().strip()

    @property
    def ca_pem(self) -> bytes:
        return (self.data_dir / "ca.crt").read_bytes()

    @property
    def ca_hash(self) -> str:
        certificate = x509.load_pem_x509_certificate(self.ca_pem)
        der = certificate.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        return "sha256:" + hashlib.sha256(der).hexdigest()

    def ssl_context(self) -> ssl.SSLContext:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca_pem.decode())
        return context

    def start(self) -> None:
        self.process = ManagedProcess(
            "tunnel-server",
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
        )
        self.wait_ready()

    def wait_ready(self) -> None:
        def ready() -> int:
            assert self.process is not None
            self.process.check_running()  # a crash ends the wait at once, with its log
            status, _ = self.get("/readyz")
            return status

        try:
            eventually(
                ready,
                lambda status: status == 200,
                what="tunnel-server /readyz 200",
                within=START_TIMEOUT,
                ignore=(OSError,),  # not listening yet, or ca.crt not written yet
            )
        except NotSeen as error:
            raise ServiceError(str(error)) from error

    def get(self, path: str, *, token: str | None = None) -> tuple[int, bytes]:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        request = urllib.request.Request(self.url + path, headers=headers)  # noqa: S310 - ours
        try:
            with urllib.request.urlopen(request, timeout=10, context=self.ssl_context()) as answer:  # noqa: S310 - ours
                return int(answer.status), answer.read()
        except urllib.error.HTTPError as error:
            with error:  # an error response left open keeps its socket until a later GC
                return error.code, error.read()

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics."""
        _, body = self.get("/metrics")
        for line in body.decode().splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise KeyError(name)

    def cli(self, *args: str | Path, token: str | None = None) -> str:
        """The remote CLI (``tunnel-server token create ...``) against this running server.

        It reaches the API as any operator would, by ``--server``, ``--token`` (the admin
        token unless another is given) and ``--ca-file``; the server must be running.
        """
        return command(
            "tunnel-server",
            *args,
            "--server",
            self.url,
            "--token",
            token or self.admin_token,
            "--ca-file",
            self.data_dir / "ca.crt",
        )

    def nodes(self) -> dict[str, dict[str, object]]:
        """Every node by name, as ``GET /api/v1/nodes`` lists it (every page)."""
        listed = json.loads(self.cli("nodes", "list", "-o", "json"))
        return {n["name"]: n for n in listed["items"]}

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()


def join_agent(server: Server, name: str, data_dir: Path, *, kind: str = "node") -> str:
    """Make a bootstrap token of ``kind`` for ``name`` and run ``edge-agent join`` with it."""
    token = server.cli("token", "create", "--kind", kind, "--name", name).strip()
    command(
        "edge-agent",
        "join",
        "--server",
        server.url,
        "--token",
        token,
        "--ca-hash",
        server.ca_hash,
        "--name",
        name,
        "--data-dir",
        data_dir,
    )
    return token


@dataclass(kw_only=True)
class Agent:
    name: str
    workdir: Path
    server: Server
    targets: dict[str, str] = field(default_factory=dict)
    tunnel_options: dict[str, float] = field(default_factory=dict)
    run_args: tuple[str, ...] = ()
    """More arguments for ``edge-agent run``."""
    tables: dict[str, dict[str, TomlValue]] = field(default_factory=dict)
    """More tables of the config file (such as ``"kube"`` or ``"twins"``), key by key."""
    local_api_port: int = field(default_factory=free_port)
    process: ManagedProcess | None = None
    token: str | None = None
    """The bootstrap token this agent joined with (tests check it never shows in a log)."""
    kind: str = "node"
    """The kind of its bootstrap token: ``node`` or ``cluster`` (a cluster-mode agent)."""

    @property
    def data_dir(self) -> Path:
        return self.workdir / f"agent-{self.name}"

    def join(self) -> None:
        self.token = join_agent(self.server, self.name, self.data_dir, kind=self.kind)

    def write_config(self) -> Path:
        return write_agent_config(
            self.workdir / f"agent-{self.name}.toml",
            {
                # Tests restart servers: come back quickly.
                "tunnel": {"backoff_base": 0.2, "backoff_cap": 2.0, **self.tunnel_options},
                "tunnel.targets": dict(self.targets),
                **self.tables,
            },
        )

    def start(self) -> None:
        self.process = launch_agent(
            label=f"edge-agent[{self.name}]",
            config=self.write_config(),
            data_dir=self.data_dir,
            local_api_port=self.local_api_port,
            log_path=self.workdir / f"agent-{self.name}.log",
            run_args=self.run_args,
        )

    def status(self) -> dict[str, object]:
        url = f"http://127.0.0.1:{self.local_api_port}/status"
        with urllib.request.urlopen(url, timeout=5) as answer:
            status: dict[str, object] = json.loads(answer.read())
            return status

    def metric(self, name: str) -> float:
        """One unlabelled sample from the agent's /metrics."""
        url = f"http://127.0.0.1:{self.local_api_port}/metrics"
        with urllib.request.urlopen(url, timeout=5) as answer:
            for line in answer.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
        raise KeyError(name)

    def wait_ready(self, timeout: float = START_TIMEOUT) -> None:
        """Until the agent's /readyz says every part it runs is ready."""
        url = f"http://127.0.0.1:{self.local_api_port}/readyz"

        def ready() -> int:
            assert self.process is not None
            self.process.check_running()
            with urllib.request.urlopen(url, timeout=5) as answer:
                return int(answer.status)

        try:
            eventually(
                ready,
                lambda status: status == 200,
                what=f"agent {self.name} /readyz 200",
                within=timeout,
                ignore=(OSError,),
            )
        except NotSeen as error:
            raise ServiceError(str(error)) from error

    def wait_connected(self, timeout: float = START_TIMEOUT) -> None:
        def tunnel() -> object:
            assert self.process is not None
            self.process.check_running()
            return self.status().get("tunnel")

        try:
            eventually(
                tunnel,
                lambda tunnel: isinstance(tunnel, dict) and bool(tunnel.get("connected")),
                what=f"agent {self.name} connected",
                within=timeout,
                ignore=(OSError, ValueError),
            )
        except NotSeen as error:
            assert self.process is not None
            raise ServiceError(f"{error}\n{self.process.tail()}") from error

    def stop(self) -> None:
        if self.process is not None:
            self.process.stop()
