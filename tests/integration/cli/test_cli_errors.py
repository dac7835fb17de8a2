"""The real ``tunnel-server`` and ``edge-agent`` as a new user meets them.

Every mistake gets one clear line on stderr and a documented exit code (2 usage or config,
1 failed), never a traceback, a hang, or a misleading message.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest

BIN = Path(sys.executable).parent
TIMEOUT = 30.0
"""Seconds a command may take: each of these answers within one or two."""
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\S+Z (DEBUG|INFO|WARNING) +\S+: ")
_HASH = "sha256:" + "0" * 64


def cli(program: str, *args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / program, *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The single line that is not an ordinary log line, after checking the exit code."""
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if not _LOG_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def a_file(tmp_path: Path) -> Path:
    path = tmp_path / "a-file"
    path.write_text("not a folder\n")
    return path


@pytest.fixture
def listening_port() -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind(("127.0.0.1", 0))
    sock.listen()
    return sock


def _unreachable_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(
    "command", [("tunnel-server", "ca-hash"), ("edge-agent", "cache", "stats")]
)
def test_unknown_log_level(command: tuple[str, ...]) -> None:
    program, *rest = command
    line = one_error(cli(program, "--log-level", "bogus", *rest, "--data-dir", "/nonexistent"), 2)
    assert "--log-level" in line
    assert "'BOGUS'" in line
    assert "DEBUG" in line


def test_server_run_on_a_port_in_use(tmp_path: Path, listening_port: socket.socket) -> None:
    with listening_port:
        port = listening_port.getsockname()[1]
        for extra in ((), ("--max-tls-handshakes", "0")):  # our listener, and asyncio's own
            result = cli(
                "tunnel-server", "run", "--listen", f"127.0.0.1:{port}", *extra,
                "--data-dir", tmp_path / "server",
            )  # fmt: skip
            line = one_error(result, 1)
            assert f"cannot listen on 127.0.0.1:{port}: address already in use" in line
            assert "--listen" in line


@pytest.mark.parametrize(("command", "below"), [("run", ""), ("init", "below"), ("nodes", "")])
def test_server_data_dir_is_a_file(command: str, below: str, a_file: Path) -> None:
    data_dir = a_file / below if below else a_file
    line = one_error(cli("tunnel-server", command, "--data-dir", data_dir), 2)
    assert f"--data-dir {data_dir} is not a folder" in line


def test_server_kube_upstream_unusable(tmp_path: Path) -> None:
    not_yaml = tmp_path / "kubeconfig"
    not_yaml.write_text("clusters: [\n")
    for kubeconfig in (Path("/nonexistent"), not_yaml):
        result = cli(
            "tunnel-server", "run", "--listen", f"127.0.0.1:{_unreachable_port()}",
            "--kube-upstream", kubeconfig, "--data-dir", tmp_path / "server",
        )  # fmt: skip
        line = one_error(result, 2)
        assert f"--kube-upstream {kubeconfig} is unusable" in line
    assert not (tmp_path / "server").exists()  # refused before anything was made


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--idle-timeout", "-5s"), "--idle-timeout: must be from 1s to 1d, got '-5s'"),
        (("--idle-timeout=-5s",), "--idle-timeout: must be from 1s to 1d, got '-5s'"),
        (("--client-cert-lifetime", "400d"), "--client-cert-lifetime: must be from 1s to 365d"),
        (("--max-tls-handshakes", "-1"), "--max-tls-handshakes: expected a whole number from 0"),
        (("--public-name", "bad/name"), "--public-name: expected a DNS name"),
    ],
)
def test_server_run_value_out_of_range(args: tuple[str, ...], expected: str) -> None:
    line = one_error(cli("tunnel-server", "run", *args, "--data-dir", "/nonexistent"), 2)
    assert f"argument {expected}" in line


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--name", "Edge_1"), "argument --name: invalid name 'Edge_1'"),
        (("--name", "edge-1", "--ttl", "40d"), "argument --ttl: must be from 1m to 30d"),
        (("--name", "edge-1", "--server", "cloud:8443"), "argument --server: expected https://"),
    ],
)
def test_token_create_bad_value(args: tuple[str, ...], expected: str) -> None:
    line = one_error(cli("tunnel-server", "token", "create", *args, "--data-dir", "/x"), 2)
    assert expected in line


def test_agent_run_local_api_port_out_of_range(tmp_path: Path) -> None:
    line = one_error(cli("edge-agent", "run", "--local-api-port", "70000"), 2)
    assert "argument --local-api-port: expected a whole number from 1 to 65535" in line
    config = tmp_path / "agent.toml"
    config.write_text("[local_api]\nport = 70000\n")
    line = one_error(cli("edge-agent", "run", "--config", config, "--data-dir", tmp_path), 2)
    assert "port: must be between 1 and 65535, got 70000" in line


@pytest.mark.parametrize(
    ("toml", "expected"),
    [
        ("local_api = 5", "[local_api] must be a table, got 5"),
        ('tunnel = "x"', "[tunnel] must be a table, got 'x'"),
        ('data_dir = ""', "data_dir: expected a path, got ''"),
    ],
)
def test_agent_run_config_of_the_wrong_shape(tmp_path: Path, toml: str, expected: str) -> None:
    config = tmp_path / "agent.toml"
    config.write_text(toml + "\n")
    line = one_error(cli("edge-agent", "run", "--config", config), 2)
    assert expected in line


def test_agent_run_local_api_port_in_use(tmp_path: Path, listening_port: socket.socket) -> None:
    with listening_port:
        port = listening_port.getsockname()[1]
        result = cli("edge-agent", "run", "--local-api-port", str(port), "--data-dir", tmp_path)
        line = one_error(result, 1)
    assert f"cannot serve the local API on 127.0.0.1:{port}: address already in use" in line
    assert "--local-api-port" in line


def test_agent_run_data_dir_is_a_file(a_file: Path) -> None:
    line = one_error(cli("edge-agent", "run", "--data-dir", a_file, "--local-api-port", "1"), 2)
    assert f"the data dir {a_file} is not a folder" in line


def test_agent_run_value_out_of_range() -> None:
    line = one_error(cli("edge-agent", "run", "--status-interval", "-5"), 2)
    assert "argument --status-interval: must be from 1 to 86400 seconds, got '-5'" in line


def _join(*args: str | Path) -> subprocess.CompletedProcess[str]:
    server = f"https://127.0.0.1:{_unreachable_port()}"
    return cli("edge-agent", "join", "--server", server, "--token", "abcdef.0123456789abcdef",
               "--ca-hash", _HASH, "--name", "edge-1", *args)  # fmt: skip


def test_agent_join_data_dir_is_a_file(a_file: Path) -> None:
    """Refused before anything is sent: the server here is not even reachable."""
    line = one_error(_join("--data-dir", a_file / "below"), 2)
    assert f"--data-dir {a_file / 'below'} is not a folder" in line


def test_agent_join_negative_wait() -> None:
    line = one_error(_join("--wait-approval", "-1"), 2)
    assert "argument --wait-approval: must be from 0 to 604800 seconds, got '-1'" in line


def test_agent_join_unreachable_server_reads_well(tmp_path: Path) -> None:
    result = _join("--data-dir", tmp_path)
    assert result.returncode == 6, result.stderr
    assert "Traceback" not in result.stderr
    assert "SSLContext" not in result.stderr
    assert "connection refused" in result.stderr.splitlines()[-1]


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (("--model", "toaster"), "argument --model: invalid choice: 'toaster'"),
        (("--broker", "garbage"), "argument --broker: expected HOST:PORT"),
        (("--count", "-1"), "argument --count: expected a whole number from 1"),
    ],
)
def test_simulate_bad_value(args: tuple[str, ...], expected: str) -> None:
    broker = f"127.0.0.1:{_unreachable_port()}"
    result = cli("edge-agent", "simulate", "--broker", broker, "--claim-password", "x", *args)
    line = one_error(result, 2)
    assert line.startswith("edge-agent simulate: error: ")
    assert expected in line


def test_simulate_without_claim_password_says_so() -> None:
    env = {k: v for k, v in os.environ.items() if k != "EDGEFLEET_CLAIM_PASSWORD"}
    result = subprocess.run(
        [BIN / "edge-agent", "simulate", "--broker", "127.0.0.1:1"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env,
        check=False,
    )
    line = one_error(result, 2)
    assert "--claim-password" in line
    assert "--broker" not in line


@pytest.mark.parametrize("component", [None, "kubelet"])
def test_cache_purge_without_a_cache(tmp_path: Path, component: str | None) -> None:
    extra = ("--component", component) if component else ()
    result = cli("edge-agent", "cache", "purge", "--data-dir", tmp_path, "--json", *extra)
    assert result.returncode == 0, result.stderr
    answer = json.loads(result.stdout)
    assert answer["removed"] == 0
    assert not (tmp_path / "kubecache").exists()  # and a component purge made none
    if component is None:
        text = cli("edge-agent", "cache", "purge", "--data-dir", tmp_path).stdout.strip()
        assert text == f"no cache at {tmp_path / 'kubecache'}: nothing to purge"


def test_cache_purge_of_the_whole_folder_reports_no_count(tmp_path: Path) -> None:
    (tmp_path / "kubecache").mkdir()
    result = cli("edge-agent", "cache", "purge", "--data-dir", tmp_path, "--json")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["removed"] is None
    assert not (tmp_path / "kubecache").exists()


@pytest.mark.parametrize("action", ["stats", "purge"])
def test_cache_that_is_not_a_database(tmp_path: Path, action: str) -> None:
    """A corrupt cache gets the way out (purge it whole), not a sqlite3 traceback."""
    (tmp_path / "kubecache").mkdir()
    (tmp_path / "kubecache" / "objects.db").write_text("not a database\n")
    result = cli("edge-agent", "cache", action, "--component", "kubelet", "--data-dir", tmp_path)
    line = one_error(result, 2)
    assert "cannot open the cache" in line
    assert "without --component" in line


def test_server_ca_that_does_not_parse(tmp_path: Path) -> None:
    data_dir = tmp_path / "server"
    assert cli("tunnel-server", "init", "--data-dir", data_dir).returncode == 0
    (data_dir / "ca.crt").write_text("not a certificate\n")
    for command in ("ca-hash", "init"):
        line = one_error(cli("tunnel-server", command, "--data-dir", data_dir), 1)
        assert f"in {data_dir}" in line
        assert "cannot be read" in line
        assert "restore" in line
