"""The .deb packages in a fresh Debian root: install, join, upgrade, reinstall, remove, purge.

packaging/deb/build makes two versions of both packages (the previous and the new); they are
installed with dpkg into a debootstrap root (cached tarball, packaging/deb/debian-root) that has
only what Debian's minbase and the packages' dependencies bring. The server runs from its
package in the root as its service user, and the agent, joined once as root with its files then
handed to its user (docs/install.md), runs from its package with the shipped config, as its
service user. Needs root (chroot, mount).
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import ssl
import subprocess
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.harness.procs import free_port
from tests.harness.waiting import NotSeen, eventually
from tests.integration.packaging.debian_root import REPO, DebianRoot, cached_tarball, fresh_root

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: debootstrap, chroot and mount"),
    # Cold: debootstrap (~2 min) and two builds; warm: the builds and the root's lifecycle.
    pytest.mark.timeout(1800),
]

UPSTREAM = re.search(r'__version__ = "([^"]+)"', (REPO / "edge_agent" / "__init__.py").read_text())[
    1
]  # type: ignore[index]
OLD, NEW = f"{UPSTREAM}-1", f"{UPSTREAM}-2"
NAMES = ("edge-agent", "tunnel-server")
IDENTITY = (".key", ".crt", ".json")
"""The agent's identity files at the top of its data folder (edge_agent/identity.py)."""
WAIT = 60.0
"""Seconds for the server or agent to come up in the root (a loaded 2-core CI machine)."""


def _start_build(version: str, out: Path, *, lintian: bool) -> subprocess.Popen[str]:
    argv = [str(REPO / "packaging" / "deb" / "build"), "--version", version, "--out", str(out)]
    if not lintian:
        argv.append("--no-lintian")
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _finish_build(build: subprocess.Popen[str]) -> dict[str, Path]:
    stdout, stderr = build.communicate(timeout=1200)
    assert build.returncode == 0, stderr[-6000:]
    debs = {Path(line).name.split("_")[0]: Path(line) for line in stdout.split()}
    assert set(debs) == set(NAMES), stdout
    return debs


@pytest.fixture(scope="module")
def debs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, dict[str, Path]]:
    # Both builds at once (each is mostly one process at a time). The new build is the one
    # checked by lintian: the build fails on any lintian warning or error.
    builds = {
        OLD: _start_build(OLD, tmp_path_factory.mktemp("old"), lintian=False),
        NEW: _start_build(NEW, tmp_path_factory.mktemp("new"), lintian=True),
    }
    try:
        return {version: _finish_build(build) for version, build in builds.items()}
    finally:
        for build in builds.values():
            if build.poll() is None:
                build.kill()
                build.wait()


@pytest.fixture
def root(tmp_path: Path) -> Iterator[DebianRoot]:
    with fresh_root(cached_tarball(), tmp_path / "root") as made:
        yield made


def _wait(
    what: str, check: Callable[[], bool], process: subprocess.Popen[bytes], log: Path
) -> None:
    def probe() -> bool:
        assert process.poll() is None, f"{what}: exited {process.returncode}\n{log.read_text()}"
        return check()

    try:
        eventually(probe, what=what, within=WAIT, every=0.1)
    except NotSeen as missing:
        raise AssertionError(f"{missing}\n{log.read_text()[-4000:]}") from None


def _dpkg(root: DebianRoot, *args: str) -> None:
    root.run("dpkg", "--force-confold", *args)


def _install(root: DebianRoot, debs: dict[str, Path]) -> None:
    for deb in debs.values():
        (root.path / "tmp" / deb.name).write_bytes(deb.read_bytes())
    # The root's own /tmp, seen from inside the chroot.
    _dpkg(root, "-i", *(f"/tmp/{deb.name}" for deb in debs.values()))  # noqa: S108


def _status(root: DebianRoot, name: str) -> str:
    return root.run("dpkg-query", "-W", "-f=${Status} ${Version}", name, check=False)


def _digest(root: DebianRoot, folder: str) -> dict[str, str]:
    base = root.file(folder)
    return {
        str(p.relative_to(base)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(base.rglob("*"))
        if p.is_file() and p.suffix not in (".log", "-wal", "-shm")
    }


class PackagedSystem:
    """The packaged server and agent in the root, on free loopback ports."""

    def __init__(self, root: DebianRoot, logs: Path) -> None:
        self.root = root
        self.logs = logs
        self.port = free_port()
        self.api_port = free_port()

    @contextlib.contextmanager
    def server(self) -> Iterator[subprocess.Popen[bytes]]:
        log = self.logs / "tunnel-server.log"
        ca = self.root.file("/var/lib/tunnel-server/ca.crt")
        with self.root.daemon(
            *("tunnel-server", "run", "--data-dir", "/var/lib/tunnel-server"),
            *("--listen", f"127.0.0.1:{self.port}", "--public-name", "127.0.0.1"),
            user="tunnel-server",
            log=log,
        ) as process:

            def ready() -> bool:
                if not ca.exists():
                    return False
                context = ssl.create_default_context(cafile=str(ca))
                url = f"https://127.0.0.1:{self.port}/readyz"
                try:
                    with urllib.request.urlopen(url, timeout=2, context=context) as answer:
                        return int(answer.status) == 200
                except OSError:
                    return False

            _wait("tunnel-server ready", ready, process, log)
            yield process

    @contextlib.contextmanager
    def agent(self) -> Iterator[subprocess.Popen[bytes]]:
        log = self.logs / "edge-agent.log"
        with self.root.daemon(
            *("edge-agent", "run", "--config", "/etc/edgefleet/edge-agent.toml"),
            *("--local-api-port", str(self.api_port)),
            user="edge-agent",
            log=log,
        ) as process:

            def connected() -> bool:
                url = f"http://127.0.0.1:{self.api_port}/status"
                try:
                    with urllib.request.urlopen(url, timeout=2) as answer:
                        return bool(json.loads(answer.read())["tunnel"]["connected"])
                except OSError:
                    return False

            _wait("edge-agent connected", connected, process, log)
            yield process

    def node(self, name: str) -> dict[str, object]:
        out = self.root.run(
            "tunnel-server",
            "nodes",
            "--json",
            "--data-dir",
            "/var/lib/tunnel-server",
            user="tunnel-server",
        )
        nodes: dict[str, dict[str, object]] = {n["name"]: n for n in json.loads(out)}
        return nodes[name]


def _check_installed(root: DebianRoot, version: str) -> None:
    for name in NAMES:
        assert _status(root, name) == f"install ok installed {version}"
        assert root.run(name, "--version").split() == [name, UPSTREAM]
        link = root.file(f"/usr/bin/{name}").readlink()
        assert str(link) == f"/opt/edgefleet/{name}/bin/{name}"
        entry = root.run("getent", "passwd", name).strip().split(":")
        assert entry[5:] == [f"/var/lib/{name}", "/usr/sbin/nologin"], entry
        state = root.file(f"/var/lib/{name}").stat()
        assert (state.st_uid, state.st_mode & 0o777) == (int(entry[2]), 0o700)
        unit = root.file(f"/lib/systemd/system/{name}.service").read_text()
        assert unit == (REPO / "packaging" / "systemd" / f"{name}.service").read_text()
    conffiles = root.run("dpkg-query", "-W", "-f=${Conffiles}", "edge-agent")
    assert "/etc/edgefleet/edge-agent.toml" in conffiles
    conffiles = root.run("dpkg-query", "-W", "-f=${Conffiles}", "tunnel-server")
    assert "/etc/edgefleet/tunnel-server.env" in conffiles


def test_install_join_upgrade_remove_purge(
    debs: dict[str, dict[str, Path]], root: DebianRoot, tmp_path: Path
) -> None:
    # Install the previous build: users, state folders, links, units, conffiles.
    _install(root, debs[OLD])
    _check_installed(root, OLD)
    # Maintainer scripts are idempotent: configuring again changes nothing and fails nowhere.
    for name in NAMES:
        root.run(f"/var/lib/dpkg/info/{name}.postinst", "configure", OLD)
    _check_installed(root, OLD)
    # A config error exits 2, the status the units do not restart on (RestartPreventExitStatus).
    root.file("/etc/edgefleet/broken.toml").write_text("[tunnel]\nbackof_cap = 1\n")
    config_error = root.rc(
        "edge-agent", "run", "--config", "/etc/edgefleet/broken.toml", user="edge-agent"
    )
    assert config_error == 2
    root.file("/etc/edgefleet/broken.toml").unlink()

    # The agent joins the packaged server: the join once as root, then its files are handed
    # to the service user, which runs the agent with the shipped config.
    system = PackagedSystem(root, tmp_path)
    with system.server():
        token = root.run(
            *("tunnel-server", "token", "create", "--kind", "node", "--name", "pkg-node"),
            *("--data-dir", "/var/lib/tunnel-server"),
            user="tunnel-server",
        ).strip()
        ca_hash = root.run(
            "tunnel-server",
            "ca-hash",
            "--data-dir",
            "/var/lib/tunnel-server",
            user="tunnel-server",
        ).strip()
        root.run(
            *("edge-agent", "join", "--server", f"https://127.0.0.1:{system.port}"),
            *("--token", token, "--ca-hash", ca_hash, "--name", "pkg-node"),
        )
        root.run("chown", "-R", "edge-agent:edge-agent", "/var/lib/edge-agent")
        with system.agent():
            assert system.node("pkg-node")["agentVersion"] == UPSTREAM
    agent_state = _digest(root, "/var/lib/edge-agent")
    server_ca = _digest(root, "/var/lib/tunnel-server")
    assert "ca.crt" in server_ca, server_ca

    # The operator's change to a conffile survives the upgrade.
    config = root.file("/etc/edgefleet/edge-agent.toml")
    config.write_text(
        config.read_text().replace("# reconnect_spread = 15.0", "reconnect_spread = 5.0")
    )
    edited = config.read_text()
    assert "\nreconnect_spread = 5.0\n" in edited

    # Upgrade: previous build -> new; the state is untouched and the agent reconnects without
    # joining again.
    _install(root, debs[NEW])
    _check_installed(root, NEW)
    assert config.read_text() == edited
    identity = {k: v for k, v in agent_state.items() if "/" not in k and k.endswith(IDENTITY)}
    assert "identity.json" in identity, agent_state
    after = _digest(root, "/var/lib/edge-agent")
    assert {k: after.get(k) for k in identity} == identity
    for name in ("ca.crt", "ca.key"):
        if name in server_ca:
            assert _digest(root, "/var/lib/tunnel-server")[name] == server_ca[name]
    with system.server(), system.agent():
        assert system.node("pkg-node")["name"] == "pkg-node"

    # Reinstalling the same version is fine too.
    _install(root, debs[NEW])
    _check_installed(root, NEW)

    # Remove: the programs go, the state and the config stay.
    state_before = {name: _digest(root, f"/var/lib/{name}") for name in NAMES}
    _dpkg(root, "-r", *NAMES)
    for name in NAMES:
        assert _status(root, name).startswith("deinstall ok config-files")
        assert not root.file(f"/usr/bin/{name}").exists()
        assert not root.file(f"/opt/edgefleet/{name}").exists()
        assert _digest(root, f"/var/lib/{name}") == state_before[name]
    assert config.read_text() == edited

    # Purge: state and config go; the users stay (Debian's convention for system users).
    _dpkg(root, "-P", *NAMES)
    for name in NAMES:
        assert not root.file(f"/var/lib/{name}").exists()
        assert root.rc("getent", "passwd", name) == 0
    assert not root.file("/etc/edgefleet").exists()
    assert not root.file("/opt/edgefleet").exists()
