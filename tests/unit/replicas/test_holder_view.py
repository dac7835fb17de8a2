"""Where a request for an agent goes (``holder_view``), as synchronous scripts on a real mirror.

A SIGKILLed holder is dead here at the first refused dial, not when its Lease runs out; a
renewal (a newer renewTime) or a good dial makes it alive again; its agents are
"reconnecting" for the window after its death, then offline; an agent back on a live
replica is forwarded there at once. The mirror tells its listeners of every change it took.
"""

from __future__ import annotations

from dataclasses import replace

from tunnel_server.replicas import rules
from tunnel_server.replicas.holder_view import Forward, HolderView, Offline, Reconnecting
from tunnel_server.replicas.mirror import LeaseMirror

T0 = 1_000_000.0
WINDOW = 60.0
_versions = iter(range(1, 10_000))


def replica(name: str, *, renewed: float, duration: int = 15) -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.replica_lease(name),
        holder=name,
        renew_time=renewed,
        duration=duration,
        kind="replica",
        peer=f"{name}.peers:8443",
        version=str(next(_versions)),
    )


def agent(node: str, holder: str | None) -> rules.LeaseRecord:
    return rules.LeaseRecord(
        name=rules.agent_lease(node),
        holder=holder,
        acquire_time=T0,
        kind="agent",
        node=node,
        version=str(next(_versions)),
    )


def fleet() -> tuple[LeaseMirror, HolderView]:
    mirror = LeaseMirror()
    mirror.reset([replica("a", renewed=T0), replica("b", renewed=T0), agent("edge-1", "b")])
    return mirror, HolderView(mirror, me="a", reconnect_window=WINDOW)


def test_a_live_holder_is_forwarded_to() -> None:
    _mirror, view = fleet()
    assert view.route("edge-1", T0 + 1) == Forward("b", "b.peers:8443")


def test_a_refused_dial_makes_the_holder_dead_at_once_until_it_renews() -> None:
    mirror, view = fleet()
    assert view.unreachable("b", T0 + 1)  # newly marked
    assert not view.unreachable("b", T0 + 2)  # already: the death keeps its first time
    assert view.marked() == ["b"]
    # Its Lease would hold until T0 + 15: dead here all the same, since the first failure.
    assert view.route("edge-1", T0 + 3) == Reconnecting("b", T0 + 1)
    # The same renewTime seen again (another field changed) is no renewal.
    mirror.put(replace(replica("b", renewed=T0), peer="b.other:8443"))
    assert view.route("edge-1", T0 + 4) == Reconnecting("b", T0 + 1)
    # A newer renewTime (one clock: b's own) is: alive again.
    mirror.put(replica("b", renewed=T0 + 5))
    assert view.route("edge-1", T0 + 5) == Forward("b", "b.peers:8443")
    assert view.marked() == []


def test_a_good_dial_clears_the_mark() -> None:
    _mirror, view = fleet()
    view.unreachable("b", T0 + 1)
    assert view.reached("b")
    assert not view.reached("b")
    assert view.route("edge-1", T0 + 2) == Forward("b", "b.peers:8443")


def test_reconnecting_for_the_window_after_the_death_then_offline() -> None:
    _mirror, view = fleet()
    view.unreachable("b", T0 + 1)
    assert isinstance(view.route("edge-1", T0 + WINDOW), Reconnecting)
    assert view.route("edge-1", T0 + 1 + WINDOW) == Offline()


def test_a_lease_that_ran_out_counts_from_its_end() -> None:
    _mirror, view = fleet()  # b renewed at T0 for 15 s; nobody dialled it
    assert view.route("edge-1", T0 + 14) == Forward("b", "b.peers:8443")
    assert view.route("edge-1", T0 + 20) == Reconnecting("b", T0 + 15)
    assert view.route("edge-1", T0 + 15 + WINDOW) == Offline()
    # Asked first long after: offline at once, never "reconnecting" for another window.
    _mirror, late = fleet()
    assert late.route("edge-1", T0 + 500) == Offline()


def test_a_deleted_lease_counts_from_when_this_view_saw_it_gone() -> None:
    mirror, view = fleet()
    mirror.delete(replica("b", renewed=T0))  # a clean shutdown deletes it
    assert view.route("edge-1", T0 + 2) == Reconnecting("b", T0 + 2)
    assert view.route("edge-1", T0 + 30) == Reconnecting("b", T0 + 2)
    assert view.route("edge-1", T0 + 2 + WINDOW) == Offline()


def test_the_agent_back_on_a_live_replica_is_forwarded_there() -> None:
    mirror, view = fleet()
    mirror.put(replica("c", renewed=T0))
    view.unreachable("b", T0 + 1)
    assert isinstance(view.route("edge-1", T0 + 2), Reconnecting)
    mirror.put(agent("edge-1", "c"))
    assert view.route("edge-1", T0 + 3) == Forward("c", "c.peers:8443")


def test_offline_without_a_record_a_holder_or_when_it_names_us() -> None:
    mirror, view = fleet()
    assert view.route("edge-9", T0) == Offline()
    mirror.put(agent("edge-2", None))
    assert view.route("edge-2", T0) == Offline()
    mirror.put(agent("edge-3", "a"))  # our own record, the session gone: not reconnecting
    assert view.route("edge-3", T0) == Offline()
    # A live holder that advertises no peer address cannot be reached: offline, as before.
    mirror.put(replace(replica("d", renewed=T0), peer=None))
    mirror.put(agent("edge-4", "d"))
    assert view.route("edge-4", T0 + 1) == Offline()


def test_the_mirror_tells_its_listeners_of_the_changes_it_took() -> None:
    mirror = LeaseMirror()
    calls: list[int] = []
    mirror.listeners.append(lambda: calls.append(1))
    mirror.reset([replica("a", renewed=T0)])
    assert len(calls) == 1  # one relist, one call
    newer = agent("edge-1", "a")
    mirror.put(newer)
    assert len(calls) == 2
    mirror.put(replace(newer, holder="b", version="0"))  # an older version: ignored
    assert len(calls) == 2
    mirror.put(rules.LeaseRecord(name="not-ours", version="99"))  # no kind label: not ours
    assert len(calls) == 2
    mirror.delete(newer)
    assert len(calls) == 3
