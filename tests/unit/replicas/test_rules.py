"""The replicas' sans-IO rules as synchronous scripts, and the election fuzzed with hypothesis.

The election runs against ``FakeApi``: one Lease with a resourceVersion that every write must
name (the API's optimistic concurrency), and writes that can be made to fail (a partition).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from hypothesis import given, settings
from hypothesis import strategies as st

from tunnel_server.replicas import rules
from tunnel_server.replicas.mirror import LeaseMirror

DURATION, RENEW, DEADLINE = 15, 2.0, 10.0


def candidate(name: str) -> rules.Election:
    return rules.Election(me=name, duration=DURATION, renew_interval=RENEW, renew_deadline=DEADLINE)


@dataclass
class FakeApi:
    lease: rules.LeaseRecord | None = None
    revision: int = 0

    def write(self, record: rules.LeaseRecord) -> rules.LeaseRecord | None:
        """The stored record, or None on 409 (a stale or missing version)."""
        held = None if self.lease is None else self.lease.version
        if record.version != held:
            return None
        self.revision += 1
        self.lease = replace(record, version=str(self.revision))
        return self.lease


def step(api: FakeApi, election: rules.Election, now: float, *, reachable: bool = True) -> None:
    """One turn of the driver's loop (kube.Replicas._elect) at ``now``."""
    if not reachable:
        election.failed(now, conflict=False)
        election.next(now)
        return
    election.observe(api.lease, now)
    action = election.next(now)
    if isinstance(action, rules.Write):
        written = api.write(action.record)
        if written is None:
            election.failed(now, conflict=True)
        else:
            election.written(written, started=now)


def test_a_replica_is_alive_until_its_lease_runs_out() -> None:
    assert rules.alive(100.0, 15, 114.9)
    assert not rules.alive(100.0, 15, 115.0)
    assert not rules.alive(None, 15, 100.0)
    assert not rules.alive(100.0, None, 100.0)


def test_the_first_candidate_takes_an_empty_lease_and_the_second_waits() -> None:
    api, a, b = FakeApi(), candidate("a"), candidate("b")
    step(api, a, 0.0)
    assert a.leading
    assert api.lease is not None
    assert api.lease.holder == "a"
    step(api, b, 0.5)
    assert not b.leading
    for now in (2.0, 4.0, 6.0, 8.0, 10.0, 12.0, 14.0, 16.0, 18.0, 20.0):
        step(api, a, now)  # a renews: b sees a change every time and never takes over
        step(api, b, now + 0.1)
        assert a.leading
        assert not b.leading
    assert api.lease.holder == "a"
    assert api.lease.transitions == 0


def test_a_dead_leader_is_replaced_after_the_duration_as_the_follower_saw_it() -> None:
    api, a, b = FakeApi(), candidate("a"), candidate("b")
    step(api, a, 0.0)
    step(api, b, 1.0)  # b first sees the lease at 1.0
    step(api, b, 15.9)
    assert not b.leading, "not before 15 s after b saw the last change"
    step(api, b, 16.0)
    assert b.leading
    assert api.lease is not None
    assert api.lease.holder == "b"
    assert api.lease.transitions == 1
    step(api, a, 16.5)  # a comes back: it sees b hold it and stops
    assert not a.leading


def test_a_conflict_on_renew_ends_the_leadership_at_once() -> None:
    api, a = FakeApi(), candidate("a")
    step(api, a, 0.0)
    assert api.lease is not None
    api.lease = replace(api.lease, holder="b", version="99")  # b wrote it meanwhile
    a.observe(replace(api.lease, holder="a", version="1"), 2.0)  # a's read predates b's write
    action = a.next(2.0)
    assert isinstance(action, rules.Write)
    assert api.write(action.record) is None
    a.failed(2.0, conflict=True)
    assert not a.leading


def test_a_leader_cut_off_from_the_api_stops_before_anyone_may_take_over() -> None:
    api, a, b = FakeApi(), candidate("a"), candidate("b")
    step(api, a, 0.0)
    step(api, b, 0.1)
    now = 0.0
    while now < 30.0:
        now += 0.5
        step(api, a, now, reachable=False)
        step(api, b, now)
        assert not (a.leads(now) and b.leads(now)), now
    assert not a.leading
    assert b.leading


def test_release_lets_the_follower_take_over_at_its_next_try() -> None:
    api, a, b = FakeApi(), candidate("a"), candidate("b")
    step(api, a, 0.0)
    step(api, b, 0.5)
    release = a.release()
    assert release is not None
    assert api.write(release.record) is not None
    assert not a.leading
    step(api, b, 1.0)
    assert b.leading
    assert a.release() is None


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 2), st.floats(0.0, 4.0), st.booleans()), min_size=1, max_size=120
    )
)
def test_never_two_leaders_whatever_the_timing_and_the_partitions(
    turns: list[tuple[int, float, bool]],
) -> None:
    """Three candidates take turns at random times, each turn reaching the API or not."""
    api = FakeApi()
    candidates = [candidate(name) for name in ("a", "b", "c")]
    now = 0.0
    for who, advance, reachable in turns:
        now += advance
        step(api, candidates[who], now, reachable=reachable)
        leaders = [c.me for c in candidates if c.leads(now)]
        assert len(leaders) <= 1, (now, leaders)
        if leaders:
            assert api.lease is not None
            assert api.lease.holder == leaders[0]


def agent(holder: str | None, since: float | None, version: str = "5") -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.agent_lease("edge-1"),
        holder=holder,
        acquire_time=since,
        renew_time=since,
        kind="agent",
        node="edge-1",
        version=version,
    )


def test_the_newest_session_wins_the_agent() -> None:
    live = {"a", "b"}
    assert rules.claim_wins(None, me="a", since=10.0, live=live)
    assert rules.claim_wins(agent(None, 5.0), me="a", since=10.0, live=live)
    assert rules.claim_wins(agent("b", 5.0), me="a", since=10.0, live=live)
    assert not rules.claim_wins(agent("b", 20.0), me="a", since=10.0, live=live)
    assert rules.claim_wins(agent("b", 20.0), me="a", since=10.0, live={"a"}), "b is dead"
    claimed = rules.claim(agent("b", 5.0), node="edge-1", me="a", since=10.0)
    assert (claimed.holder, claimed.acquire_time, claimed.version) == ("a", 10.0, "5")
    assert claimed.transitions == 1


def test_a_release_only_undoes_this_sessions_claim() -> None:
    assert rules.release(agent("a", 10.0), me="a", since=10.0) == agent(None, 10.0)
    assert rules.release(agent("a", 12.0), me="a", since=10.0) is None, "a newer session"
    assert rules.release(agent("b", 10.0), me="a", since=10.0) is None, "another replica's"
    assert rules.release(None, me="a", since=10.0) is None


def test_leases_round_trip_through_the_api_shape() -> None:
    record = replace(agent("a", 1764877880.123456), peer="10.0.0.1:8443", transitions=3)
    again = rules.from_object(rules.to_object(record, namespace="ns"))
    assert again.holder == "a"
    assert again.node == "edge-1"
    assert again.peer == "10.0.0.1:8443"
    assert again.transitions == 3
    assert again.acquire_time is not None
    assert abs(again.acquire_time - 1764877880.123456) < rules.TIME_SLACK
    assert rules.release(again, me="a", since=1764877880.123456) is not None


def test_long_node_names_get_a_hashed_lease_name() -> None:
    long = "n" * 250
    name = rules.agent_lease(long)
    assert len(name) <= rules.MAX_NAME
    assert name != rules.agent_lease("n" * 249)
    assert rules.agent_lease("edge-1") == "edgefleet-agent-edge-1"
    assert not rules.valid_replica_name("Bad_Name")
    assert rules.valid_replica_name("tunnel-server-7f9c-abcde")


def replica(name: str, renew: float, version: str) -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.replica_lease(name),
        holder=name,
        renew_time=renew,
        duration=DURATION,
        kind="replica",
        version=version,
    )


def test_the_mirror_ignores_holders_whose_replica_died_and_old_versions() -> None:
    mirror = LeaseMirror()
    mirror.reset([replica("a", 100.0, "1"), replica("b", 100.0, "2"), agent("a", 90.0, "3")])
    assert mirror.holder_of("edge-1", 110.0) == "a"
    assert mirror.holder_of("edge-1", 115.0) is None, "a's lease ran out"
    assert mirror.alive(110.0) == {"a", "b"}
    mirror.put(agent("b", 95.0, "7"))
    mirror.put(agent("a", 90.0, "4"))  # a late event of an older version
    assert mirror.holder_of("edge-1", 110.0) == "b"
    mirror.delete(replica("b", 100.0, "8"))
    assert mirror.holder_of("edge-1", 110.0) is None, "b shut down cleanly"
    mirror.put(replica("b", 100.0, "6"))  # older than the deletion
    assert mirror.alive(110.0) == {"a"}
    assert mirror.holder_of("edge-2", 110.0) is None
