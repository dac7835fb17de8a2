"""The "Upgrade" section of docs/install.md, run: the previous release's data folders, this code.

The previous release (`PREVIOUS`, a commit of this repository) is unpacked with ``git
archive`` and run for real: its ``tunnel-server`` and ``edge-agent`` (the shared venv's entry
points with PYTHONPATH on the old tree) make the data folders an operator has today: a joined
agent with device twins on a real mosquitto, an onboarded device that reported, a desired
value the cloud set, a user and its token, a bootstrap token. Both are stopped, the server's
folder is backed up with ``tunnel-server backup`` as the doc says, and this tree's daemons are
started on the same folders. Then everything must be there and work: the node's session
resumes with the identity it had (no join), the device reports again and both twin sections'
versions continue from where they were, under the same sync origins (the twin databases were
kept, not recreated), the user's token still works, and every database carries this release's
schema version. A database from a newer release is refused untouched.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import http.client
import io
import json
import os
import shutil
import sqlite3
import ssl
import subprocess
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from daemon_support.schema import version_of
from edge_agent.kubecache import table
from edge_agent.twins import twin_store
from edge_agent.twins.simulator import DeviceCredential, SimulatedDevice, claim_device
from tests.harness import mqtt
from tests.harness.daemons import BIN, REPO, write_agent_config
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually
from tunnel_server.audit import log_store
from tunnel_server.store import SCHEMA_VERSION as STORE_SCHEMA_VERSION
from tunnel_server.twins import model_store
from tunnel_server.twins import store as cloud_twin_store

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(600)]

PREVIOUS = "add43a5"
"""The previous release's commit: the data folders it writes are what an upgrade starts from.
Move it forward at each release (the oldest release an upgrade must start from)."""

NODE = "upgrade-1"
DEVICE = "thermo-1"
TIMEOUT = 60.0  # a guard against hangs on a busy CI machine, not a measurement


@dataclass(frozen=True, kw_only=True)
class Release:
    """One tree of the code; its daemons and CLIs run from the shared venv on that tree."""

    tree: Path

    @property
    def env(self) -> dict[str, str]:
        return {"PYTHONPATH": str(self.tree)}

    def cli(self, program: str, *args: str | Path) -> str:
        done = subprocess.run(
            [str(BIN / program), *map(str, args)],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            env={**os.environ, **self.env},
            stdin=subprocess.DEVNULL,
            check=False,
        )
        if done.returncode != 0:
            raise ServiceError(f"{program} {args} failed ({done.returncode}): {done.stderr}")
        return done.stdout


@dataclass(kw_only=True)
class Folders:
    """The two data folders and everything that runs on them, whatever the release."""

    workdir: Path
    broker: mqtt.Broker
    port: int = field(default_factory=free_port)
    local_api_port: int = field(default_factory=free_port)
    server: ManagedProcess | None = None
    agent: ManagedProcess | None = None

    @property
    def server_dir(self) -> Path:
        return self.workdir / "server"

    @property
    def agent_dir(self) -> Path:
        return self.workdir / "agent"

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def admin_token(self) -> str:
        return (self.server_dir / "admin-token").read_text().strip()

    def remote(self, release: Release, *args: str) -> str:
        """A management command over the API, as an operator runs it on the server machine."""
        return release.cli(
            "tunnel-server",
            *args,
            "--server",
            self.url,
            "--token",
            self.admin_token,
            "--ca-file",
            self.server_dir / "ca.crt",
        )

    def start_server(self, release: Release, label: str) -> None:
        self.server = ManagedProcess(
            f"tunnel-server[{label}]",
            [
                str(BIN / "tunnel-server"),
                "run",
                "--listen",
                f"127.0.0.1:{self.port}",
                "--data-dir",
                str(self.server_dir),
                "--public-name",
                "127.0.0.1",
            ],
            log_path=self.workdir / f"tunnel-server-{label}.log",
            env=release.env,
        )
        eventually(
            self._server_ready,
            lambda status: status == 200,
            what=f"tunnel-server ({label}) ready",
            within=TIMEOUT,
            ignore=(OSError, http.client.HTTPException),
        )

    def write_agent_config(self) -> Path:
        secrets = self.workdir / "secrets"
        secrets.mkdir(mode=0o700, exist_ok=True)
        (secrets / "admin").write_text(f"{self.broker.admin_password}\n")
        (secrets / "claim").write_text("claim-password-upgrade\n")
        return write_agent_config(
            self.workdir / "edge-agent.toml",
            {
                "tunnel": {"backoff_base": 0.2, "backoff_cap": 2.0},
                "twins": {
                    "enabled": True,
                    "broker_host": self.broker.host,
                    "broker_port": self.broker.port,
                    "admin_password_file": secrets / "admin",
                    "claim_username": "claim-upgrade",
                    "claim_password_file": secrets / "claim",
                    "agent_username": "agent-upgrade",
                    "agent_client_id": "agent-upgrade",
                    "durability": "full",
                },
            },
        )

    def start_agent(self, release: Release, label: str) -> None:
        self.agent = ManagedProcess(
            f"edge-agent[{label}]",
            [
                str(BIN / "edge-agent"),
                "run",
                "--config",
                str(self.write_agent_config()),
                "--data-dir",
                str(self.agent_dir),
                "--local-api-port",
                str(self.local_api_port),
            ],
            log_path=self.workdir / f"edge-agent-{label}.log",
            env=release.env,
        )
        try:
            eventually(
                self._agent_ready,
                lambda s: (
                    bool(s["tunnel"]["connected"])
                    and bool(s["twins"]["ready"])
                    and bool(s["twins"]["sync"]["connected"])
                ),
                what=f"edge-agent ({label}) connected, twins ready and syncing",
                within=TIMEOUT,
                ignore=(OSError, ValueError, KeyError, TypeError),
            )
        except NotSeen as error:
            assert self.agent is not None
            raise ServiceError(f"{error}\n{self.agent.tail()}") from error

    # A crash ends a wait at once, with its log: each probe checks the process first.

    def _server_ready(self) -> int:
        assert self.server is not None
        self.server.check_running()
        return self.api("GET", "/readyz")[0]

    def _agent_ready(self) -> dict[str, Any]:
        assert self.agent is not None
        self.agent.check_running()
        return self.agent_status()

    def agent_status(self) -> dict[str, Any]:
        return self.local("/status")

    def local(self, path: str) -> dict[str, Any]:
        """A GET on the agent's local API."""
        connection = http.client.HTTPConnection("127.0.0.1", self.local_api_port, timeout=10)
        try:
            connection.request("GET", path)
            answer: dict[str, Any] = json.loads(connection.getresponse().read())
            return answer
        finally:
            connection.close()

    def api(
        self, method: str, path: str, body: object = None, *, token: str | None = None
    ) -> tuple[int, dict[str, Any]]:
        context = ssl.create_default_context(cafile=str(self.server_dir / "ca.crt"))
        connection = http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=context, timeout=15
        )
        headers = {"Content-Type": "application/json"}
        if path != "/readyz":
            headers["Authorization"] = f"Bearer {token or self.admin_token}"
        try:
            data = None if body is None else json.dumps(body).encode()
            connection.request(method, path, body=data, headers=headers)
            answer = connection.getresponse()
            raw = answer.read()
            return answer.status, (json.loads(raw) if raw.startswith(b"{") else {})
        finally:
            connection.close()

    def cloud_twin(self) -> dict[str, Any]:
        status, body = self.api("GET", f"/api/v1/devices/{NODE}:{DEVICE}/twin")
        assert status == 200, body
        return body

    def stop(self) -> None:
        for process in (self.agent, self.server):
            if process is not None:
                process.stop()
        self.agent = self.server = None


async def _report(folders: Folders, credential: DeviceCredential, value: float) -> None:
    async with SimulatedDevice(
        host=folders.broker.host, port=folders.broker.port, credential=credential
    ) as device:
        answer = await device.report({"temperature": value})
        assert answer["code"] == 200, answer


def _digests(folder: Path, names: tuple[str, ...]) -> dict[str, str]:
    return {n: hashlib.sha256((folder / n).read_bytes()).hexdigest() for n in names}


def _identity_files(agent_dir: Path) -> tuple[str, ...]:
    identity = json.loads((agent_dir / "identity.json").read_text())
    named = tuple(
        str(v) for v in identity.values() if isinstance(v, str) and (agent_dir / v).is_file()
    )
    return ("identity.json", *named)


@dataclass(frozen=True, kw_only=True)
class Before:
    """What the previous release left, as read while it ran."""

    twin: dict[str, Any]
    edge_origin: str
    cloud_origin: str
    identity: dict[str, str]
    identity_meta: dict[str, Any]
    """identity.json as the previous release wrote it."""
    user_token: str
    credential: DeviceCredential
    archive: Path
    versions: dict[str, int]
    """Schema versions the previous release left in its files."""


@dataclass(frozen=True, kw_only=True)
class Upgraded:
    folders: Folders
    before: Before
    current: Release


def _unpack_previous(target: Path) -> Release:
    archive = subprocess.run(
        ["git", "-C", str(REPO), "archive", "--format=tar", PREVIOUS],
        capture_output=True,
        timeout=TIMEOUT,
        check=True,
    ).stdout
    target.mkdir()
    with tarfile.open(fileobj=io.BytesIO(archive)) as tar:
        tar.extractall(target, filter="data")
    return Release(tree=target)


def _run_previous_release(folders: Folders, old: Release) -> Before:
    folders.start_server(old, "previous")
    token = folders.remote(old, "token", "create", "--kind", "node", "--name", NODE).strip()
    ca_hash = old.cli("tunnel-server", "ca-hash", "--data-dir", folders.server_dir).strip()
    old.cli(
        "edge-agent", "join", "--server", folders.url, "--token", token,
        "--ca-hash", ca_hash, "--name", NODE, "--data-dir", folders.agent_dir,
    )  # fmt: skip
    folders.start_agent(old, "previous")
    credential = asyncio.run(
        claim_device(
            host=folders.broker.host,
            port=folders.broker.port,
            claim_username="claim-upgrade",
            claim_password="claim-password-upgrade",
            device_id=DEVICE,
            model="thermostat",
        )
    )
    asyncio.run(_report(folders, credential, 19.5))
    status, body = folders.api(
        "PATCH", f"/api/v1/devices/{NODE}:{DEVICE}/twin", {"desired": {"setpoint": 21.0}}
    )
    assert status == 200, body
    twin = eventually(
        folders.cloud_twin,
        lambda t: t["reported"].get("temperature") == 19.5,
        what="the report in the cloud's twin",
        within=TIMEOUT,
    )
    eventually(
        lambda: folders.local("/twins/" + DEVICE),
        lambda t: t["desired"].get("setpoint") == 21.0,
        what="the desired value at the edge",
        within=TIMEOUT,
    )
    eventually(
        folders.agent_status,
        lambda s: s["twins"]["outbox"] == 0,
        what="the agent's outbox drained",
        within=TIMEOUT,
    )
    user_token = folders.remote(old, "users", "create", "alice", "--role", "operator").strip()
    folders.remote(old, "token", "create", "--kind", "node", "--name", "spare-node")
    edge = folders.agent_status()["twins"]
    cloud_db = sqlite3.connect(f"file:{folders.server_dir / 'twins.sqlite3'}?mode=ro", uri=True)
    with contextlib.closing(cloud_db):
        cloud_boot = cloud_db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0]
    folders.stop()
    versions = {
        "agent twins": version_of(folders.agent_dir / "twins" / "twins.sqlite3"),
        "cloud twins": version_of(folders.server_dir / "twins.sqlite3"),
        "audit": version_of(folders.server_dir / log_store.AUDIT_FILE),
        "store": version_of(folders.server_dir / "store.db"),
    }
    # The doc's second step: a backup of the server's folder before the new release starts.
    archive = folders.workdir / "before-upgrade.tar.gz"
    old.cli("tunnel-server", "backup", "--data-dir", folders.server_dir, "--out", archive)
    return Before(
        twin=twin,
        edge_origin=str(edge["origin"]),
        cloud_origin=f"cloud.{cloud_boot}",
        identity=_digests(folders.agent_dir, _identity_files(folders.agent_dir)),
        identity_meta=json.loads((folders.agent_dir / "identity.json").read_text()),
        user_token=user_token,
        credential=credential,
        archive=archive,
        versions=versions,
    )


@pytest.fixture(scope="module")
def upgraded(
    mqtt_dynsec_broker: mqtt.Broker, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Upgraded]:
    workdir = tmp_path_factory.mktemp("upgrade")
    old = _unpack_previous(workdir / "previous-release")
    folders = Folders(workdir=workdir, broker=mqtt_dynsec_broker)
    current = Release(tree=REPO)
    try:
        before = _run_previous_release(folders, old)
        folders.start_server(current, "current")
        folders.start_agent(current, "current")
        yield Upgraded(folders=folders, before=before, current=current)
    finally:
        folders.stop()


def test_the_node_resumes_its_session_without_a_join(upgraded: Upgraded) -> None:
    folders = upgraded.folders
    agent_dir = folders.agent_dir
    assert len(upgraded.before.identity) >= 3, "identity.json, the key and the certificate"
    nodes = json.loads(folders.remote(upgraded.current, "nodes", "list", "-o", "json"))
    by_name = {n["name"]: n for n in nodes["items"]}
    eventually(
        lambda: json.loads(folders.remote(upgraded.current, "nodes", "list", "-o", "json")),
        lambda listed: {n["name"]: n["status"] for n in listed["items"]}.get(NODE) == "online",
        what="the node online on the upgraded server",
        within=TIMEOUT,
    )
    # The same key and certificate. identity.json names them as before and, since the first
    # session, records the certificate's validity for its bytes, which the previous release
    # did not (edge_agent/identity.py: a running agent reads it instead of parsing the file).
    after = _digests(agent_dir, _identity_files(agent_dir))
    before = upgraded.before.identity
    assert {n: after[n] for n in before if n != "identity.json"} == {
        n: d for n, d in before.items() if n != "identity.json"
    }
    meta = json.loads((agent_dir / "identity.json").read_text())
    record = meta.pop("certificate")
    assert meta == upgraded.before.identity_meta
    assert record["sha256"] == after[meta["cert_file"]]
    assert by_name[NODE]["kind"] == "node"
    tokens = json.loads(folders.remote(upgraded.current, "token", "list", "-o", "json"))
    assert "spare-node" in {t["name"] for t in tokens["items"]}


def test_the_user_token_still_works(upgraded: Upgraded) -> None:
    status, me = upgraded.folders.api("GET", "/api/v1/me", token=upgraded.before.user_token)
    assert status == 200, me
    assert (me["user"], me["role"]) == ("alice", "operator")


def test_the_device_reports_again_and_the_twin_versions_continue(upgraded: Upgraded) -> None:
    folders, before = upgraded.folders, upgraded.before
    twin = folders.cloud_twin()
    assert twin["reported"]["temperature"] == 19.5
    assert twin["desired"]["setpoint"] == 21.0
    old_reported = before.twin["reported"]["$version"]
    old_desired = twin["desired"]["$version"]
    asyncio.run(_report(folders, before.credential, 20.5))
    after = eventually(
        folders.cloud_twin,
        lambda t: t["reported"].get("temperature") == 20.5,
        what="the new report in the cloud's twin",
        within=TIMEOUT,
    )
    assert after["reported"]["$version"] == old_reported + 1
    status, body = folders.api(
        "PATCH", f"/api/v1/devices/{NODE}:{DEVICE}/twin", {"desired": {"setpoint": 22.0}}
    )
    assert status == 200, body
    assert body["desired"]["$version"] == old_desired + 1
    # The twin databases were kept: the same sync origins on both sides.
    assert before.edge_origin.startswith(f"{NODE}.")
    assert folders.agent_status()["twins"]["origin"] == before.edge_origin
    cloud_db = sqlite3.connect(f"file:{folders.server_dir / 'twins.sqlite3'}?mode=ro", uri=True)
    with contextlib.closing(cloud_db):
        boot = cloud_db.execute("SELECT value FROM meta WHERE key = 'boot'").fetchone()[0]
    assert f"cloud.{boot}" == before.cloud_origin


def test_every_database_carries_this_release_s_schema_version(upgraded: Upgraded) -> None:
    # The previous release wrote no version into the twin databases: they were recognised
    # by their tables and stamped 1 (and kept, as the other tests show).
    assert upgraded.before.versions == {
        "agent twins": 0,
        "cloud twins": 0,
        "audit": 1,
        "store": STORE_SCHEMA_VERSION,
    }
    server, agent = upgraded.folders.server_dir, upgraded.folders.agent_dir
    expected = {
        agent / "twins" / "twins.sqlite3": twin_store.SCHEMA.version,
        server / "twins.sqlite3": cloud_twin_store.SCHEMA.version,
        server / log_store.AUDIT_FILE: log_store.SCHEMA.version,
        server / "store.db": STORE_SCHEMA_VERSION,
    }
    if (server / model_store.MODELS_FILE).exists():
        expected[server / model_store.MODELS_FILE] = model_store.SCHEMA.version
    assert {path: version_of(path) for path in expected} == expected
    assert table.SCHEMA.version == 1  # no kube cache in this agent: checked in unit tests


def test_the_backup_taken_before_the_upgrade_holds_the_old_folder(upgraded: Upgraded) -> None:
    with tarfile.open(upgraded.before.archive) as archive:
        names = set(archive.getnames())
    assert {"manifest.json", "ca.key", "store.db", "twins.sqlite3", "audit.db"} <= names


@dataclass(frozen=True, kw_only=True)
class Refusal:
    database: Path
    digest: str
    done: subprocess.CompletedProcess[str]
    version: int


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module", params=["edge-agent", "tunnel-server"])
def refusal(
    upgraded: Upgraded, request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Refusal:
    """A copy of a data folder whose twin database a newer release migrated, started."""
    folders, program = upgraded.folders, str(request.param)
    copy = tmp_path_factory.mktemp("newer") / "data"
    if program == "edge-agent":
        shutil.copytree(folders.agent_dir, copy)
        database, version = copy / "twins" / "twins.sqlite3", twin_store.SCHEMA.version + 1
        args = ["--config", str(folders.write_agent_config()), "--local-api-port"]
    else:
        shutil.copytree(folders.server_dir, copy)
        database, version = copy / "twins.sqlite3", cloud_twin_store.SCHEMA.version + 1
        args = ["--public-name", "127.0.0.1", "--listen"]
    args += [f"127.0.0.1:{free_port()}" if program == "tunnel-server" else str(free_port())]
    with contextlib.closing(sqlite3.connect(database, isolation_level=None)) as db:
        db.execute(f"PRAGMA user_version = {version}")
    digest = _sha256(database)
    done = subprocess.run(
        [str(BIN / program), "run", "--data-dir", str(copy), *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,  # a daemon that went on serving would hang here: a failure
        env={**os.environ, **upgraded.current.env},
        stdin=subprocess.DEVNULL,
        check=False,
    )
    return Refusal(database=database, digest=digest, done=done, version=version)


def test_a_database_from_a_newer_release_is_refused_untouched(refusal: Refusal) -> None:
    """Going back is not possible once a newer release migrated a file: the doc says restore."""
    done = refusal.done
    assert done.returncode != 0, done.stderr
    assert f"schema version {refusal.version}, newer than" in done.stderr, done.stderr
    assert "restore the backup taken before the upgrade" in done.stderr
    assert _sha256(refusal.database) == refusal.digest


def test_the_refusal_is_one_line_and_exit_2(refusal: Refusal) -> None:
    """Exit 2: systemd's RestartPreventExitStatus=2 must not restart it in a loop."""
    assert "Traceback" not in refusal.done.stderr
    assert refusal.done.returncode == 2
