"""Two real ``tunnel-server run --store kubernetes`` processes on one namespace.

The second replica takes the CA the first one made (from its Secret), accepts the admin
token the first one made, and answers with what was written through the other one.
"""

from __future__ import annotations

import json
import urllib.request
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tests.harness.daemons import Server
from tests.harness.waiting import eventually
from tunnel_server import cli

if TYPE_CHECKING:
    from collections.abc import Iterator

    from tests.harness import kube

import pytest


@pytest.fixture
def replicas(
    kube_crds: kube.ControlPlane, namespace: str, tmp_path: Path
) -> Iterator[list[Server]]:
    store = ("--store", "kubernetes", "--kubeconfig", str(kube_crds.kubeconfig))
    args = (*store, "--namespace", namespace)
    servers = [Server(workdir=tmp_path / f"replica{i}", extra_args=args) for i in range(2)]
    for server in servers:
        server.workdir.mkdir()
    try:
        for server in servers:  # one after the other: the first makes the CA
            server.start()
        yield servers
    finally:
        for server in servers:
            if server.process is not None:
                server.process.stop()


def _api(server: Server, method: str, path: str, token: str, body: object = None) -> Any:
    request = urllib.request.Request(  # noqa: S310 - our own https URL
        server.url + path,
        data=None if body is None else json.dumps(body).encode(),
        method=method,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
    )
    with urllib.request.urlopen(request, timeout=30, context=server.ssl_context()) as answer:  # noqa: S310 - ours
        return json.loads(answer.read())


def test_replicas_share_the_ca_the_admin_token_and_the_state(replicas: list[Server]) -> None:
    first, second = replicas
    assert first.ca_pem == second.ca_pem, "one CA for every replica, from its Secret"
    assert not (second.data_dir / "admin-token").exists(), "made once, by the first replica"
    admin = first.admin_token
    made = _api(second, "POST", "/api/v1/tokens", admin, {"kind": "node", "name": "edge-7"})
    assert made["name"] == "edge-7"

    def listed_on_first() -> list[str]:
        answer = _api(first, "GET", "/api/v1/tokens", admin)
        items = answer["items"] if isinstance(answer, dict) else answer
        return [str(t["id"]) for t in items]

    seen = eventually(
        listed_on_first, lambda ids: made["id"] in ids, what="the token made on the second"
    )
    assert made["id"] in seen


def test_store_flags_are_checked(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    data = ("--data-dir", str(tmp_path / "data"))
    assert cli.main(["run", *data, "--kubeconfig", str(tmp_path / "kc")]) == 2
    assert "--kubeconfig is for --store kubernetes" in capsys.readouterr().err
    with pytest.raises(SystemExit) as bad:
        cli.main(["run", *data, "--store", "kubernetes", "--namespace", "Not_A_Name"])
    assert bad.value.code == 2
    assert "not a namespace name" in capsys.readouterr().err
    missing = tmp_path / "no-kubeconfig"
    assert cli.main(["run", *data, "--store", "kubernetes", "--kubeconfig", str(missing)]) != 0
