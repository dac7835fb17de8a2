"""docs/security.md "Rotating the CA", run step by step on real daemons.

A server, an agent that is online through the whole rotation (``edge-a``, with a web target
reached through the node proxy), and one that is offline while the next CA is created and
comes back before the promote (``edge-b``). ``ca rotate`` runs beside the live server; both
agents must store the next CA (the one told at once, the other at its session start); junk
sent to the agent's ``ca-announce`` target through the node proxy is refused with a log line
and ends nothing; ``ca retire`` is refused while the agents still hold old certificates; after
``ca promote`` and a restart both agents come back WITHOUT joining again (same key file name
is not kept: renewal makes a new key; same node name, no token used), renew from the new CA
and pin it; the proxy works again; a new agent joins with the new hash; ``ca retire`` passes.
"""

from __future__ import annotations

import json
import subprocess
import threading
import urllib.request
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from cryptography import x509

from edge_agent.identity import Identity
from tests.harness.daemons import BIN, Agent, Server
from tests.harness.waiting import eventually

pytestmark = pytest.mark.timeout(600)

WITHIN = 90.0
"""Seconds: a guard against hangs on two busy cores, not a measurement."""


class _Hello(BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        body = b"hello through the tunnel"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, format: str, *args: object) -> None:  # noqa: A002 - the stdlib's name
        pass


@pytest.fixture
def web_target() -> Iterator[int]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hello)
    thread = threading.Thread(target=server.serve_forever, name="ca-rotation-web", daemon=True)
    thread.start()
    yield int(server.server_address[1])
    server.shutdown()
    server.server_close()
    thread.join()


def ca(server: Server, *args: str) -> subprocess.CompletedProcess[str]:
    """``tunnel-server ca ...`` on the server's data dir, as the doc runs it."""
    return subprocess.run(
        [str(BIN / "tunnel-server"), "ca", *args, "--data-dir", str(server.data_dir)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def proxy(
    server: Server, node: str, target: str, *, body: bytes | None = None
) -> tuple[int, bytes]:
    request = urllib.request.Request(  # noqa: S310 - our own server
        f"{server.url}/api/v1/nodes/{node}/proxy/{target}/",
        data=body,
        headers={"Authorization": f"Bearer {server.admin_token}"},
    )
    try:
        with urllib.request.urlopen(request, timeout=30, context=server.ssl_context()) as answer:  # noqa: S310 - ours
            return int(answer.status), answer.read()
    except urllib.error.HTTPError as error:
        with error:
            return error.code, error.read()


def ca_status(agent: Agent) -> dict[str, object]:
    status = agent.status()["tunnel"]
    assert isinstance(status, dict)
    value = status["ca"]
    assert isinstance(value, dict)
    return value


def wait_ca(agent: Agent, *, pinned: str, next_ca: str | None) -> None:
    eventually(
        lambda: ca_status(agent),
        lambda seen: seen == {"pinned": pinned, "next": next_ca},
        what=f"{agent.name} pins {pinned}, next {next_ca}",
        within=WITHIN,
        ignore=(OSError, ValueError),
    )


def log_of(agent: Agent) -> str:
    return (agent.workdir / f"agent-{agent.name}.log").read_text(errors="replace")


def junk_is_refused(server: Server, edge_a: Agent) -> None:
    """Junk on the agent's announcement target is refused with a log line, ending nothing.

    The node proxy lets an operator open streams to any target name, so this is the way in
    a real deployment has; the cross-signature check is what keeps a forged CA out.
    """
    since = edge_a.status()["tunnel"]["connected_since"]  # type: ignore[index]
    stored = (edge_a.data_dir / "ca-next.crt").read_bytes()
    status, _ = proxy(server, "edge-a", "ca-announce")
    assert status >= 400
    status, _ = proxy(server, "edge-a", "ca-announce", body=b"x" * (80 * 1024))
    assert status >= 400
    eventually(
        lambda: log_of(edge_a),
        lambda text: (
            "CA announcement refused: not ended within" in text
            and "CA announcement refused: over 65536 bytes" in text
        ),
        what="edge-a logs both refusals",
        within=WITHIN,
    )
    assert edge_a.status()["tunnel"]["connected_since"] == since  # type: ignore[index]
    assert (edge_a.data_dir / "ca-next.crt").read_bytes() == stored
    assert proxy(server, "edge-a", "web") == (200, b"hello through the tunnel")


def renewed_onto(agent: Agent, server: Server, next_hash: str) -> None:
    """Back without joining again, renewed from the new CA, which it pins now."""
    wait_ca(agent, pinned=next_hash, next_ca=None)
    agent.wait_connected()
    identity = Identity.load(agent.data_dir)
    assert identity.name == agent.name
    assert identity.ca_hash == next_hash
    identity.certificate.verify_directly_issued_by(x509.load_pem_x509_certificate(server.ca_pem))
    assert not (agent.data_dir / "ca-next.crt").exists()


def test_rotate_promote_retire_without_rejoining(tmp_path: Path, web_target: int) -> None:
    server = Server(workdir=tmp_path)
    server.start()
    agents = {
        name: Agent(
            name=name, workdir=tmp_path, server=server, targets={"web": f"127.0.0.1:{web_target}"}
        )
        for name in ("edge-a", "edge-b")
    }
    for agent in agents.values():
        agent.join()
    edge_a, edge_b = agents["edge-a"], agents["edge-b"]
    edge_a.start()
    edge_a.wait_connected()
    assert proxy(server, "edge-a", "web") == (200, b"hello through the tunnel")
    old_hash = server.ca_hash

    # Step 1: create the next CA beside the live server; the connected agent is told.
    rotated = ca(server, "rotate")
    assert rotated.returncode == 0, rotated.stderr
    next_hash = rotated.stdout.strip()
    assert next_hash.startswith("sha256:")
    assert next_hash != old_hash
    wait_ca(edge_a, pinned=old_hash, next_ca=next_hash)
    assert (edge_a.data_dir / "ca-next.crt").is_file()
    assert ca(server, "rotate").returncode == 6, "a second next CA is refused"

    junk_is_refused(server, edge_a)

    # An agent offline during the rotate gets the next CA at its session start.
    edge_b.start()
    edge_b.wait_connected()
    wait_ca(edge_b, pinned=old_hash, next_ca=next_hash)

    # Step 2: promote with the server stopped (refused while it runs), then start it.
    refused = ca(server, "promote")
    assert refused.returncode == 6, refused.stderr
    assert "running" in refused.stderr
    server.stop()
    promoted = ca(server, "promote")
    assert promoted.returncode == 0, promoted.stderr
    assert promoted.stdout.strip() == next_hash
    # Retire is refused while nodes hold certificates of the previous CA: it says how many.
    early = ca(server, "retire")
    assert early.returncode == 6
    assert "2 node(s) still hold a certificate of the previous CA" in early.stderr
    server.start()
    assert server.ca_hash == next_hash

    for agent in (edge_a, edge_b):
        renewed_onto(agent, server, next_hash)
    eventually(
        lambda: proxy(server, "edge-a", "web"),
        lambda answer: answer == (200, b"hello through the tunnel"),
        what="the node proxy through edge-a after the promote",
        within=WITHIN,
        ignore=(OSError,),
    )
    nodes = server.nodes()
    assert {name: nodes[name]["state"] for name in agents} == {
        "edge-a": "approved",
        "edge-b": "approved",
    }

    # A new agent joins with the new CA's hash.
    edge_c = Agent(name="edge-c", workdir=tmp_path, server=server)
    edge_c.join()
    assert Identity.load(edge_c.data_dir).ca_hash == next_hash
    edge_c.start()
    edge_c.wait_connected()

    # Step 3: every node holds a new certificate: the previous CA is retired.
    retired = ca(server, "retire")
    assert retired.returncode == 0, retired.stderr
    status_out = json.loads(ca(server, "status", "-o", "json").stdout)
    assert status_out["current"]["hash"] == next_hash
    assert status_out["next"] is None
    assert status_out["previous"] is None
    for agent in (edge_a, edge_b, edge_c):
        agent.stop()
    server.stop()
