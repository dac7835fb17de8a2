"""A real ``tunnel-server run`` on a free loopback port, and helpers to run the real CLIs."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import json
import socket
import ssl
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from tests.harness.waiting import eventually

if TYPE_CHECKING:
    from collections.abc import Iterator

BIN = Path(sys.executable).parent
START_TIMEOUT = 20.0
CLI_TIMEOUT = 60.0


@dataclass(frozen=True, kw_only=True)
class Result:
    rc: int
    stdout: str
    stderr: str


async def run(program: str, *args: str | Path) -> Result:
    """Run one of our commands to completion and capture its output."""
    process = await asyncio.create_subprocess_exec(
        BIN / program,
        *[str(a) for a in args],
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        async with asyncio.timeout(CLI_TIMEOUT):
            stdout, stderr = await process.communicate()
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()
    assert process.returncode is not None
    return Result(rc=process.returncode, stdout=stdout.decode(), stderr=stderr.decode())


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def spki_sha256(certificate: x509.Certificate) -> str:
    der = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return "sha256:" + hashlib.sha256(der).hexdigest()


@dataclass(frozen=True, kw_only=True)
class RunningServer:
    url: str
    port: int
    data_dir: Path
    log_path: Path
    ca_pem: bytes

    @property
    def ca_hash(self) -> str:
        return spki_sha256(x509.load_pem_x509_certificate(self.ca_pem))

    def trusting_context(self) -> ssl.SSLContext:
        """Client TLS trusting only this server's CA (no client certificate)."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=self.ca_pem.decode())
        return context

    async def cli(self, *args: str) -> Result:
        return await run("tunnel-server", *args, "--data-dir", self.data_dir)

    async def token(self, name: str, *extra: str) -> str:
        result = await self.cli("token", "create", "--name", name, *extra)
        assert result.rc == 0, result.stderr
        return result.stdout.strip()

    async def nodes(self) -> dict[str, dict[str, Any]]:
        result = await self.cli("nodes", "--json")
        assert result.rc == 0, result.stderr
        return {node["name"]: node for node in json.loads(result.stdout)}

    async def join(
        self,
        *,
        token: str,
        name: str,
        data_dir: Path,
        ca_hash: str | None = None,
        extra: tuple[str, ...] = (),
    ) -> Result:
        return await run(
            "edge-agent",
            "join",
            "--server",
            self.url,
            "--token",
            token,
            "--ca-hash",
            ca_hash or self.ca_hash,
            "--name",
            name,
            "--data-dir",
            data_dir,
            *extra,
        )

    def log(self) -> str:
        return self.log_path.read_text()


def _wait_healthy(url: str, port: int, data_dir: Path, process: subprocess.Popen[bytes]) -> bytes:
    def healthz() -> bytes | None:
        if process.poll() is not None:
            pytest.fail(f"tunnel-server exited with {process.returncode} while starting")
        ca_pem = (data_dir / "ca.crt").read_bytes()  # OSError until the server wrote it
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
        context.load_verify_locations(cadata=ca_pem.decode())
        connection = http.client.HTTPSConnection("127.0.0.1", port, timeout=5, context=context)
        with contextlib.closing(connection):
            connection.request("GET", "/healthz")
            return ca_pem if connection.getresponse().status == 200 else None

    ca_pem = eventually(
        healthz, what=f"tunnel-server {url}/healthz 200", within=START_TIMEOUT, ignore=(OSError,)
    )
    assert ca_pem is not None
    return ca_pem


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    """One real server per test module (startup costs ~1.5 s); tests use their own node names."""
    tmp_path = tmp_path_factory.mktemp("tunnel-server")
    port = free_port()
    data_dir = tmp_path / "server"
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log_file:
        process = subprocess.Popen(
            [
                BIN / "tunnel-server",
                "run",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                data_dir,
                "--public-name",
                "localhost",
            ],
            stdout=log_file,
            stderr=log_file,
        )
    try:
        url = f"https://127.0.0.1:{port}"
        ca_pem = _wait_healthy(url, port, data_dir, process)
        yield RunningServer(url=url, port=port, data_dir=data_dir, log_path=log_path, ca_pem=ca_pem)
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture
def name(request: pytest.FixtureRequest) -> str:
    """A node name unique to the test, so tests can share one server."""
    digest = hashlib.sha256(request.node.nodeid.encode()).hexdigest()[:8]
    return f"edge-{digest}"
