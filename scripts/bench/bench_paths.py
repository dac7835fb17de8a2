"""The paths the tunnel benchmark measures, each exposing the target at a local URL.

A path is a function ``(target, workdir) -> async context manager yielding an Endpoint``:
it starts whatever it needs (all on 127.0.0.1), waits until the target answers through it,
yields, and stops everything on exit. ``PATHS`` maps the names ``--paths`` accepts to them.

The extension point for our own tunnel is ``ours`` at the end of this file.
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import getpass
import ipaddress
import os
import shutil
import ssl
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import AbstractAsyncContextManager
from dataclasses import dataclass, field
from pathlib import Path

import aiohttp
from bench_procs import BenchError, Proc, free_port, run, running, wait_for_port
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

READY_TIMEOUT_S = 20.0


@dataclass(frozen=True, slots=True)
class Address:
    host: str
    port: int

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where the benchmark's clients reach the target through a path.

    ``base_url``: requests go to ``base_url + "/small"`` and ``base_url + "/bulk?bytes=N"``
    (http or https; no trailing slash needed). ``headers``: sent with every request (e.g.
    ``Authorization``). ``ca_file``: PEM CA that curl and the readiness probe trust for an
    https ``base_url`` (wrk does not verify certificates). ``cpu_pids``: processes whose CPU
    time (with their descendants) counts as the path's cost. ``info``: free-form facts shown
    in the report (e.g. the negotiated cipher).
    """

    base_url: str
    headers: Mapping[str, str] = field(default_factory=dict)
    ca_file: Path | None = None
    cpu_pids: tuple[int, ...] = ()
    info: Mapping[str, str] = field(default_factory=dict)

    def url(self, path_and_query: str) -> str:
        return self.base_url.rstrip("/") + path_and_query


PathFactory = Callable[[Address, Path], AbstractAsyncContextManager[Endpoint]]


class NotMeasuredError(Exception):
    """The path cannot be measured in this run; reported as "not measured", never as a number."""


async def wait_until_served(endpoint: Endpoint, within_s: float, *procs: Proc) -> None:
    """Wait until ``GET /small`` through ``endpoint`` answers 200 (bounded by ``within_s``)."""
    ssl_ctx: ssl.SSLContext | bool = True
    if endpoint.ca_file is not None:
        ssl_ctx = ssl.create_default_context(cafile=str(endpoint.ca_file))
    deadline = time.monotonic() + within_s
    last = "no attempt"
    async with aiohttp.ClientSession(
        headers=dict(endpoint.headers), timeout=aiohttp.ClientTimeout(total=2.0)
    ) as session:
        while time.monotonic() < deadline:
            for proc in procs:
                proc.check_alive()
            try:
                async with session.get(endpoint.url("/small"), ssl=ssl_ctx) as response:
                    body = await response.read()
                    if response.status == 200 and body == b"ok\n":
                        return
                    last = f"HTTP {response.status}: {body[:200]!r}"
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                last = f"{type(exc).__name__}: {exc}"
            await asyncio.sleep(0.1)
    logs = "".join(f"\n--- {p.name} ({p.log}):\n{p.log_tail()}" for p in procs)
    raise BenchError(
        f"the target did not answer through {endpoint.base_url} within {within_s:.0f} s "
        f"(last: {last}){logs}"
    )


# ---------------------------------------------------------------- direct


@contextlib.asynccontextmanager
async def direct(target: Address, workdir: Path) -> AsyncIterator[Endpoint]:
    del workdir
    yield Endpoint(base_url=f"http://{target}")


# ---------------------------------------------------------------- ssh -R


def _sshd_binary() -> str:
    sshd_bin = shutil.which("sshd") or "/usr/sbin/sshd"
    if not Path(sshd_bin).is_file():
        raise BenchError("sshd is not installed (Debian package openssh-server)")
    if os.geteuid() == 0:
        # sshd running as root insists on its privilege-separation folder.
        Path("/run/sshd").mkdir(mode=0o755, exist_ok=True)
    return sshd_bin


def _sshd_config(folder: Path, port: int, user: str) -> Path:
    """Write sshd's config and authorized_keys (keys made by ``_keygen`` already)."""
    (folder / "authorized_keys").write_bytes((folder / "user_ed25519.pub").read_bytes())
    config = folder / "sshd_config"
    config.write_text(
        f"""ListenAddress 127.0.0.1:{port}
HostKey {folder / "host_ed25519"}
PidFile none
AuthorizedKeysFile {folder / "authorized_keys"}
AllowUsers {user}
PermitRootLogin prohibit-password
PubkeyAuthentication yes
PasswordAuthentication no
KbdInteractiveAuthentication no
UsePAM no
StrictModes no
AllowTcpForwarding remote
GatewayPorts no
X11Forwarding no
PermitTTY no
PrintMotd no
LogLevel ERROR
"""
    )
    return config


async def _keygen(path: Path) -> None:
    status, _, err = await run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(path)], 30)
    if status != 0:
        raise BenchError(f"ssh-keygen failed: {err.strip()}")


def _ssh_cipher(log: Path) -> str:
    """The cipher ``ssh -v`` says it negotiated, from its log."""
    with contextlib.suppress(OSError):
        for line in log.read_text(errors="replace").splitlines():
            if "kex: server->client cipher:" in line:
                return line.split("cipher:", 1)[1].split()[0]
    return "unknown"


def ssh_path(cipher: str | None = None) -> PathFactory:
    """``ssh -R`` to a private sshd on a free loopback port.

    OpenSSH's default ciphers unless ``cipher`` names one, e.g. ``aes128-gcm@openssh.com``.
    """

    @contextlib.asynccontextmanager
    async def ssh(target: Address, workdir: Path) -> AsyncIterator[Endpoint]:
        sshd_bin = _sshd_binary()
        folder = workdir / f"ssh-{cipher or 'default'}"
        folder.mkdir(mode=0o700)
        user = getpass.getuser()
        await _keygen(folder / "host_ed25519")
        await _keygen(folder / "user_ed25519")
        sshd_port = free_port()
        config = _sshd_config(folder, sshd_port, user)
        status, _, err = await run([sshd_bin, "-t", "-f", str(config)], 30)
        if status != 0:
            raise BenchError(f"sshd rejected its config {config}: {err.strip()}")
        async with running(
            f"{folder.name}-sshd", [sshd_bin, "-D", "-e", "-f", str(config)], workdir
        ) as sshd:
            await wait_for_port(sshd_port, READY_TIMEOUT_S, sshd)
            forward = free_port()
            argv = [
                "ssh", "-v", "-F", "/dev/null", "-N", "-T",
                "-i", str(folder / "user_ed25519"), "-p", str(sshd_port),
                "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
                "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
                "-o", "ExitOnForwardFailure=yes", "-o", "ServerAliveInterval=15",
                *(["-o", f"Ciphers={cipher}"] if cipher else []),
                "-R", f"127.0.0.1:{forward}:{target}",
                f"{user}@127.0.0.1",
            ]  # fmt: skip
            async with running(f"{folder.name}-client", argv, workdir) as client:
                endpoint = Endpoint(
                    base_url=f"http://127.0.0.1:{forward}",
                    cpu_pids=(sshd.pid, client.pid),
                )
                await wait_until_served(endpoint, READY_TIMEOUT_S, sshd, client)
                yield Endpoint(
                    base_url=endpoint.base_url,
                    cpu_pids=endpoint.cpu_pids,
                    info={"cipher": _ssh_cipher(client.log)},
                )

    return ssh


# ---------------------------------------------------------------- chisel


def write_test_pki(folder: Path) -> tuple[Path, Path, Path]:
    """A throwaway CA and a serving certificate for 127.0.0.1: (ca.pem, cert.pem, key.pem)."""
    now = dt.datetime.now(dt.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "edgefleet bench CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(ca_key, hashes.SHA256())
    )
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.ExtendedKeyUsage([x509.OID_SERVER_AUTH]), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    folder.mkdir(mode=0o700, exist_ok=True)
    ca_pem, cert_pem, key_pem = folder / "ca.pem", folder / "cert.pem", folder / "key.pem"
    ca_pem.write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    cert_pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_pem.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return ca_pem, cert_pem, key_pem


def chisel_bin() -> str:
    path = os.environ.get("EDGEFLEET_CHISEL") or shutil.which("chisel")
    if not path or not Path(path).is_file():
        raise BenchError("chisel is not built: run scripts/bench/tunnel (it builds chisel)")
    return path


def chisel_path(*, tls: bool) -> PathFactory:
    """``chisel server --reverse`` and ``chisel client R:...`` (over TLS when ``tls``)."""

    @contextlib.asynccontextmanager
    async def chisel(target: Address, workdir: Path) -> AsyncIterator[Endpoint]:
        binary = chisel_bin()
        folder = workdir / ("chisel-tls" if tls else "chisel")
        folder.mkdir(mode=0o700)
        port = free_port()
        server_argv = [binary, "server", "--host", "127.0.0.1", "--port", str(port), "--reverse"]
        client_tls: list[str] = []
        scheme = "http"
        if tls:
            ca, cert, key = write_test_pki(folder)
            server_argv += ["--tls-cert", str(cert), "--tls-key", str(key)]
            client_tls = ["--tls-ca", str(ca)]
            scheme = "https"
        name = folder.name
        async with running(f"{name}-server", server_argv, workdir) as server:
            await wait_for_port(port, READY_TIMEOUT_S, server)
            forward = free_port()
            client_argv = [
                binary, "client", *client_tls, f"{scheme}://127.0.0.1:{port}",
                f"R:127.0.0.1:{forward}:{target}",
            ]  # fmt: skip
            async with running(f"{name}-client", client_argv, workdir) as client:
                endpoint = Endpoint(
                    base_url=f"http://127.0.0.1:{forward}",
                    cpu_pids=(server.pid, client.pid),
                    info={
                        "transport": "wss, server verified with --tls-ca" if tls else "ws, no TLS"
                    },
                )
                await wait_until_served(endpoint, READY_TIMEOUT_S, server, client)
                yield endpoint

    return chisel


# ---------------------------------------------------------------- ours (extension point)


def tunnel_bin(program: str) -> str:
    """One of our own console scripts, from the virtualenv the bench runs in."""
    path = Path(sys.executable).parent / program
    if not path.is_file():
        raise BenchError(f"{path} is missing: run scripts/setup (installs the project)")
    return str(path)


async def _cli(argv: Sequence[str], what: str) -> str:
    status, out, err = await run(argv, 60)
    if status != 0:
        raise BenchError(f"{what} failed (status {status}): {err.strip()}")
    return out.strip()


def server_argv(data_dir: Path, port: int) -> list[str]:
    return [
        tunnel_bin("tunnel-server"), "run", "--listen", f"127.0.0.1:{port}",
        "--data-dir", str(data_dir), "--public-name", "127.0.0.1",
    ]  # fmt: skip


async def wait_server_ready(port: int, ca_file: Path, within_s: float, proc: Proc) -> None:
    """Until ``GET /readyz`` answers 200 over TLS verified by the server's own CA."""
    deadline = time.monotonic() + within_s
    last = "no attempt"
    while time.monotonic() < deadline:
        proc.check_alive()
        try:
            context = ssl.create_default_context(cafile=str(ca_file))
        except OSError:  # the server has not written its CA yet
            context = None
        if context is not None:
            try:
                async with (
                    aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2.0)) as http,
                    http.get(f"https://127.0.0.1:{port}/readyz", ssl=context) as response,
                ):
                    if response.status == 200:
                        return
                    last = f"HTTP {response.status}"
            except (aiohttp.ClientError, TimeoutError, OSError, ssl.SSLError) as exc:
                last = f"{type(exc).__name__}: {exc}"
        await asyncio.sleep(0.05)
    raise BenchError(
        f"tunnel-server on port {port} not ready after {within_s:.0f} s (last: {last}); "
        f"its log ({proc.log}) ends with:\n{proc.log_tail()}"
    )


@contextlib.asynccontextmanager
async def ours(target: Address, workdir: Path) -> AsyncIterator[Endpoint]:
    """Our tunnel: ``tunnel-server run`` + one joined ``edge-agent run`` + the node proxy.

    Clients speak HTTPS to the server (verified against its CA, like chisel's ``--tls-ca``);
    the server carries each request as one stream over the agent's WSS + mTLS session; the
    agent dials ``bench = "<target>"`` from its allow-list. TLS is on for both hops that have
    a peer: client -> server and agent -> server.
    """
    folder = workdir / "ours"
    folder.mkdir(mode=0o700)
    data_dir = folder / "server"
    port = free_port()
    async with running("ours-server", server_argv(data_dir, port), workdir) as server:
        ca_file = data_dir / "ca.crt"
        await wait_server_ready(port, ca_file, READY_TIMEOUT_S, server)
        admin = (data_dir / "admin-token").read_text().strip()
        node = "bench-node"
        server_cli = tunnel_bin("tunnel-server")
        token = await _cli(
            [server_cli, "token", "create", "--kind", "node", "--name", node,
             "--data-dir", str(data_dir)],
            "tunnel-server token create",
        )  # fmt: skip
        ca_hash = await _cli(
            [server_cli, "ca-hash", "--data-dir", str(data_dir)], "tunnel-server ca-hash"
        )
        agent_dir = folder / "agent"
        agent_cli = tunnel_bin("edge-agent")
        await _cli(
            [agent_cli, "join", "--server", f"https://127.0.0.1:{port}", "--token", token,
             "--ca-hash", ca_hash, "--name", node, "--data-dir", str(agent_dir)],
            "edge-agent join",
        )  # fmt: skip
        config = folder / "agent.toml"
        config.write_text(f'[tunnel]\nbackoff_cap = 2.0\n\n[tunnel.targets]\nbench = "{target}"\n')
        agent_argv = [
            agent_cli, "run", "--config", str(config), "--data-dir", str(agent_dir),
            "--local-api-port", str(free_port()),
        ]  # fmt: skip
        async with running("ours-agent", agent_argv, workdir) as agent:
            endpoint = Endpoint(
                base_url=f"https://127.0.0.1:{port}/api/v1/nodes/{node}/proxy/bench",
                headers={"Authorization": f"Bearer {admin}"},
                ca_file=ca_file,
                cpu_pids=(server.pid, agent.pid),
                info={
                    "transport": "client -> server HTTPS (verified CA); agent -> server WSS "
                    "with mTLS; one tunnel stream per request"
                },
            )
            await wait_until_served(endpoint, READY_TIMEOUT_S, server, agent)
            yield endpoint


def paths(ssh_cipher: str | None = None) -> dict[str, PathFactory]:
    """Every path ``--paths`` accepts, by name, in the order they are reported."""
    return {
        "direct": direct,
        "ours": ours,
        "ssh": ssh_path(ssh_cipher),
        "ssh-aesgcm": ssh_path("aes128-gcm@openssh.com"),
        "chisel": chisel_path(tls=True),
        "chisel-plain": chisel_path(tls=False),
    }


LABELS = {
    "direct": "direct TCP",
    "ours": "our tunnel (WSS + mTLS)",
    "ssh": "`ssh -R` (OpenSSH, default cipher)",
    "ssh-aesgcm": "`ssh -R` (OpenSSH, aes128-gcm)",
    "chisel": "chisel (TLS)",
    "chisel-plain": "chisel (no TLS)",
}
