"""Watches of fleet objects: ADDED, MODIFIED, DELETED in order, live, and 410 past the log.

The hub controller and GitSource syncer run in the server and write statuses whenever they
like, so the watches follow Works of a cluster nobody made (only the test writes them), and a
watch of a whole kind keeps to the test's own objects by name.
"""

from __future__ import annotations

from typing import Any

from tests.harness.waiting import eventually
from tests.integration.fleet.api.conftest import (
    CHANGES_KEPT,
    SPECS,
    Event,
    Fleet,
    document,
    events_of,
)

NOWHERE = "no-such-cluster"
"""Works of a cluster nobody made: only the test writes them (no agent reports their status)."""


def _work(name: str, *, labels: dict[str, str] | None = None) -> dict[str, Any]:
    return document("Work", name, labels=labels, spec={**SPECS["Work"], "clusterName": NOWHERE})


def _revision(fleet: Fleet, plural: str) -> int:
    listed = fleet.call("GET", f"/api/v1/fleet/{plural}?limit=1")
    return int(listed.body["metadata"]["resourceVersion"])


def _named(events: list[Event], names: set[str]) -> list[tuple[str, str]]:
    """The events of the test's own objects: the hub writes other objects meanwhile."""
    return [
        (e.type, e.data["metadata"]["name"]) for e in events if e.data["metadata"]["name"] in names
    ]


def test_a_watch_replays_every_change_in_order(fleet: Fleet) -> None:
    start = _revision(fleet, "works")
    fleet.put(_work("watched"))
    fleet.put(_work("watched", labels={"v": "2"}))
    fleet.put(document("Placement", "not-a-work"))  # another kind: not in this watch
    fleet.call("DELETE", "/api/v1/fleet/works/watched")
    status, events = fleet.watch(
        f"/api/v1/fleet/works?watch=true&resourceVersion={start}&timeoutSeconds=1"
    )
    assert status == 200
    assert _named(events, {"watched", "not-a-work"}) == [
        ("ADDED", "watched"),
        ("MODIFIED", "watched"),
        ("DELETED", "watched"),
    ]
    ids = [e.id or 0 for e in events]
    assert ids == sorted(ids)
    assert [e.data["metadata"]["resourceVersion"] for e in events] == [str(i) for i in ids]
    mine = [e for e in events if e.data["metadata"]["name"] == "watched"]
    assert mine[1].data["metadata"]["labels"]["v"] == "2"


def test_a_live_watch_sees_writes_as_they_happen(fleet: Fleet) -> None:
    fleet.put(_work("before", labels={"live": "yes"}))
    connection = fleet.connection()
    try:
        connection.request(
            "GET",
            "/api/v1/fleet/works?watch=true&labelSelector=live%3Dyes&timeoutSeconds=60",
            headers={"Authorization": f"Bearer {fleet.tokens['viewer']}"},
        )
        response = connection.getresponse()
        assert response.status == 200
        fleet.put(_work("during", labels={"live": "yes"}))
        fleet.put(_work("unseen", labels={"live": "no"}))  # not selected: never shown
        fleet.call("DELETE", "/api/v1/fleet/works/before")

        events = events_of(response, 3)
    finally:
        connection.close()
    # Without a resourceVersion the watch starts with what exists, then follows.
    assert [(e.type, e.data["metadata"]["name"]) for e in events] == [
        ("ADDED", "before"),
        ("ADDED", "during"),
        ("DELETED", "before"),
    ]


def test_a_selector_watch_sees_objects_leave_it(fleet: Fleet) -> None:
    fleet.put(_work("sel", labels={"watch": "me"}))
    start = _revision(fleet, "works")
    fleet.put(_work("sel", labels={"watch": "not"}))
    fleet.put(_work("other", labels={"watch": "not"}))
    status, events = fleet.watch(
        f"/api/v1/fleet/works?watch=true&labelSelector=watch%3Dme&resourceVersion={start}"
        "&timeoutSeconds=1"
    )
    assert status == 200
    assert [(e.type, e.data["metadata"]["name"]) for e in events] == [("DELETED", "sel")]


def test_a_watch_from_before_the_kept_log_is_410(fleet: Fleet) -> None:
    start = _revision(fleet, "works")
    churn = {f"churn-{n}" for n in range(3)}
    for n in range(CHANGES_KEPT + 5):
        answer = fleet.put(_work(f"churn-{n % 3}", labels={"n": str(n)}))
        assert answer.status in (200, 201), answer.body
    status, events = fleet.watch(f"/api/v1/fleet/works?watch=true&resourceVersion={start}")
    assert status == 410
    assert events[0].data["reason"] == "expired"
    recent = _revision(fleet, "works")
    status, events = fleet.watch(
        f"/api/v1/fleet/works?watch=true&resourceVersion={recent}&timeoutSeconds=1"
    )
    # From a fresh list: nothing missed, nothing new (of the works this test writes).
    assert (status, _named(events, churn)) == (200, [])


def test_watch_parameters_are_checked(fleet: Fleet) -> None:
    for query in ("watch=maybe", "watch=true&resourceVersion=abc", "watch=true&timeoutSeconds=0"):
        status, events = fleet.watch(f"/api/v1/fleet/placements?{query}")
        assert (status, events[0].data["reason"]) == (400, "bad_parameter"), query


def test_watches_are_bounded_per_user(fleet: Fleet) -> None:
    """16 live watches of one user are fine; the 17th is 503, and a closed one frees its slot."""
    path = "/api/v1/fleet/placements?watch=true&timeoutSeconds=120"
    headers = {"Authorization": f"Bearer {fleet.tokens['scoped-viewer']}"}
    open_streams = []
    try:
        for _ in range(16):
            connection = fleet.connection()
            open_streams.append(connection)
            connection.request("GET", path, headers=headers)
            assert connection.getresponse().status == 200
        status, events = fleet.watch(path, as_="scoped-viewer")
        assert (status, events[0].data["reason"]) == (503, "too_many_streams")
        short = path.replace("120", "1")
        assert fleet.watch(short, as_="viewer")[0] == 200  # other users are not limited by it
        open_streams.pop().close()
        eventually(
            lambda: fleet.watch(short, as_="scoped-viewer")[0],
            lambda status: status == 200,
            what="a watch slot freed by a closed stream",
        )
    finally:
        for connection in open_streams:
            connection.close()


def test_revoking_the_watchers_user_ends_its_watch(fleet: Fleet) -> None:
    made = fleet.call("POST", "/api/v1/users", {"name": "fleet-leaver", "role": "viewer"})
    assert made.status == 201, made
    fleet.tokens["leaver"] = made.body["token"]
    connection = fleet.connection()
    try:
        connection.request(
            "GET",
            "/api/v1/fleet/works?watch=true&labelSelector=leaver%3Dyes&timeoutSeconds=120",
            headers={"Authorization": f"Bearer {fleet.tokens['leaver']}"},
        )
        response = connection.getresponse()
        assert response.status == 200
        fleet.put(_work("leaver-sees", labels={"leaver": "yes"}))
        assert [e.type for e in events_of(response, 1)] == ["ADDED"]
        revoked = fleet.call("DELETE", "/api/v1/users/fleet-leaver")
        assert revoked.status == 200, revoked
        fleet.put(_work("leaver-never-sees", labels={"leaver": "yes"}))
        # The next event is the end, not the Work written after the revocation (a watch of
        # 120 s would otherwise go on for its whole timeout).
        ended = events_of(response, 1)
        assert [(e.type, e.data["reason"]) for e in ended] == [("revoked", "user_revoked")]
        assert events_of(response, None) == []  # and the server closed the stream
    finally:
        connection.close()
