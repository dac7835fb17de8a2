"""Agent holder Leases and replica Leases of in-process ``Replicas`` on a real kube-apiserver.

Each ``Replicas`` is one replica (its own client, watch and Leases); their sessions are
given by the test. The official ``kubernetes`` client reads the Leases, past our code.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from typing import TYPE_CHECKING, Any

import kubernetes
import prometheus_client
import pytest

from tests.harness.waiting import eventually_async
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.replicas import rules
from tunnel_server.replicas.kube import Replicas
from tunnel_server.settings import ReplicaSettings

if TYPE_CHECKING:
    from tests.harness import kube

FAST = {"lease_duration": 4, "renew_interval": 0.5, "renew_deadline": 2.5}
"""Short Leases, so a dead replica's Lease runs out within the test."""


@contextlib.asynccontextmanager
async def running(replicas: Replicas) -> AsyncIterator[asyncio.Task[None]]:
    """Run one replica; on leaving, shut it down cleanly unless the test killed it."""
    task = asyncio.create_task(replicas.run(), name=f"test.{replicas.name}")  # noqa: TID251 - a test's own
    try:
        await asyncio.wait_for(replicas.registered.wait(), 60)
        await asyncio.wait_for(replicas.listed.wait(), 60)
        yield task
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await replicas.close()


@pytest.fixture
def make(
    kube_crds: kube.ControlPlane, namespace: str
) -> Callable[..., tuple[Replicas, dict[str, float]]]:
    def build(
        name: str, peer: str | None = None, **settings: float
    ) -> tuple[Replicas, dict[str, float]]:
        sessions: dict[str, float] = {}
        replicas = Replicas(
            settings=ReplicaSettings(name=name, **{**FAST, **settings}),  # type: ignore[arg-type]
            kube=KubeStoreSettings(namespace=namespace, kubeconfig=kube_crds.kubeconfig),
            peer_address=peer or f"{name}.peers:8443",
            sessions=lambda: dict(sessions),
            registry=prometheus_client.CollectorRegistry(),
        )
        return replicas, sessions

    return build


def official_lease(kube_crds: kube.ControlPlane, namespace: str, name: str) -> object:
    api = kubernetes.config.new_client_from_config(config_file=str(kube_crds.kubeconfig))
    with api:
        return kubernetes.client.CoordinationV1Api(api).read_namespaced_lease(name, namespace)


async def test_the_replica_holding_an_agent_is_seen_by_the_others_and_the_newest_wins(
    make: Callable[..., tuple[Replicas, dict[str, float]]],
    kube_crds: kube.ControlPlane,
    namespace: str,
) -> None:
    a, a_sessions = make("replica-a")
    b, b_sessions = make("replica-b")
    async with running(a), running(b):
        a_sessions["edge-1"] = time.time()
        await eventually_async(
            lambda: asyncio.sleep(0, b.holder_of("edge-1")),
            lambda held: held == "replica-a",
            what="b sees a hold edge-1",
        )
        lease = official_lease(kube_crds, namespace, "edgefleet-agent-edge-1")
        assert lease.spec.holder_identity == "replica-a"  # type: ignore[attr-defined]
        replica = official_lease(kube_crds, namespace, "edgefleet-replica-replica-b")
        assert replica.metadata.annotations["edgefleet.io/peer-address"] == "replica-b.peers:8443"  # type: ignore[attr-defined]

        # The agent reconnects to b; a has not noticed its old session die yet.
        b_sessions["edge-1"] = time.time()
        await eventually_async(
            lambda: asyncio.sleep(0, a.holder_of("edge-1")),
            lambda held: held == "replica-b",
            what="a sees b hold edge-1",
        )
        # a's scan now finds its old session gone: its release must not undo b's claim.
        del a_sessions["edge-1"]
        assert a.metrics is not None
        kept = a.metrics.holder_writes.labels("unchanged")
        await eventually_async(
            lambda: asyncio.sleep(0, kept._value.get()),
            lambda count: count >= 1,
            what="a's release found b's claim and wrote nothing",
        )
        assert a.holder_of("edge-1") == b.holder_of("edge-1") == "replica-b"
        assert sorted(a.alive()) == ["replica-a", "replica-b"]


async def test_a_race_for_one_agent_is_decided_by_the_rule_not_the_order(
    make: Callable[..., tuple[Replicas, dict[str, float]]],
    kube_crds: kube.ControlPlane,
    namespace: str,
) -> None:
    a, _ = make("replica-a")
    b, _ = make("replica-b")
    async with running(a), running(b):
        for round_, (older, newer) in enumerate(((a, b), (b, a), (a, b))):
            node = f"edge-{round_}"
            first = await a.write_holder(node, ("claim", 1000.0 + round_))
            assert first == "written"

            async def in_b_mirror(node: str = node) -> rules.LeaseRecord | None:
                return b.mirror.agent(node)

            await eventually_async(in_b_mirror, what="b's mirror has the lease")
            # Both decide on the same version at once: one write gets 409, reads, decides again.
            now = time.time()
            results = await asyncio.gather(
                older.write_holder(node, ("claim", now)),
                newer.write_holder(node, ("claim", now + 5.0)),
            )
            lease = official_lease(kube_crds, namespace, rules.agent_lease(node))
            assert lease.spec.holder_identity == newer.name, results  # type: ignore[attr-defined]
            assert results[1] == "written"
            assert results[0] in ("written", "lost"), results  # lost: it came second


async def test_a_dead_replicas_agents_are_held_by_nobody_then_taken_over(
    make: Callable[..., tuple[Replicas, dict[str, float]]],
) -> None:
    a, a_sessions = make("replica-a")
    b, b_sessions = make("replica-b")
    async with running(b):
        task = asyncio.create_task(a.run(), name="test.replica-a")  # noqa: TID251 - a test's own
        await asyncio.wait_for(a.registered.wait(), 60)
        a_sessions["edge-1"] = time.time() + 3600.0  # a session "newer" than b's will be
        await eventually_async(
            lambda: asyncio.sleep(0, b.holder_of("edge-1")),
            lambda held: held == "replica-a",
            what="b sees a hold edge-1",
        )
        task.cancel()  # a dies without a word: no release, no deletion of its Lease
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await eventually_async(
            lambda: asyncio.sleep(0, b.holder_of("edge-1")),
            lambda held: held is None,
            what="a's lease runs out",
            within=30,
        )
        assert b.alive() == ["replica-b"]
        b_sessions["edge-1"] = time.time()  # older than a's claim, but a is dead
        await eventually_async(
            lambda: asyncio.sleep(0, b.holder_of("edge-1")),
            lambda held: held == "replica-b",
            what="b takes edge-1 over",
        )
        if a._client is not None:
            await a._client.close()


async def test_a_reconnect_storm_is_coalesced_and_written_at_the_bounded_rate(
    make: Callable[..., tuple[Replicas, dict[str, float]]],
) -> None:
    rate, burst, agents = 20.0, 5, 60
    # The default Lease durations: a busy machine must not let the replica's own Lease lapse
    # (4 s in the other tests) in the middle of the storm, which would hide its holds.
    a, a_sessions = make(
        "replica-a",
        holder_writes_per_second=rate,
        holder_burst=burst,
        lease_duration=15,
        renew_interval=2.0,
        renew_deadline=10.0,
    )
    async with running(a):
        assert a.metrics is not None
        written = a.metrics.holder_writes.labels("written")
        start = time.monotonic()
        for flap in range(3):  # every agent connects, drops and connects again, before writes
            for index in range(agents):
                a_sessions[f"edge-{index}"] = 1000.0 + flap
            a.scan()
            if flap < 2:
                a_sessions.clear()
                a.scan()
        assert len(a.pending) <= agents, "one waiting change per agent"
        await eventually_async(
            lambda: asyncio.sleep(
                0, sum(a.holder_of(f"edge-{i}") == "replica-a" for i in range(agents))
            ),
            lambda held: held == agents,
            what="every agent recorded",
            within=60,
        )
        elapsed = time.monotonic() - start
        writes = written._value.get()
        # Coalesced: about one write per agent, not one per flap (a writer may have taken an
        # agent's first change before the flaps replaced it: at most HOLDER_WORKERS extra).
        assert agents <= writes <= agents + burst + 4, writes
        assert elapsed >= (agents - burst) / rate * 0.9, elapsed


async def test_a_second_replica_of_the_same_name_waits_until_the_first_is_gone(
    make: Callable[..., tuple[Replicas, dict[str, float]]], caplog: pytest.LogCaptureFixture
) -> None:
    first, _ = make("same", peer="10.0.0.1:8443")
    second, second_sessions = make("same", peer="10.0.0.2:8443")
    second_sessions["edge-1"] = time.time()
    async with running(first):
        task = asyncio.create_task(second.run(), name="test.second")  # noqa: TID251 - a test's own
        try:
            await eventually_async(
                lambda: asyncio.sleep(0, caplog.text),
                lambda text: "another replica named same is alive at 10.0.0.1:8443" in text,
                what="the second replica refuses the name",
            )
            assert not second.registered.is_set()
            assert first.holder_of("edge-1") is None, "the clashing replica holds nothing"
            assert not second.leading
        except BaseException:
            task.cancel()
            raise
    # The first stopped cleanly (its Lease deleted): the second registers and records edge-1.
    try:
        await asyncio.wait_for(second.registered.wait(), 60)
        await eventually_async(
            lambda: asyncio.sleep(0, second.holder_of("edge-1")),
            lambda held: held == "same",
            what="the second replica holds edge-1 now",
        )
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        await second.close()


async def test_a_singleton_runs_on_the_leader_only_and_moves_with_the_leadership(
    make: Callable[..., tuple[Replicas, dict[str, float]]],
) -> None:
    a, _ = make("replica-a")
    b, _ = make("replica-b")
    running_on: set[str] = set()

    def work_of(name: str) -> Callable[[], Coroutine[Any, Any, None]]:
        async def work() -> None:
            running_on.add(name)
            try:
                await asyncio.Event().wait()  # a singleton loop: runs until cancelled
            finally:
                running_on.discard(name)

        return work

    async with running(b):
        async with running(a), asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(r.while_leader("test.singleton", work_of(r.name)), name=r.name)
                for r in (a, b)
            ]
            leader = await eventually_async(
                lambda: asyncio.sleep(0, [r for r in (a, b) if r.leading]),
                lambda leading: len(leading) == 1,
                what="one leader",
            )
            await eventually_async(
                lambda: asyncio.sleep(0, set(running_on)),
                lambda on: on == {leader[0].name},
                what="the singleton on the leader only",
            )
            for task in tasks:
                task.cancel()
        # a stopped cleanly (released the leadership if it led); b runs it now.
        async with asyncio.TaskGroup() as group:
            task = group.create_task(
                b.while_leader("test.singleton", work_of("replica-b")), name="replica-b"
            )
            await eventually_async(
                lambda: asyncio.sleep(0, set(running_on)),
                lambda on: on == {"replica-b"},
                what="the singleton on b after a left",
                within=30,
            )
            assert b.leading
            task.cancel()
