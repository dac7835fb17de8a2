"""``tunnel-server run`` gateway flags that cannot work: one line, never a traceback.

Exit 2 before anything starts for flags that do not fit; exit 1 when the listener cannot bind.
"""

from __future__ import annotations

import socket
from pathlib import Path

from tests.harness.certs import TestCA
from tests.integration.egress.test_cli_flags import one_error, run


def test_cert_without_key(tmp_path: Path) -> None:
    line = one_error(
        run(tmp_path, "--gateway-listen", "127.0.0.1:1", "--gateway-cert-file", "x.crt"), 2
    )
    assert "--gateway-cert-file and --gateway-key-file go together" in line


def test_tls_files_without_a_listener(tmp_path: Path) -> None:
    line = one_error(
        run(tmp_path, "--gateway-cert-file", "x.crt", "--gateway-key-file", "x.key"), 2
    )
    assert "need --gateway-listen" in line


def test_unusable_tls_files(tmp_path: Path) -> None:
    pair = TestCA(tmp_path / "ca").issue("gw", server=True, hosts=("127.0.0.1",))
    other = TestCA(tmp_path / "other").issue("gw2", server=True, hosts=("127.0.0.1",))
    for cert, key in ((tmp_path / "missing.crt", pair.key_path), (pair.cert_path, other.key_path)):
        result = run(
            tmp_path,
            "--gateway-listen",
            "127.0.0.1:1",
            "--gateway-cert-file",
            cert,
            "--gateway-key-file",
            key,
        )
        assert f"--gateway-cert-file {cert}" in one_error(result, 2)
    assert not (tmp_path / "data").exists()  # refused before the data dir was made


def test_gateway_listen_on_a_port_in_use(tmp_path: Path) -> None:
    with socket.create_server(("127.0.0.1", 0)) as taken:
        port = taken.getsockname()[1]
        line = one_error(run(tmp_path, "--gateway-listen", f"127.0.0.1:{port}"), 1)
    assert f"cannot serve --gateway-listen 127.0.0.1:{port}: address already in use" in line
