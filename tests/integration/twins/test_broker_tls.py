"""docs/mqtt-broker.md step by step: mosquitto with TLS and dynamic security, an agent, a device.

The guide's *tested* blocks are read from the guide itself (`guide_block`) and run as they are,
with three test-only changes said where they are made: folders under the test's own tmp dir
instead of /etc and /var/lib, a free loopback port instead of 8883, and mosquitto staying root
(the harness's folders are root's). The agent is ``edge-agent run`` joined to a real
``tunnel-server``; the device is ``edge-agent simulate``; both dial 127.0.0.1 and check the
certificate's name ``mqtt.site.example`` (``broker_server_name``), as the guide says for the
broker machine.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import json
import re
import ssl
import subprocess
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiomqtt
import pytest

from edge_agent.twins import Durability, TwinMqttService, TwinMqttSettings
from edge_agent.twins.tls import BrokerTls, client_context
from tests.harness import mqtt
from tests.harness.daemons import REPO, Agent, Server, TomlValue, command
from tests.harness.procs import free_port
from tests.harness.waiting import eventually
from tests.integration.twins.conftest import CloudRecorder, running

pytestmark = [pytest.mark.mqtt, pytest.mark.timeout(300)]

GUIDE = REPO / "docs" / "mqtt-broker.md"
SERVER_NAME = "mqtt.site.example"  # the name the guide's certificate carries
NODE = "tls-edge"
CLEAR_CONNECT = bytes.fromhex("100d00044d5154540402003c000170")
"""An MQTT 3.1.1 CONNECT, client id "p", keepalive 60 s, no credentials."""
WITHIN = 60.0  # a guard against hangs on 2 busy cores, not a measurement


def guide_block(name: str) -> str:
    """The fenced block right after ``*tested* (`name`)`` in the guide."""
    text = GUIDE.read_text()
    found = re.search(
        rf"\*tested\* \(`{re.escape(name)}`\)[^\n]*\n+```[a-z]*\n(.*?)\n```", text, re.DOTALL
    )
    assert found is not None, f"no *tested* ({name}) block in {GUIDE}"
    return found[1] + "\n"


def guide_table(name: str) -> str:
    """The table right after ``*tested* (`name`)`` in the guide (its ``|`` lines)."""
    text = GUIDE.read_text()
    found = re.search(rf"\*tested\* \(`{re.escape(name)}`\)[^|]*?\n\n((?:\|[^\n]*\n)+)", text)
    assert found is not None, f"no *tested* ({name}) table in {GUIDE}"
    return found[1]


def run_sh(script: str, cwd: Path) -> None:
    subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=cwd, check=True)


@dataclass(kw_only=True)
class Site:
    """The guide's files, relocated: certs, the wrong CA, /etc/edgefleet, the broker."""

    root: Path
    broker: mqtt.Broker
    cert_port: int = 0
    """A second listener, the guide's plus its ``require_certificate`` line."""

    @property
    def certs(self) -> Path:
        return self.root / "etc-mosquitto-certs"

    @property
    def etc(self) -> Path:
        return self.root / "etc-edgefleet"

    def relocate(self, text: str) -> str:
        return text.replace("/etc/mosquitto/certs/", f"{self.certs}/").replace(
            "/etc/edgefleet", str(self.etc)
        )

    def twins_table(self, *, ca_file: Path | None = None) -> dict[str, TomlValue]:
        """The guide's ``[twins]`` table, on this broker as the guide says for its own machine."""
        table: dict[str, TomlValue] = {
            key: self.relocate(value) if isinstance(value, str) else value
            for key, value in tomllib.loads(guide_block("agent.toml"))["twins"].items()
        }
        table.update(
            broker_host="127.0.0.1", broker_port=self.broker.port, broker_server_name=SERVER_NAME
        )
        if ca_file is not None:
            table["broker_ca_file"] = ca_file
        return table


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    root = tmp_path_factory.mktemp("broker-tls")
    state = root / "var-lib-mosquitto"
    probe = Site(root=root, broker=None)  # type: ignore[arg-type]  # paths only, for now
    for folder in (probe.certs, root / "wrong-ca", state):
        folder.mkdir()
    run_sh(guide_block("make-certs"), probe.certs)
    run_sh(guide_block("make-certs"), root / "wrong-ca")  # another site's CA
    run_sh(guide_block("make-client-cert"), probe.certs)
    # Test-only: the group "edge-agent" exists where the package is installed; here root's.
    init = probe.relocate(guide_block("dynsec-init")).replace("/var/lib/mosquitto/", f"{state}/")
    run_sh(init.replace("edge-agent", "root"), root)
    port = free_port()
    config = probe.relocate(guide_block("mosquitto.conf"))
    config = config.replace("/var/lib/mosquitto/", f"{state}/")
    # Test-only: a free loopback port, and mosquitto stays root (it must write its state
    # under the test's tmp dir, which the mosquitto user may not enter).
    assert "listener 8883\n" in config
    config = config.replace("listener 8883\n", f"listener {port} 127.0.0.1\n")
    # Test-only: the optional client-certificate listener beside the plain-password one, so
    # one broker (one dynamic-security state) serves both.
    cert_port = free_port()
    listener = config[config.index("listener ") :].split("\n", 1)[1]
    config += f"\nlistener {cert_port} 127.0.0.1\n{listener}{guide_block('client-cert.conf')}"
    config += "user root\nlog_dest stdout\nlog_type all\n"
    broker = mqtt.run_config(
        root / "mosquitto",
        config,
        port=port,
        admin_username="admin",
        admin_password=(probe.etc / "mqtt-admin-password").read_text().strip(),
        tls_context=client_context(
            BrokerTls(ca_file=probe.certs / "ca.crt", server_name=SERVER_NAME)
        ),
    )
    try:
        yield Site(root=root, broker=broker, cert_port=cert_port)
    finally:
        broker.stop()


@pytest.fixture(scope="module")
def agent(site: Site) -> Iterator[Agent]:
    """A real server and an agent joined to it (each test starts the agent with its config)."""
    for folder in ("cloud", "edge"):
        (site.root / folder).mkdir()
    server = Server(workdir=site.root / "cloud")
    server.start()
    joined = Agent(name=NODE, workdir=site.root / "edge", server=server)
    try:
        joined.join()
        yield joined
    finally:
        joined.stop()
        server.stop()


def _log_lines(agent: Agent, needle: str) -> list[str]:
    assert agent.process is not None
    agent.process.check_running()  # a crash ends the wait at once, with its log
    return [line for line in agent.process.tail(400).splitlines() if needle in line]


def test_an_agent_with_the_wrong_ca_says_so_and_keeps_retrying(site: Site, agent: Agent) -> None:
    agent.tables = {"twins": site.twins_table(ca_file=site.root / "wrong-ca" / "ca.crt")}
    agent.start()
    try:
        lines = eventually(
            lambda: _log_lines(agent, "CERTIFICATE_VERIFY_FAILED"),
            lambda found: len(found) >= 2,  # it retried, it did not exit
            what="two failed TLS attempts logged",
            within=WITHIN,
        )
        assert "not signed by broker_ca_file" in lines[0], lines[0]
        assert f"{site.root}/wrong-ca/ca.crt" in lines[0], lines[0]
        assert agent.status()["twins"]["ready"] is False  # type: ignore[index]
    finally:
        agent.stop()


def test_agent_and_device_over_tls_as_the_guide_says(site: Site, agent: Agent) -> None:
    agent.tables = {"twins": site.twins_table()}
    agent.start()
    try:
        agent.wait_ready(timeout=WITHIN)  # includes twins: the broker session is up over TLS
        agent.wait_connected(timeout=WITHIN)
        claim_password = (site.etc / "mqtt-claim-password").read_text().strip()
        summary = command(
            "edge-agent",
            "simulate",
            "--broker",
            f"127.0.0.1:{site.broker.port}",
            "--broker-ca-file",
            site.certs / "ca.crt",
            "--broker-server-name",
            SERVER_NAME,
            "--claim-password",
            claim_password,
            "--node",
            NODE,
            "--prefix",
            "tls",
            "--reports",
            "2",
            "--interval",
            "0.1",
            timeout=WITHIN,
        )
        totals = json.loads(summary)
        assert (totals["onboarded"], totals["reports"], totals["errors"]) == (1, 2, 0), totals

        def cloud_twin() -> dict[str, Any]:
            status, body = agent.server.get(
                f"/api/v1/devices/{NODE}:tls-0/twin", token=agent.server.admin_token
            )
            assert status == 200, body
            twin: dict[str, Any] = json.loads(body)
            return twin

        twin = eventually(
            cloud_twin,
            lambda twin: twin["reported"]["$version"] == 2,
            what="the device's two reports in the cloud",
            within=WITHIN,
            ignore=(AssertionError,),
        )
        assert set(twin["reported"]) - {"$version", "$metadata"}
    finally:
        agent.stop()


@pytest.mark.usefixtures("agent")
async def test_the_agent_role_is_the_guides_acl_table(site: Site) -> None:
    # The role exists once an agent has started on this broker (the tests above).
    answer = await site.broker.dynsec_command({"command": "getRole", "rolename": "edgefleet-agent"})
    acls = {(a["acltype"], a["topic"], a["allow"]) for a in answer["data"]["role"]["acls"]}
    table = guide_table("agent-acl")
    documented = {
        (acltype, topic, allow == "yes")
        for acltype, topic, allow in re.findall(
            r"^\| (\w+) \| (\S+) \| (yes|no) \|$", table, re.MULTILINE
        )
    }
    assert documented
    assert acls == documented


async def test_plain_tcp_to_the_tls_port_is_refused(site: Site) -> None:
    # A CONNECT in the clear: the broker closes the connection without a CONNACK (aiomqtt
    # would only notice at its connect timeout).
    reader, writer = await asyncio.open_connection(site.broker.host, site.broker.port)
    try:
        writer.write(CLEAR_CONNECT)
        await writer.drain()
        async with asyncio.timeout(WITHIN):
            try:
                answer = await reader.read(1024)
            except ConnectionResetError:
                answer = b""
        assert answer == b""  # closed; a CONNACK would start with 0x20
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError):
            await writer.wait_closed()
    # Nor is TLS enough when the certificate does not name what was dialled (hostname
    # verification: the certificate names mqtt.site.example and 192.0.2.10, not 127.0.0.1)...
    unnamed = client_context(BrokerTls(ca_file=site.certs / "ca.crt"))
    with pytest.raises(aiomqtt.MqttError, match="IP address mismatch"):
        async with site.broker.client(identifier="tls-unnamed", tls_context=unnamed, timeout=10):
            pass
    # ...while the same credential over TLS, checking the certificate's name, is let in.
    async with site.broker.client(identifier="tls-probe"):
        pass


async def test_a_client_certificate_where_the_broker_requires_one(site: Site) -> None:
    """The agent's own code (its session and the admin's) with the guide's client certificate."""
    assert site.broker.admin_password is not None
    tls = BrokerTls(
        ca_file=site.certs / "ca.crt",
        cert_file=site.certs / "edge-1.crt",
        key_file=site.certs / "edge-1.key",
        server_name=SERVER_NAME,
    )
    settings = TwinMqttSettings(
        data_dir=site.root / "cert-agent",
        node_name="cert-node",
        broker_host="127.0.0.1",
        broker_port=site.cert_port,
        broker_tls=tls,
        admin_password=site.broker.admin_password,
        claim_username="claim-cert",
        claim_password="claim-cert-pw",
        agent_username="agent-cert",
        agent_client_id="agent-cert",
        durability=Durability.NORMAL,
    )
    async with running(TwinMqttService(settings=settings, sender=CloudRecorder())) as service:
        assert service.ready.is_set()
    # Without a certificate the same listener lets nobody in: the broker ends the handshake
    # (TLS 1.3 tells the client so at its first read). At the socket: aiomqtt would only
    # notice at its connect timeout.
    no_certificate = client_context(dataclasses.replace(tls, cert_file=None, key_file=None))
    reader, writer = await asyncio.open_connection(
        "127.0.0.1", site.cert_port, ssl=no_certificate, server_hostname=SERVER_NAME
    )
    try:
        with pytest.raises(ssl.SSLError, match="CERTIFICATE_REQUIRED"):
            async with asyncio.timeout(WITHIN):
                await reader.read(1024)
    finally:
        writer.close()
        with contextlib.suppress(ConnectionError, ssl.SSLError):
            await writer.wait_closed()
