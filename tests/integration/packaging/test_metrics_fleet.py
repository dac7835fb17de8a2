"""The fleet on /metrics, from a real server and a real agent (kube cache on, through the tunnel).

The server says which nodes hold a session and when every certificate it knows expires (its
CA and serving certificate, each node's client certificate: the same instant the REST nodes
list gives); the agent says when its own certificate expires. The latency histograms move
after a real request: one through the node proxy (server side, ``node_service``) and one to
the agent's kube proxy (by verb). A node that goes away is offline on the server's page; a
revoked one is no series at all.
"""

from __future__ import annotations

import http.server
import json
import re
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509

from tests.harness.daemons import Agent, Server
from tests.harness.procs import free_port
from tests.harness.waiting import eventually

pytestmark = pytest.mark.timeout(300)

NODE = "metrics-a"


class _Hello(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - stdlib's name
        pass


@pytest.fixture(scope="module")
def target() -> Iterator[int]:
    """A plain HTTP service on the node, for the node proxy to reach."""
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, name="test.target", daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@pytest.fixture(scope="module")
def fleet(tmp_path_factory: pytest.TempPathFactory, target: int) -> Iterator[tuple[Server, Agent]]:
    workdir = tmp_path_factory.mktemp("metrics-fleet")
    server = Server(workdir=workdir)
    server.start()
    agent = Agent(
        name=NODE,
        workdir=workdir,
        server=server,
        targets={"web": f"127.0.0.1:{target}"},
        tables={"kube": {"enabled": True, "upstream": "tunnel", "port": free_port()}},
    )
    try:
        agent.join()
        agent.start()
        agent.wait_connected()
        yield server, agent
    finally:
        agent.stop()
        server.stop()


def samples(page: str) -> dict[str, float]:
    """Every sample of a /metrics page, keyed by its name and labels as printed."""
    found = {}
    for line in page.splitlines():
        if line and not line.startswith("#"):
            key, value = line.rsplit(" ", 1)
            found[key] = float(value)
    return found


def server_samples(server: Server) -> dict[str, float]:
    _, page = server.get("/metrics")
    return samples(page.decode())


def agent_samples(agent: Agent) -> dict[str, float]:
    url = f"http://127.0.0.1:{agent.local_api_port}/metrics"
    with urllib.request.urlopen(url, timeout=10) as answer:
        return samples(answer.read().decode())


def not_after(path: Path) -> float:
    return x509.load_pem_x509_certificate(path.read_bytes()).not_valid_after_utc.timestamp()


def node_certificate(agent: Agent) -> Path:
    """The client certificate the agent uses now (identity.json names it)."""
    meta = json.loads((agent.data_dir / "identity.json").read_text())
    return agent.data_dir / str(meta["cert_file"])


def online(name: str) -> str:
    return f'tunnel_server_node_online{{kind="node",node="{name}"}}'


def test_server_exports_the_connected_node_and_its_certificate(
    fleet: tuple[Server, Agent],
) -> None:
    server, agent = fleet
    seen = server_samples(server)
    assert seen[online(NODE)] == 1
    assert seen['tunnel_server_nodes{kind="node",status="online"}'] == 1
    assert seen['tunnel_server_nodes{kind="node",status="offline"}'] == 0
    assert seen['tunnel_server_nodes{kind="cluster",status="online"}'] == 0
    expiry = seen[
        f'tunnel_server_node_certificate_expiry_timestamp_seconds{{kind="node",node="{NODE}"}}'
    ]
    listed = server.nodes()[NODE]["certExpiresAt"]
    assert isinstance(listed, str)
    assert expiry == pytest.approx(datetime.fromisoformat(listed).timestamp(), abs=1)
    assert expiry == pytest.approx(not_after(node_certificate(agent)), abs=1)


def test_server_exports_its_ca_and_serving_certificate_expiry(fleet: tuple[Server, Agent]) -> None:
    server, _ = fleet
    seen = server_samples(server)
    name = "tunnel_server_certificate_expiry_timestamp_seconds"
    assert seen[f'{name}{{certificate="ca"}}'] == not_after(server.data_dir / "ca.crt")
    assert seen[f'{name}{{certificate="serving"}}'] == not_after(server.data_dir / "server.crt")


def test_agent_exports_its_certificate_expiry(fleet: tuple[Server, Agent]) -> None:
    _, agent = fleet
    seen = agent_samples(agent)
    expiry = seen["edge_agent_certificate_expiry_timestamp_seconds"]
    assert expiry == not_after(node_certificate(agent))


def test_node_proxy_request_moves_the_tunnel_histogram(fleet: tuple[Server, Agent]) -> None:
    server, _ = fleet
    count = 'tunnel_server_tunnel_request_duration_seconds_count{target_kind="node_service"}'
    before = server_samples(server).get(count, 0.0)
    status, body = server.get(f"/api/v1/nodes/{NODE}/proxy/web/hi", token=server.admin_token)
    assert (status, body) == (200, b"hello")
    after = server_samples(server)
    assert after[count] == before + 1
    total = 'tunnel_server_tunnel_request_duration_seconds_sum{target_kind="node_service"}'
    assert after[total] > 0


def test_kube_proxy_request_moves_its_histogram_by_verb(fleet: tuple[Server, Agent]) -> None:
    _, agent = fleet
    count = 'edge_agent_kubecache_request_duration_seconds_count{verb="get"}'
    before = agent_samples(agent).get(count, 0.0)
    port = agent.tables["kube"]["port"]
    url = f"http://127.0.0.1:{port}/api/v1/namespaces/default/configmaps/nothing"
    try:
        with urllib.request.urlopen(url, timeout=30) as answer:
            answer.read()
    except urllib.error.HTTPError as error:  # no API server behind the server: any answer
        with error:
            error.read()
    assert agent_samples(agent)[count] == before + 1
    durations = [key for key in agent_samples(agent) if "request_duration" in key]
    assert not any(re.search(r'verb="watch"', key) for key in durations)


# The standard collectors every Prometheus client exports under their own, well-known names.
_STANDARD = ("process_", "python_")


def families(names: dict[str, float]) -> set[str]:
    """The metric names of a page's samples, labels cut off."""
    return {key.split("{", 1)[0] for key in names}


@pytest.mark.parametrize("daemon", ["tunnel-server", "edge-agent"])
def test_every_metric_of_a_daemon_has_its_one_prefix(
    fleet: tuple[Server, Agent], daemon: str
) -> None:
    """One prefix per daemon: an alert rule or a dashboard can select a daemon's series by name."""
    server, agent = fleet
    if daemon == "tunnel-server":
        prefix, names = "tunnel_server_", families(server_samples(server))
    else:
        prefix, names = "edge_agent_", families(agent_samples(agent))
    own = {name for name in names if not name.startswith(_STANDARD)}
    assert len(own) >= 5, f"too few {daemon} metrics to judge: {sorted(names)}"
    assert sorted(name for name in own if not name.startswith(prefix)) == []


def test_a_stopped_node_is_offline_and_a_revoked_one_is_gone(fleet: tuple[Server, Agent]) -> None:
    server, agent = fleet
    agent.stop()
    eventually(
        lambda: server_samples(server).get(online(NODE)),
        lambda value: value == 0,
        what="node offline on the server's /metrics",
    )
    assert server_samples(server)['tunnel_server_nodes{kind="node",status="offline"}'] == 1
    server.cli("nodes", "revoke", NODE)
    seen = server_samples(server)
    assert not any(f'node="{NODE}"' in key for key in seen), "a revoked node keeps no series"
    assert seen['tunnel_server_nodes{kind="node",status="offline"}'] == 0
