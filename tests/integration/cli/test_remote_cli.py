"""The remote CLI against a real ``tunnel-server run`` over HTTPS, from another folder.

The client side runs in its own working folder with its own ``$HOME`` and
``$XDG_CONFIG_HOME``: it never sees the server's data dir. It learns the server by
``tunnel-server login --ca-hash`` (then the login config), by ``--server/--token/--ca-file``
flags, or by ``EDGEFLEET_TOKEN``. Exit codes are docs/cli.md's.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.harness.daemons import Server, command
from tests.harness.procs import free_port

BIN = Path(sys.executable).parent
TIMEOUT = 60.0
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\S+Z (DEBUG|INFO|WARNING) +\S+: ")
_BOOTSTRAP = re.compile(r"[a-z0-9]{6}\.[a-z0-9]{16}")
ZERO_HASH = "sha256:" + "0" * 64


@dataclass(frozen=True, kw_only=True)
class Done:
    rc: int
    stdout: str
    stderr: str

    def error_line(self) -> str:
        """The one line that is not a log line; no traceback."""
        assert "Traceback" not in self.stderr, self.stderr
        lines = [line for line in self.stderr.splitlines() if not _LOG_LINE.match(line)]
        assert len(lines) == 1, self.stderr
        return lines[0]

    def json(self) -> Any:
        assert self.rc == 0, self.stderr
        return json.loads(self.stdout)


@dataclass(frozen=True, kw_only=True)
class Client:
    """A machine of an operator: its own folder and config, nothing of the server's."""

    home: Path
    server: Server

    @property
    def config_file(self) -> Path:
        return self.home / "config" / "edgefleet" / "cli.yaml"

    def run(self, *args: str | Path, env: dict[str, str] | None = None) -> Done:
        environment = {
            key: value
            for key, value in os.environ.items()
            if not key.startswith(("EDGEFLEET_TOKEN", "XDG_"))
        }
        environment |= {"HOME": str(self.home), "XDG_CONFIG_HOME": str(self.home / "config")}
        environment |= env or {}
        done = subprocess.run(
            [BIN / "tunnel-server", *[str(a) for a in args]],
            capture_output=True,
            text=True,
            timeout=TIMEOUT,
            cwd=self.home,
            env=environment,
            stdin=subprocess.DEVNULL,
            check=False,
        )
        return Done(rc=done.returncode, stdout=done.stdout, stderr=done.stderr)

    def ok(self, *args: str | Path) -> str:
        done = self.run(*args)
        assert done.rc == 0, f"{args}: {done.stderr}"
        return done.stdout

    def login(self, token: str | None = None) -> None:
        token = token or self.server.admin_token
        self.ok("login", "--server", self.server.url, "--ca-hash", self.server.ca_hash,
                "--token", token)  # fmt: skip


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Server]:
    running = Server(workdir=tmp_path_factory.mktemp("remote-cli"))
    running.start()
    try:
        yield running
    finally:
        running.stop()


@pytest.fixture
def client(server: Server, tmp_path: Path) -> Client:
    home = tmp_path / "operator"
    home.mkdir()
    return Client(home=home, server=server)


@pytest.fixture
def logged_in(client: Client) -> Client:
    client.login()
    return client


def api(server: Server, path: str) -> Any:
    status, body = server.get(path, token=server.admin_token)
    assert status == 200, body
    return json.loads(body)


def pending_node(server: Server, tmp_path: Path, name: str, *, kind: str = "node") -> None:
    """A node (or cluster agent) that asked to join and waits for approval."""
    token = server.cli(
        "token", "create", "--kind", kind, "--name", name, "--require-approval"
    ).strip()
    done = subprocess.run(
        [BIN / "edge-agent", "join", "--server", server.url, "--token", token,
         "--ca-hash", server.ca_hash, "--name", name, "--data-dir", tmp_path / name,
         "--wait-approval", "0.5"],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr  # pending: `edge-agent join` says to run it again


# ---------------------------------------------------------------- login and the config file


def test_login_pins_the_ca_and_saves_a_private_config(client: Client) -> None:
    client.login()
    assert client.config_file.stat().st_mode & 0o777 == 0o600
    saved = yaml.safe_load(client.config_file.read_text())
    assert saved["server"] == client.server.url
    assert saved["ca"].encode() == client.server.ca_pem
    me = client.run("whoami", "-o", "json").json()
    assert me == api(client.server, "/api/v1/me")
    assert me["role"] == "admin"
    table = client.ok("whoami")
    assert table.splitlines()[0].split() == ["USER", "ROLE", "CLUSTERS", "EXPIRES"]


def test_login_with_the_wrong_ca_hash_sends_no_token(client: Client) -> None:
    done = client.run("login", "--server", client.server.url, "--ca-hash", ZERO_HASH,
                      "--token", client.server.admin_token)  # fmt: skip
    assert done.rc == 7
    line = done.error_line()
    assert f"not the {ZERO_HASH} given" in line
    assert client.server.ca_hash in line
    assert not client.config_file.exists()


def test_login_with_a_wrong_token_is_refused(client: Client) -> None:
    done = client.run("login", "--server", client.server.url, "--ca-hash",
                      client.server.ca_hash, "--token", "nope")  # fmt: skip
    assert done.rc == 3
    assert "invalid_token" in done.error_line()
    assert not client.config_file.exists()


def test_logout_forgets_the_login(logged_in: Client) -> None:
    assert "logged out" in logged_in.ok("logout")
    assert not logged_in.config_file.exists()
    done = logged_in.run("whoami")
    assert done.rc == 2
    assert "tunnel-server login" in done.error_line()


def test_without_login_nothing_is_configured(client: Client) -> None:
    done = client.run("nodes", "list")
    assert done.rc == 2
    assert "--server" in done.error_line()


def test_login_sso_on_a_server_without_sso_says_so_at_once(client: Client) -> None:
    done = client.run("login", "--sso", "--no-browser", "--server", client.server.url,
                      "--ca-hash", client.server.ca_hash)  # fmt: skip
    assert done.rc == 3, done
    assert "offers no SSO sign-in" in done.error_line()
    assert not client.config_file.exists()


# ---------------------------------------------------------------- other ways to say where


def test_flags_without_a_login(client: Client) -> None:
    server = client.server
    me = client.run("whoami", "-o", "json", "--server", server.url, "--token",
                    server.admin_token, "--ca-file", server.data_dir / "ca.crt").json()  # fmt: skip
    assert me["user"] == "admin"
    assert not client.config_file.exists()


def test_token_from_the_environment(client: Client) -> None:
    server = client.server
    done = client.run("whoami", "-o", "json", "--server", server.url, "--ca-hash",
                      server.ca_hash, env={"EDGEFLEET_TOKEN": server.admin_token})  # fmt: skip
    assert done.json()["role"] == "admin"
    wrong = client.run("whoami", "--server", server.url, "--ca-hash", server.ca_hash,
                       env={"EDGEFLEET_TOKEN": "wrong"})  # fmt: skip
    assert wrong.rc == 3


def test_data_dir_shortcut_on_the_server_machine(server: Server) -> None:
    token = server.cli("token", "create", "--name", "shortcut-1").strip()
    assert _BOOTSTRAP.fullmatch(token), token


def test_a_server_without_ca_is_refused(client: Client) -> None:
    done = client.run("whoami", "--server", client.server.url, "--token", "x")
    assert done.rc == 2
    assert "--ca-hash" in done.error_line()


# ---------------------------------------------------------------- errors and exit codes


def test_wrong_token_exits_3_with_the_reason(logged_in: Client) -> None:
    done = logged_in.run(
        "nodes", "list", "--token", "efu1.aaaaaaaaaaaa.bbbbbbbbbbbbbbbbbbbbbbbbbbbbbbbb"
    )
    assert done.rc == 3
    line = done.error_line()
    assert line.startswith("tunnel-server: error: ")
    assert line.endswith("(invalid_token)")


def test_not_found_exits_5(logged_in: Client) -> None:
    done = logged_in.run("nodes", "get", "no-such-node")
    assert done.rc == 5
    assert "(node_not_found)" in done.error_line()


def test_server_down_exits_7(client: Client) -> None:
    port = free_port()
    done = client.run("whoami", "--server", f"https://127.0.0.1:{port}", "--token", "x",
                      "--ca-file", client.server.data_dir / "ca.crt")  # fmt: skip
    assert done.rc == 7
    assert "connection refused" in done.error_line()


def test_another_server_than_the_pinned_one_exits_7(
    client: Client, tmp_path_factory: pytest.TempPathFactory
) -> None:
    other = Server(workdir=tmp_path_factory.mktemp("other"))
    other.start()
    try:
        client.login()
        done = client.run("whoami", "--server", other.url, "--token", other.admin_token,
                          "--ca-file", client.server.data_dir / "ca.crt")  # fmt: skip
    finally:
        other.stop()
    assert done.rc == 7
    assert "not the one pinned" in done.error_line()


def test_the_data_dir_shortcut_needs_the_running_server(tmp_path: Path) -> None:
    data = tmp_path / "server"
    command("tunnel-server", "init", "--data-dir", data, "--public-name", "127.0.0.1")
    done = subprocess.run(
        [BIN / "tunnel-server", "token", "create", "--name", "x", "--data-dir", data],
        capture_output=True, text=True, timeout=TIMEOUT, check=False,
    )  # fmt: skip
    assert done.returncode == 7, done.stderr
    assert "is it running" in done.stderr


# ---------------------------------------------------------------- tokens


def test_token_create_list_revoke(logged_in: Client) -> None:
    token = logged_in.ok("token", "create", "--kind", "node", "--name", "cli-tok").strip()
    assert _BOOTSTRAP.fullmatch(token), "stdout is the token alone"
    listed = logged_in.run("token", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/tokens?limit=500")
    ours = next(t for t in listed["items"] if t["name"] == "cli-tok")
    assert token.split(".")[-1] not in json.dumps(listed), "never the secret"
    table = logged_in.ok("token", "list")
    assert table.splitlines()[0].split()[:3] == ["ID", "KIND", "NAME"]
    assert yaml.safe_load(logged_in.ok("token", "list", "-o", "yaml"))["items"]
    assert "revoked" in logged_in.ok("token", "revoke", ours["id"])
    done = logged_in.run("token", "revoke", "zzzzzz")  # an id that never was
    assert done.rc == 5


def test_token_create_of_a_taken_name_is_a_conflict(logged_in: Client, tmp_path: Path) -> None:
    pending_node(logged_in.server, tmp_path, "cli-taken")
    done = logged_in.run("token", "create", "--name", "cli-taken")
    assert done.rc == 6
    assert "(name_taken)" in done.error_line()
    replaced = logged_in.run("token", "create", "--name", "cli-taken", "--replace")
    assert replaced.rc == 0, replaced.stderr
    assert _BOOTSTRAP.fullmatch(replaced.stdout.strip())
    assert "revoked node cli-taken" in replaced.stderr


def test_token_create_json_is_the_answer(logged_in: Client) -> None:
    answer = logged_in.run("token", "create", "--name", "cli-json", "--ttl", "15m",
                           "--require-approval", "-o", "json").json()  # fmt: skip
    assert answer["name"] == "cli-json"
    assert answer["requireApproval"] is True
    assert answer["joinCommand"].startswith("edge-agent join --server ")


# ---------------------------------------------------------------- nodes


def test_nodes_approve_get_events_revoke(logged_in: Client, tmp_path: Path) -> None:
    pending_node(logged_in.server, tmp_path, "cli-node")
    listed = logged_in.run("nodes", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/nodes?limit=500")
    assert any(n["name"] == "cli-node" for n in listed["items"])
    assert "cli-node" in logged_in.ok("nodes")  # bare `nodes` lists too
    wide = logged_in.ok("nodes", "list", "-o", "wide").splitlines()[0]
    assert "AGENT" in wide
    assert "node cli-node approved" in logged_in.ok("nodes", "approve", "cli-node")
    again = logged_in.run("nodes", "approve", "cli-node")
    assert again.rc == 6, "approve is for pending nodes only"
    node = logged_in.run("nodes", "get", "cli-node", "-o", "json").json()
    assert node["state"] == "approved"
    events = logged_in.run("nodes", "events", "cli-node", "-o", "json").json()
    assert "approved" in {e["type"] for e in events["items"]}
    assert "revoked" in logged_in.ok("nodes", "revoke", "cli-node")
    assert logged_in.run("nodes", "get", "cli-node", "-o", "json").json()["state"] == "revoked"


def test_nodes_deny(logged_in: Client, tmp_path: Path) -> None:
    pending_node(logged_in.server, tmp_path, "cli-deny")
    assert "denied" in logged_in.ok("nodes", "deny", "cli-deny")
    assert logged_in.run("nodes", "deny", "no-such-node").rc == 5


def test_legacy_nodes_json_is_the_items(server: Server) -> None:
    """``nodes --json`` of earlier versions prints the API's items alone, as a list."""
    listed = json.loads(server.cli("nodes", "--json"))
    assert listed == api(server, "/api/v1/nodes?limit=500")["items"]


# ---------------------------------------------------------------- clusters


def test_clusters_approve_get_revoke(logged_in: Client, tmp_path: Path) -> None:
    pending_node(logged_in.server, tmp_path, "cli-cluster", kind="cluster")
    assert "cli-cluster" in logged_in.ok("clusters", "list")
    assert "approved" in logged_in.ok("clusters", "approve", "cli-cluster")
    cluster = logged_in.run("clusters", "get", "cli-cluster", "-o", "json").json()
    assert cluster["name"] == "cli-cluster"
    listed = logged_in.run("clusters", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/clusters?limit=500")
    assert "revoked" in logged_in.ok("clusters", "revoke", "cli-cluster")
    assert logged_in.run("clusters", "get", "no-such-cluster").rc == 5


def test_clusters_deny(logged_in: Client, tmp_path: Path) -> None:
    pending_node(logged_in.server, tmp_path, "cli-cdeny", kind="cluster")
    assert "denied" in logged_in.ok("clusters", "deny", "cli-cdeny")


# ---------------------------------------------------------------- users and kubeconfig


def test_users_create_get_list_kubeconfig_revoke(logged_in: Client, tmp_path: Path) -> None:
    token = logged_in.ok("users", "create", "cli-viewer", "--role", "viewer").strip()
    assert token.startswith("efu1.")
    user = logged_in.run("users", "get", "cli-viewer", "-o", "json").json()
    assert user["role"] == "viewer"
    listed = logged_in.run("users", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/users?limit=500")
    assert token.split(".")[-1] not in logged_in.ok("users", "list")
    # The viewer's own login: reads work, writes are forbidden (exit 4).
    viewer = Client(home=tmp_path / "viewer", server=logged_in.server)
    viewer.home.mkdir()
    viewer.login(token)
    assert viewer.run("whoami", "-o", "json").json()["user"] == "cli-viewer"
    forbidden = viewer.run("token", "create", "--name", "by-viewer")
    assert forbidden.rc == 4
    assert forbidden.error_line().startswith("tunnel-server: error: ")
    # A kubeconfig needs a registered cluster in scope.
    pending_node(logged_in.server, tmp_path, "cli-kube", kind="cluster")
    logged_in.ok("clusters", "approve", "cli-kube")
    kubeconfig = yaml.safe_load(logged_in.ok("kubeconfig", "--user", "cli-viewer"))
    assert kubeconfig["kind"] == "Config"
    servers = [c["cluster"]["server"] for c in kubeconfig["clusters"]]
    assert f"{logged_in.server.url}/clusters/cli-kube" in servers
    assert "revoked" in logged_in.ok("users", "revoke", "cli-viewer")
    assert viewer.run("whoami").rc == 3
    assert logged_in.run("users", "get", "no-such-user").rc == 5


# ---------------------------------------------------------------- devices, twins, models


_MODEL = """\
apiVersion: edgefleet.io/v1
kind: DeviceModel
name: cli-lamp
version: "1.0.0"
description: A lamp for the CLI test.
protocol:
  transport: mqtt
  qos: 1
properties:
  - name: "on"
    description: Whether it is lit.
    type: bool
    access: read-write
"""


def test_models_upload_list_get(logged_in: Client, tmp_path: Path) -> None:
    model = tmp_path / "lamp.yaml"
    model.write_text(_MODEL)
    assert "cli-lamp" in logged_in.ok("models", "upload", model)
    listed = logged_in.run("models", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/device-models?limit=500")
    assert any(m["name"] == "cli-lamp" for m in listed["items"])
    got = logged_in.run("models", "get", "cli-lamp", "-o", "json").json()
    assert got["name"] == "cli-lamp"
    assert logged_in.run("models", "get", "no-such-model").rc == 5


def test_devices_of_a_node_that_is_not_connected(logged_in: Client, tmp_path: Path) -> None:
    """Every device subcommand reaches its route and maps its refusal to an exit code.

    The happy paths need a connected agent with a broker (tests/integration/twins_e2e drives
    those routes); here the node is offline and the device unknown.
    """
    pending_node(logged_in.server, tmp_path, "cli-dev-node")
    logged_in.ok("nodes", "approve", "cli-dev-node")
    offline = logged_in.run(
        *("devices", "register", "--node", "cli-dev-node", "--device", "lamp-1"),
        *("--model", "relay-switch"),
    )
    assert offline.rc == 6
    assert "(node_offline)" in offline.error_line()
    listed = logged_in.run("devices", "list", "-o", "json").json()
    assert listed == api(logged_in.server, "/api/v1/devices?limit=500")
    assert logged_in.ok("devices", "list").splitlines()[0].split()[:2] == ["ID", "MODEL"]
    device = "cli-dev-node:lamp-1"
    for args in (
        ("devices", "get", device),
        ("twin", "get", device),
        ("twin", "patch", device, "--desired", '{"on": true}', "--if-match", "1"),
    ):
        done = logged_in.run(*args)
        assert done.rc == 5, (args, done.stderr)
        assert "(device_not_found)" in done.error_line()
    # Revoke and remove are the node agent's work: refused while it is offline.
    for work in (
        ("devices", "revoke", device, "--twin", "keep"),
        ("devices", "remove", device, "--twin", "delete"),
    ):
        done = logged_in.run(*work)
        assert done.rc == 6, (work, done.stderr)
        assert "(node_offline)" in done.error_line()
    bad = logged_in.run("twin", "patch", device, "--desired", "[1]")
    assert bad.rc == 2
    assert "JSON object" in bad.error_line()


# ---------------------------------------------------------------- audit, admin token


def test_audit_list(logged_in: Client) -> None:
    logged_in.ok("token", "create", "--name", "cli-audited")
    listed = logged_in.run("audit", "list", "-o", "json").json()
    assert listed["items"]
    assert listed == api(logged_in.server, "/api/v1/audit?limit=500")
    assert "tokens.create" in {entry["action"] for entry in listed["items"]}
    mine = logged_in.run("audit", "list", "--action", "tokens.create", "-o", "json").json()
    assert {entry["action"] for entry in mine["items"]} == {"tokens.create"}
    assert logged_in.ok("audit", "list").splitlines()[0].split()[:2] == ["AT", "USER"]


def test_admin_token_rotate(client: Client, tmp_path_factory: pytest.TempPathFactory) -> None:
    own = Server(workdir=tmp_path_factory.mktemp("rotate"))
    own.start()
    try:
        mine = Client(home=client.home, server=own)
        old = own.admin_token
        mine.login(old)
        new = mine.ok("admin-token", "rotate").strip()
        assert new != old
        assert own.admin_token == new, "the server wrote it to its data dir"
        assert yaml.safe_load(mine.config_file.read_text())["token"] == new
        assert mine.run("whoami", "-o", "json").json()["role"] == "admin"
        assert mine.run("whoami", "--token", old).rc == 3
    finally:
        own.stop()


# ---------------------------------------------------------------- help


@pytest.mark.parametrize(
    "args",
    [
        ("login",), ("logout",), ("whoami",), ("admin-token", "rotate"), ("token", "create"),
        ("token", "list"), ("token", "revoke"), ("nodes", "list"), ("nodes", "get"),
        ("nodes", "approve"), ("nodes", "deny"), ("nodes", "revoke"), ("nodes", "events"),
        ("clusters", "list"), ("clusters", "approve"), ("users", "create"), ("users", "list"),
        ("users", "get"), ("users", "revoke"), ("kubeconfig",), ("devices", "list"),
        ("devices", "register"), ("devices", "remove"), ("devices", "revoke"), ("twin", "get"),
        ("twin", "patch"), ("models", "list"), ("models", "upload"), ("audit", "list"),
    ],
)  # fmt: skip
def test_help_explains_where_and_exit_codes(client: Client, args: tuple[str, ...]) -> None:
    text = client.ok(*args, "--help")
    assert "--server" in text
    assert "exit codes" in text
    assert "7 server unreachable" in text
