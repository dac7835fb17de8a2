"""The ``fleet`` stream end to end: a real server, a real member cluster, a real cluster agent.

Works PUT through the REST API reach the agent and are applied in the member; their status
comes back; leases renew, also across certificate renewals; works deleted while the agent is
away are removed when it returns; a restarted agent keeps its works; a fake agent that sends
bad frames gets its stream reset and disturbs nothing else.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import prometheus_client
import pytest

from edge_agent.settings import JoinSettings, TunnelClientSettings
from edge_agent.tunnel_client import TunnelClient
from fleet_model import wire
from tests.harness.daemons import join_agent
from tests.harness.waiting import eventually, eventually_async
from tests.integration.fleet.stream.conftest import (
    REGION,
    ZONE,
    Hub,
    config_map,
    no_tracebacks,
    serial,
)
from tunnel_aio import StreamError, StreamRejectedError, TunnelConnection, TunnelStream

pytestmark = [pytest.mark.kube, pytest.mark.timeout(600)]


def condition(work: dict[str, Any] | None, kind: str) -> str | None:
    if work is None:
        return None
    for item in work.get("status", {}).get("conditions", []):
        if item.get("type") == kind:
            return str(item.get("status"))
    return None


def wait_applied(hub: Hub, name: str, config: str) -> dict[str, Any]:
    """Until the member has ConfigMap ``config`` and Work ``name`` says Applied=True."""
    eventually(
        lambda: hub.member_object("configmap", config),
        what=f"configmap {config} in the member",
        within=60,
    )
    work = eventually(
        lambda: hub.work(name),
        lambda work: condition(work, "Applied") == "True",
        what=f"work {name} Applied=True in the hub",
        within=60,
    )
    assert work is not None
    return work


def test_a_work_reaches_the_member_and_its_status_comes_back(hub: Hub) -> None:
    pushed = hub.metric("tunnel_server_fleet_works_pushed_total")
    hub.put_work("one", [config_map("one", colour="blue")])
    work = wait_applied(hub, "one", "one")
    assert hub.member_object("configmap", "one")["data"] == {"colour": "blue"}  # type: ignore[index]
    assert hub.metric("tunnel_server_fleet_works_pushed_total") >= pushed + 1
    assert hub.metric("tunnel_server_fleet_status_updates_total", result="written") >= 1
    assert work["status"]["observedGeneration"] == work["metadata"]["generation"]

    # A change travels the same way, and the status follows the new generation.
    hub.put_work("one", [config_map("one", colour="green")])
    eventually(
        lambda: hub.member_object("configmap", "one"),
        lambda cm: cm is not None and cm["data"] == {"colour": "green"},
        what="the changed configmap in the member",
        within=60,
    )
    eventually(
        lambda: hub.work("one"),
        lambda w: (
            w is not None
            and w.get("status", {}).get("observedGeneration") == w["metadata"]["generation"]
            and condition(w, "Applied") == "True"
        ),
        what="the status of the new generation",
        within=60,
    )


def test_leases_renew_with_the_clusters_claims(hub: Hub) -> None:
    before = hub.metric("tunnel_server_fleet_lease_renewals_total")
    eventually(
        lambda: hub.metric("tunnel_server_fleet_lease_renewals_total"),
        lambda renewals: renewals >= before + 3,
        what="three more lease renewals (every second)",
        within=30,
    )
    assert hub.metric("tunnel_server_fleet_streams") == 1
    # What the agent renews with: claims from its status sample of the member (2 kwok nodes
    # of 4 CPUs and 8Gi, both labelled with the region and zone).
    fleet = eventually(
        hub.agent_fleet,
        lambda fleet: fleet["claims"] is not None,
        what="claims sent with a lease",
        within=30,
    )
    assert fleet["connected"] is True
    assert fleet["lease_seconds"] == 1
    claims = fleet["claims"]
    assert claims["region"] == REGION
    assert claims["zone"] == ZONE
    assert claims["nodes"] == "2"
    assert claims["platform"] == "other"  # kwok's nodes here have no providerID
    assert claims["kubernetes.version"].startswith("v1.")
    assert fleet["allocatable"] == {"cpu": "8", "memory": "16Gi"}
    assert fleet["capacity"] == {"cpu": "8", "memory": "16Gi"}


def test_a_certificate_renewal_never_stops_the_lease(hub: Hub) -> None:
    """OCM's agents stopped renewing their lease after a certificate change; ours do not."""
    first = serial(hub.agent)
    eventually(
        lambda: serial(hub.agent),
        lambda now: now != first,
        what="a certificate renewal",
        within=40,
        every=0.5,
    )
    second = serial(hub.agent)
    after_first = hub.metric("tunnel_server_fleet_lease_renewals_total")
    eventually(
        lambda: serial(hub.agent),
        lambda now: now not in (first, second),
        what="a second certificate renewal",
        within=40,
        every=0.5,
    )
    renewed = hub.metric("tunnel_server_fleet_lease_renewals_total")
    assert renewed >= after_first + 5, "leases went on through the renewal"
    # The renewals went over the live session: the stream was never reopened for them.
    streams_before = hub.metric("tunnel_server_fleet_lease_renewals_total")
    eventually(
        lambda: hub.metric("tunnel_server_fleet_lease_renewals_total"),
        lambda n: n >= streams_before + 2,
        what="leases still renewing after the second certificate",
        within=20,
    )
    assert hub.metric("tunnel_server_fleet_streams") == 1


def test_a_work_deleted_while_the_agent_is_away_is_removed_when_it_returns(hub: Hub) -> None:
    hub.put_work("gone", [config_map("gone", x="1")])
    wait_applied(hub, "gone", "gone")
    hub.agent.stop()
    status, _ = hub.request("DELETE", "/api/v1/fleet/works/gone")
    assert status == 200
    assert hub.member_object("configmap", "gone") is not None, "nobody removed it yet"
    hub.agent.start()
    hub.agent.wait_connected()
    eventually(
        lambda: hub.member_object("configmap", "gone"),
        lambda cm: cm is None,
        what="the deleted work's configmap removed after the agent came back",
        within=60,
    )
    assert hub.agent_fleet()["deletes"] >= 1
    assert hub.work("gone") is None


def test_a_restarted_agent_keeps_its_works_applied(hub: Hub) -> None:
    hub.put_work("kept", [config_map("kept", y="2")])
    wait_applied(hub, "kept", "kept")
    hub.agent.stop()
    # While the agent is down, someone deletes the resource by hand.
    hub.member.kubectl("delete", "configmap", "kept", "-n", "default")
    hub.agent.start()
    eventually(
        lambda: hub.member_object("configmap", "kept"),
        lambda cm: cm is not None and cm["data"] == {"y": "2"},
        what="the work's configmap put back by the restarted agent",
        within=60,
    )
    hub.agent.wait_connected()
    fleet = eventually(
        hub.agent_fleet,
        lambda fleet: fleet["connected"],
        what="the fleet stream up again",
        within=30,
    )
    # It still holds every work of this cluster the hub has (one, kept, after-elsewhere...).
    status, listed = hub.request("GET", "/api/v1/fleet/works")
    assert status == 200
    ours = [w for w in listed["items"] if w["spec"]["clusterName"] == "fleet-a"]
    assert fleet["works"] == len(ours)
    # And it is live: a change made now is applied.
    hub.put_work("kept", [config_map("kept", y="3")])
    eventually(
        lambda: hub.member_object("configmap", "kept"),
        lambda cm: cm is not None and cm["data"] == {"y": "3"},
        what="a change after the restart applied",
        within=60,
    )


async def _fake_agent(name: str, base: Path, hub: Hub, *, kind: str, task: Any) -> None:
    """A tunnel session of a freshly joined ``kind`` identity that runs ``task(connection)``."""
    data_dir = base / f"fake-{name}"
    join_agent(hub.server, name, data_dir, kind=kind)
    client = TunnelClient(
        data_dir=data_dir,
        # Certificates live 20 s here: renew like the real agent does.
        settings=TunnelClientSettings(backoff_base=0.2, backoff_cap=1.0, renew_check_interval=0.5),
        join_settings=JoinSettings(),
        registry=prometheus_client.CollectorRegistry(),
    )
    done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    async def run(connection: TunnelConnection) -> None:
        try:
            await task(connection)
        except BaseException as error:
            if not done.done():
                done.set_exception(error)
            raise
        if not done.done():
            done.set_result(None)
        client.stop()

    client.session_tasks["fake"] = run
    async with asyncio.TaskGroup() as group:
        group.create_task(client.run(), name="fake-agent")
        async with asyncio.timeout(60):
            await asyncio.shield(done)
    # The fake session is over for the server too (only the real agent's is left); waiting
    # for it also lets the loop finish closing the fake's TLS transport before the test ends.
    await eventually_async(
        _metric_async(hub, "tunnel_server_sessions"),
        lambda sessions: sessions == 1,
        what="the fake agent's session gone",
        within=30,
    )


async def test_bad_frames_reset_only_that_stream(hub: Hub, tmp_path: Path) -> None:
    resets = hub.metric("tunnel_server_fleet_stream_resets_total", reason="protocol")
    renewals = hub.metric("tunnel_server_fleet_lease_renewals_total")

    async def bad_then_good(connection: TunnelConnection) -> None:
        for garbage in (
            b"\x00\x00\x00\x05nope!",  # not JSON
            b"\xff\xff\xff\xff",  # a length over the cap
            wire.encode(wire.Removed(work="x")),  # not a hello first
            wire.encode(wire.Hello(works={})) + wire.encode(wire.Hello(works={})),  # two hellos
        ):
            stream = await connection.open_stream(wire.FLEET_TARGET, timeout=10)
            await stream.write(garbage)
            with pytest.raises(StreamError):
                await _read_to_the_end(stream)
        # The session itself is fine: a proper hello is answered with the settings.
        stream = await connection.open_stream(wire.FLEET_TARGET, timeout=10)
        await stream.write(wire.encode(wire.Hello(works={"never-existed": 3})))
        decoder = wire.Decoder(sender="cloud")
        messages: list[object] = []
        while not messages:
            messages += decoder.feed(await stream.read())
        assert isinstance(messages[0], wire.Settings)
        stream.reset()

    await _fake_agent("fake-bad", tmp_path, hub, kind="cluster", task=bad_then_good)
    assert hub.metric("tunnel_server_fleet_stream_resets_total", reason="protocol") == resets + 4

    # Nothing else was disturbed: the real agent's stream and leases went on.
    await eventually_async(
        _metric_async(hub, "tunnel_server_fleet_lease_renewals_total"),
        lambda n: n >= renewals + 2,
        what="the real agent's leases",
        within=30,
    )
    assert hub.agent_fleet()["connected"] is True
    assert hub.agent.process is not None
    assert not no_tracebacks(hub.server.workdir / "tunnel-server.log")


class _Reader:
    """The cloud's messages on one stream, one at a time."""

    def __init__(self, stream: TunnelStream) -> None:
        self.stream = stream
        self.decoder = wire.Decoder(sender="cloud")
        self.pending: list[object] = []

    async def next(self) -> object:
        while not self.pending:
            chunk = await self.stream.read()
            assert chunk, "the cloud ended the stream"
            self.pending += self.decoder.feed(chunk)
        return self.pending.pop(0)


async def test_a_second_cluster_gets_its_own_works_and_writes_their_status(
    hub: Hub, tmp_path: Path
) -> None:
    """A fake cluster agent speaks the protocol by hand: what it gets, what it may write.

    (A connected cluster is accepted here: the controller's registration accepts a cluster
    that joined with a token needing no approval, and revokes one an admin denies.)
    """
    name = "fake-second"

    async def call(method: str, url: str, body: object = None) -> tuple[int, Any]:
        return await asyncio.to_thread(hub.request, method, url, body)

    async def second_cluster(connection: TunnelConnection) -> None:
        renewals = await asyncio.to_thread(hub.metric, "tunnel_server_fleet_lease_renewals_total")
        stream = await connection.open_stream(wire.FLEET_TARGET, timeout=10)
        await stream.write(wire.encode(wire.Hello(works={}, claims={"region": "x"})))
        reader = _Reader(stream)
        assert isinstance(await reader.next(), wire.Settings)
        # Its hello counted as a lease renewal.
        assert (
            await asyncio.to_thread(hub.metric, "tunnel_server_fleet_lease_renewals_total")
            > renewals
        )
        work = {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "Work",
            "metadata": {"name": "for-second"},
            "spec": {
                "clusterName": name,
                "workload": {"manifests": [config_map("p")]},
                "deleteOption": {"propagationPolicy": "Orphan"},
            },
        }
        assert (await call("PUT", "/api/v1/fleet/works/for-second", work))[0] in (200, 201)
        message = await reader.next()
        while isinstance(message, wire.Settings):  # the controller may set the lease period
            message = await reader.next()
        assert isinstance(message, wire.WorkMessage), message
        assert message.name == "for-second"
        assert "status" not in message.document
        # Its status for the version it got is written; one for another version is not.
        written = await asyncio.to_thread(
            hub.metric, "tunnel_server_fleet_status_updates_total", result="written"
        )
        stale = await asyncio.to_thread(
            hub.metric, "tunnel_server_fleet_status_updates_total", result="stale"
        )
        condition_row = {"type": "Applied", "status": "True", "reason": "AppliedManifestWork"}
        for version in (message.resource_version + 1000, message.resource_version):
            status = {"conditions": [condition_row], "observedGeneration": 1, "evil": True}
            await stream.write(
                wire.encode(wire.Status(work="for-second", resource_version=version, status=status))
            )
        await eventually_async(
            _metric_async(hub, "tunnel_server_fleet_status_updates_total", result="written"),
            lambda count: count == written + 1,
            what="the status of the version it got written",
            within=10,
        )
        assert (
            await asyncio.to_thread(
                hub.metric, "tunnel_server_fleet_status_updates_total", result="stale"
            )
            == stale + 1
        )
        stored = await asyncio.to_thread(hub.work, "for-second")
        assert stored is not None
        assert stored["status"]["conditions"][0]["type"] == "Applied"
        assert "evil" not in stored["status"]
        # Deleted: the delete comes, with the work's policy.
        assert (await call("DELETE", "/api/v1/fleet/works/for-second"))[0] == 200
        message = await reader.next()
        while isinstance(message, wire.Settings):
            message = await reader.next()
        assert message == wire.Delete(work="for-second", propagation_policy="Orphan")
        stream.reset()

    await _fake_agent(name, tmp_path, hub, kind="cluster", task=second_cluster)


async def test_a_node_session_cannot_open_the_fleet_stream(hub: Hub, tmp_path: Path) -> None:
    async def try_fleet(connection: TunnelConnection) -> None:
        with pytest.raises(StreamRejectedError, match="cluster agents"):
            await connection.open_stream(wire.FLEET_TARGET, timeout=10)

    await _fake_agent("plain-node", tmp_path, hub, kind="node", task=try_fleet)


async def _read_to_the_end(stream: TunnelStream) -> None:
    while await stream.read():
        pass


def _metric_async(hub: Hub, name: str, **labels: str) -> Any:
    async def probe() -> float:
        return await asyncio.to_thread(hub.metric, name, **labels)

    return probe


def test_no_work_for_another_cluster_reaches_this_one(hub: Hub) -> None:
    status, answer = hub.request(
        "PUT",
        "/api/v1/fleet/works/elsewhere",
        {
            "apiVersion": "fleet.edgefleet.io/v1alpha1",
            "kind": "Work",
            "metadata": {"name": "elsewhere"},
            "spec": {
                "clusterName": "another",
                "workload": {"manifests": [config_map("elsewhere")]},
            },
        },
    )
    assert status in (200, 201), answer
    # A work of ours written after it arrives: the other one was never sent here.
    hub.put_work("after-elsewhere", [config_map("after-elsewhere")])
    wait_applied(hub, "after-elsewhere", "after-elsewhere")
    assert hub.member_object("configmap", "elsewhere") is None
    status, _ = hub.request("DELETE", "/api/v1/fleet/works/elsewhere")
    assert status == 200
