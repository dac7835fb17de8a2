"""The egress and autonomy flags of ``tunnel-server run``, and ``autonomy-webhook``.

A flag that cannot work is one clear line and exit 2 before anything starts; a listener that
cannot bind is one line and exit 1; never a traceback.
"""

from __future__ import annotations

import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests.harness.certs import TestCA
from tests.harness.procs import free_port

BIN = Path(sys.executable).parent
_LOG_LINE = re.compile(r"\d{4}-\d\d-\d\dT\S+Z (DEBUG|INFO|WARNING) +\S+: ")


def server(*args: str | Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [BIN / "tunnel-server", *[str(a) for a in args]],
        capture_output=True,
        text=True,
        timeout=60,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def one_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == code, result.stderr
    lines = [line for line in result.stderr.splitlines() if not _LOG_LINE.match(line)]
    assert len(lines) == 1, result.stderr
    return lines[0]


@pytest.fixture
def client_ca(tmp_path: Path) -> Path:
    return TestCA(tmp_path / "pki").cert_path


def run(tmp_path: Path, *flags: str | Path) -> subprocess.CompletedProcess[str]:
    return server(
        "run", "--data-dir", tmp_path / "data", "--listen", f"127.0.0.1:{free_port()}", *flags
    )


def test_egress_listen_needs_a_client_ca(tmp_path: Path) -> None:
    line = one_error(run(tmp_path, "--egress-listen", f"127.0.0.1:{free_port()}"), 2)
    assert "--egress-listen needs --egress-client-ca" in line


def test_a_client_ca_that_is_no_certificate(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate\n")
    line = one_error(
        run(tmp_path, "--egress-listen", f"127.0.0.1:{free_port()}", "--egress-client-ca", bad), 2
    )
    assert f"--egress-client-ca {bad} is unusable" in line


def test_autonomy_needs_the_cloud_cluster(tmp_path: Path) -> None:
    line = one_error(run(tmp_path, "--autonomy"), 2)
    assert "--autonomy needs --kube-upstream" in line


def test_egress_uds_on_a_regular_file(tmp_path: Path) -> None:
    taken = tmp_path / "taken"
    taken.write_text("mine\n")
    line = one_error(run(tmp_path, "--egress-uds", taken), 2)
    assert "exists and is not a socket" in line
    assert taken.read_text() == "mine\n"  # not replaced


def test_egress_uds_where_another_process_listens(tmp_path: Path) -> None:
    path = Path("/tmp") / f"egress-test-{tmp_path.name[-20:]}.sock"  # noqa: S108 - short path
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as other:
        other.bind(str(path))
        other.listen()
        try:
            line = one_error(run(tmp_path, "--egress-uds", path), 2)
        finally:
            path.unlink()
    assert "another process listens there" in line


def test_egress_uds_path_too_long(tmp_path: Path) -> None:
    line = one_error(run(tmp_path, "--egress-uds", tmp_path / ("s" * 120)), 2)
    assert "longer than a Unix socket path may be" in line


def test_egress_listen_on_a_port_in_use(tmp_path: Path, client_ca: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = one_error(
            run(tmp_path, "--egress-listen", f"127.0.0.1:{port}", "--egress-client-ca", client_ca),
            1,
        )
    assert f"cannot serve --egress-listen 127.0.0.1:{port}: address already in use" in line


def test_autonomy_webhook_prints_the_configuration(tmp_path: Path) -> None:
    data = tmp_path / "data"
    assert server("init", "--data-dir", data, "--public-name", "cloud.example.com").returncode == 0
    printed = server("autonomy-webhook", "--data-dir", data)
    assert printed.returncode == 0, printed.stderr
    document = yaml.safe_load(printed.stdout)
    assert document["kind"] == "MutatingWebhookConfiguration"
    (hook,) = document["webhooks"]
    assert hook["clientConfig"]["url"] == "https://cloud.example.com:8443/webhooks/autonomy"
    assert hook["failurePolicy"] == "Ignore"
    assert hook["timeoutSeconds"] == 5
    other = server("autonomy-webhook", "--data-dir", data, "--server", "https://10.0.0.1:9443")
    assert yaml.safe_load(other.stdout)["webhooks"][0]["clientConfig"]["url"] == (
        "https://10.0.0.1:9443/webhooks/autonomy"
    )


def test_autonomy_webhook_without_a_data_dir(tmp_path: Path) -> None:
    line = one_error(server("autonomy-webhook", "--data-dir", tmp_path / "none"), 1)
    assert "tunnel-server" in line
