"""The console's Clusters pages in headless Chromium, against real processes.

A real ``tunnel-server``, a real member kube-apiserver, and a cluster identity (``token create
--kind cluster`` + ``edge-agent join``) whose tunnel client, status reporter and
``ClusterStatusSource`` (what the agent's cluster mode runs) run in a thread of the test. The
list and the cluster page show the member's counts, follow a change in the member and the agent
going offline and back without a reload, and the nodes page does not list the cluster. A second
cluster joined with an approval token is approved and then revoked on its page.
Screenshots go to ``<test_output_dir>/console/``.
"""

from __future__ import annotations

import asyncio
import json
import subprocess
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from dataclasses import dataclass, field
from pathlib import Path

import prometheus_client
import pytest
from playwright.sync_api import Browser, Page, expect

from edge_agent.cluster.status import SOURCE_NAME, ClusterStatusSource
from edge_agent.node_status import NodeStatusReporter, NodeStatusSettings
from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from tests.harness import kube
from tests.harness.daemons import BIN, Server, command
from tests.integration.cluster_status.conftest import (
    NS,
    apply,
    fake_node,
    fake_pod,
    kubectl,
    set_phase,
)
from tests.integration.console.conftest import Api, console_page, wait_for

pytestmark = pytest.mark.kube

CLUSTER = "east"
LIVE = 20_000
"""ms: a guard against hangs while waiting for a live change (reports come every 0.5 s)."""


async def _transports_closed(loop: asyncio.AbstractEventLoop, *, within: float = 5.0) -> None:
    """Let TLS transports that are still shutting down finish closing their sockets.

    A closed aiohttp session or WebSocket leaves its TLS transport closing (close_notify sent,
    the peer's awaited); closing the loop then would strand the socket, and a later garbage
    collection would fail whatever test runs then with an unclosed-socket ResourceWarning.
    ``_transports`` is the selector loop's private table of its transports (test code only).
    """
    table = getattr(loop, "_transports", {})
    deadline = loop.time() + within
    while loop.time() < deadline:
        if all(getattr(t, "_sock", None) is None for t in list(table.values())):
            return
        await asyncio.sleep(0.05)  # nothing signals a socket being closed: look again


@dataclass(kw_only=True)
class ClusterAgent:
    """What cluster mode runs, on its own event loop in a thread: tunnel, reports, sampling."""

    data_dir: Path
    plane: kube.ControlPlane
    _loop: asyncio.AbstractEventLoop | None = None
    _thread: threading.Thread | None = None
    _client: TunnelClient | None = None
    _done: Future[None] = field(default_factory=Future)

    def start(self) -> None:
        self._done = Future()
        started = threading.Event()

        def main() -> None:
            loop = asyncio.new_event_loop()
            self._loop = loop
            try:
                loop.run_until_complete(self._run(started))
                self._done.set_result(None)
            except BaseException as error:  # noqa: BLE001 - handed to the test thread
                self._done.set_exception(error)
            finally:
                loop.run_until_complete(_transports_closed(loop))
                loop.close()

        self._thread = threading.Thread(target=main, name="cluster-agent", daemon=True)
        self._thread.start()
        assert started.wait(30), "the agent's loop did not start"

    async def _run(self, started: threading.Event) -> None:
        import aiohttp  # noqa: PLC0415 - only this thread's loop uses it

        client = TunnelClient(
            data_dir=self.data_dir,
            settings=TunnelClientSettings(backoff_base=0.1, backoff_cap=0.5),
            join_settings=JoinSettings(),
            registry=prometheus_client.CollectorRegistry(),
        )
        self._client = client
        connector = aiohttp.TCPConnector(ssl=self.plane.ssl_context())
        timeout = aiohttp.ClientTimeout(total=10)
        async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:

            async def get_json(path: str) -> object:
                headers = {"Authorization": f"Bearer {self.plane.token}"}
                async with session.get(self.plane.url + path, headers=headers) as answer:
                    answer.raise_for_status()
                    if answer.content_type != "application/json":
                        return await answer.text()
                    return await answer.json()

            source = ClusterStatusSource(get_json=get_json, interval=0.5)
            reporter = NodeStatusReporter(
                client=client,
                settings=NodeStatusSettings(interval=0.5, full_every=2.0),
                data_dir=self.data_dir,
                extra_sources={SOURCE_NAME: source.metrics},
            )
            async with asyncio.TaskGroup() as group:
                tunnel = group.create_task(client.run(), name="test.tunnel")
                helpers = [
                    group.create_task(source.run(), name="test.cluster-status"),
                    group.create_task(reporter.run(), name="test.reporter"),
                ]
                started.set()
                await tunnel
                for task in helpers:
                    task.cancel()

    def stop(self) -> None:
        if self._loop is None or self._client is None or self._done.done():
            return
        self._loop.call_soon_threadsafe(self._client.stop)
        self._done.result(timeout=30)
        assert self._thread is not None
        self._thread.join(timeout=10)


@dataclass
class ClusterSystem:
    server: Server
    plane: kube.ControlPlane
    agent: ClusterAgent
    api: Api


@pytest.fixture(scope="module")
def cluster_system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterSystem]:
    workdir = tmp_path_factory.mktemp("console-clusters")
    plane = kube.start("member", workdir / "member")
    server = Server(workdir=workdir)
    agent: ClusterAgent | None = None
    try:
        kubectl(plane, "create", "namespace", NS)
        apply(
            plane,
            [
                fake_node("n1", ready=True, cpu="4", memory="8Gi"),
                fake_node("n2", ready=True, cpu="3500m", memory="4Gi"),
                fake_node("n3", ready=False, cpu="2", memory="2048Mi"),
            ],
        )
        apply(plane, [fake_pod(f"web-{i}", NS, requests={"cpu": "250m"}) for i in range(4)])
        set_phase(plane, NS, ["web-0", "web-1"], "Running")
        server.start()
        token = server.cli("token", "create", "--kind", "cluster", "--name", CLUSTER).strip()
        data_dir = workdir / "agent"
        command(
            "edge-agent",
            "join",
            "--server",
            server.url,
            "--token",
            token,
            "--ca-hash",
            server.ca_hash,
            "--name",
            CLUSTER,
            "--data-dir",
            data_dir,
        )
        agent = ClusterAgent(data_dir=data_dir, plane=plane)
        agent.start()
        yield ClusterSystem(
            server=server,
            plane=plane,
            agent=agent,
            api=Api(server=server, token=server.admin_token),
        )
    finally:
        if agent is not None:
            agent.stop()
        server.stop()
        plane.stop()


@pytest.fixture
def page(browser: Browser, cluster_system: ClusterSystem) -> Iterator[Page]:
    with console_page(
        browser, base_url=cluster_system.server.url, height=860, ignored=lambda e: "404" in e
    ) as opened:
        yield opened


def sign_in(page: Page, token: str) -> None:
    page.goto("/")
    page.fill("#token", token)
    page.click("#signin-button")
    expect(page.locator("#live")).to_have_text("live")


def test_clusters_list_live(page: Page, cluster_system: ClusterSystem, shots: Path) -> None:
    sign_in(page, cluster_system.server.admin_token)
    # The nodes page lists nodes only: the cluster agent's row has its own page.
    expect(page.locator("#count")).to_have_text("0 of 0 nodes")
    expect(page.locator('[data-card="nodes"] .n')).to_have_text("0")
    expect(page.locator('[data-card="online"] .n')).to_have_text("0")
    expect(page.locator(f'tr[data-node="{CLUSTER}"]')).to_have_count(0)
    page.click('#nav a[href="#/clusters"]')
    expect(page.locator("#cluster-list h1")).to_have_text("Clusters")
    row = page.locator(f'tr[data-cluster="{CLUSTER}"]')
    expect(row.locator(".badge").first).to_have_text("online", timeout=LIVE)
    expect(row.locator('td[data-label="Version"]')).to_have_text(kube.KUBE_VERSION)
    expect(row.locator('td[data-label="Nodes ready"]')).to_have_text("2 / 3")
    expect(row.locator('td[data-label="Pods running"]')).to_have_text("2 / 4")
    expect(row.locator('td[data-label="CPU requested"]')).to_contain_text("1 / 9.5 cores")
    expect(row.locator('td[data-label="API server"]')).to_have_text("healthy")
    expect(page.locator('[data-card="online"] .n')).to_have_text("1")
    page.screenshot(path=shots / "clusters.png", full_page=True)

    # A change in the member reaches the page without a reload.
    page.evaluate("window.__marker = 'same page'")
    set_phase(cluster_system.plane, NS, ["web-2"], "Running")
    expect(row.locator('td[data-label="Pods running"]')).to_have_text("3 / 4", timeout=LIVE)

    # The agent stops: offline (its status stream ends), and back when it starts again.
    cluster_system.agent.stop()
    expect(row.locator(".badge").first).to_have_text("offline", timeout=LIVE)
    expect(row.locator('td[data-label="API server"]')).to_have_text("unknown")
    expect(row.locator('td[data-label="Pods running"]')).to_have_text("3 / 4")  # last known
    page.screenshot(path=shots / "clusters-offline.png", full_page=True)
    cluster_system.agent.start()
    expect(row.locator(".badge").first).to_have_text("online", timeout=LIVE)
    assert page.evaluate("window.__marker") == "same page", "updated live, without a reload"


def test_cluster_page(page: Page, cluster_system: ClusterSystem, shots: Path) -> None:
    sign_in(page, cluster_system.server.admin_token)
    page.goto(f"/#/clusters/{CLUSTER}")
    expect(page.locator("#cluster h1")).to_have_text(CLUSTER)
    expect(page.locator("#cluster-status .badge")).to_have_text("online", timeout=LIVE)
    facts = page.locator("#cluster-facts")
    expect(facts.locator('[data-fact="Kubernetes version"] dd')).to_have_text(kube.KUBE_VERSION)
    expect(facts.locator('[data-fact="Nodes ready"] dd')).to_have_text("2 / 3")
    expect(facts.locator('[data-fact="Memory requested"] dd')).to_contain_text("/ 14 GiB")
    expect(page.locator('#cluster-pods [data-card="pending"] .n')).not_to_have_text("\u2013")
    expect(page.locator("#cluster-warnings li")).to_have_text("1 of 3 nodes not ready")
    page.click("details.raw summary")
    expect(page.locator("#cluster-raw")).to_contain_text('"cluster.version"')
    page.screenshot(path=shots / "cluster.png", full_page=True)
    # A phone shows the same pages, stacked, nothing wider than the screen.
    page.set_viewport_size({"width": 375, "height": 800})
    page.screenshot(path=shots / "cluster-phone.png", full_page=True)
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.click('#nav a[href="#/clusters"]')
    expect(page.locator(f'tr[data-cluster="{CLUSTER}"] .badge').first).to_have_text("online")
    assert page.evaluate("document.documentElement.scrollWidth") <= 375
    page.screenshot(path=shots / "clusters-phone.png", full_page=True)


def test_unknown_cluster_says_so(page: Page, cluster_system: ClusterSystem) -> None:
    sign_in(page, cluster_system.server.admin_token)
    page.goto("/#/clusters/nowhere")
    expect(page.locator("#cluster-error")).to_contain_text("no cluster named 'nowhere'")


def test_approve_a_pending_cluster_then_revoke_it(
    page: Page, cluster_system: ClusterSystem, shots: Path
) -> None:
    name = "west"
    api = cluster_system.api
    status, body, _ = api.call(
        "POST",
        "/api/v1/tokens",
        body=json.dumps({"name": name, "kind": "cluster", "requireApproval": True}).encode(),
    )
    assert status == 201, body
    joiner = subprocess.Popen(
        [
            str(BIN / "edge-agent"),
            "join",
            "--server",
            cluster_system.server.url,
            "--token",
            str(body["token"]),
            "--ca-hash",
            cluster_system.server.ca_hash,
            "--name",
            name,
            "--data-dir",
            str(cluster_system.server.workdir / "agent-west"),
            "--wait-approval",
            "120",
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            api,
            f"/api/v1/clusters/{name}",
            lambda cluster: cluster["state"] == "pending",
            f"cluster {name} waiting for approval",
        )
        sign_in(page, cluster_system.server.admin_token)
        page.goto(f"/#/clusters/{name}")
        expect(page.locator("#cluster-status .badge")).to_have_text("pending")
        page.click("#cluster-approve")
        expect(page.locator("#cluster-done")).to_contain_text("Approved")
        _, err = joiner.communicate(timeout=LIVE / 1000)
        assert joiner.returncode == 0, err
    finally:
        if joiner.returncode is None:
            joiner.kill()
            joiner.communicate()
    assert api.get(f"/api/v1/clusters/{name}")["state"] == "approved"
    expect(page.locator("#cluster-revoke")).to_be_visible(timeout=LIVE)
    page.click("#cluster-revoke")
    expect(page.locator("dialog#confirm")).to_contain_text(f"Revoke {name}?")
    page.click("#dialog-ok")
    expect(page.locator("#cluster-done")).to_contain_text("Revoked")
    assert api.get(f"/api/v1/clusters/{name}")["state"] == "revoked"
    expect(page.locator("#cluster-status .badge")).to_have_text("revoked", timeout=LIVE)
    page.screenshot(path=shots / "cluster-revoked.png", full_page=True)
