"""Watches of fleet objects: ADDED, MODIFIED, DELETED in order, live, and 410 past the log."""

from __future__ import annotations

from tests.harness.waiting import eventually
from tests.integration.fleet.api.conftest import CHANGES_KEPT, Fleet, document, events_of


def _revision(fleet: Fleet, plural: str) -> int:
    listed = fleet.call("GET", f"/api/v1/fleet/{plural}?limit=1")
    return int(listed.body["metadata"]["resourceVersion"])


def test_a_watch_replays_every_change_in_order(fleet: Fleet) -> None:
    start = _revision(fleet, "worksets")
    fleet.put(document("WorkSet", "watched"))
    fleet.put(document("WorkSet", "watched", labels={"v": "2"}))
    fleet.put(document("Placement", "not-a-workset"))  # another kind: not in this watch
    fleet.call("DELETE", "/api/v1/fleet/worksets/watched")
    status, events = fleet.watch(
        f"/api/v1/fleet/worksets?watch=true&resourceVersion={start}&timeoutSeconds=1"
    )
    assert status == 200
    assert [(e.type, e.data["metadata"]["name"]) for e in events] == [
        ("ADDED", "watched"),
        ("MODIFIED", "watched"),
        ("DELETED", "watched"),
    ]
    ids = [e.id or 0 for e in events]
    assert ids == sorted(ids)
    assert [e.data["metadata"]["resourceVersion"] for e in events] == [str(i) for i in ids]
    assert events[1].data["metadata"]["labels"] == {"v": "2"}


def test_a_live_watch_sees_writes_as_they_happen(fleet: Fleet) -> None:
    fleet.put(document("GitSource", "before", labels={"live": "yes"}))
    connection = fleet.connection()
    try:
        connection.request(
            "GET",
            "/api/v1/fleet/gitsources?watch=true&labelSelector=live%3Dyes&timeoutSeconds=60",
            headers={"Authorization": f"Bearer {fleet.tokens['viewer']}"},
        )
        response = connection.getresponse()
        assert response.status == 200
        fleet.put(document("GitSource", "during", labels={"live": "yes"}))
        fleet.call("DELETE", "/api/v1/fleet/gitsources/before")

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
    fleet.put(document("Placement", "sel", labels={"watch": "me"}))
    start = _revision(fleet, "placements")
    fleet.put(document("Placement", "sel", labels={"watch": "not"}))
    fleet.put(document("Placement", "other", labels={"watch": "not"}))
    status, events = fleet.watch(
        f"/api/v1/fleet/placements?watch=true&labelSelector=watch%3Dme&resourceVersion={start}"
        "&timeoutSeconds=1"
    )
    assert status == 200
    assert [(e.type, e.data["metadata"]["name"]) for e in events] == [("DELETED", "sel")]


def test_a_watch_from_before_the_kept_log_is_410(fleet: Fleet) -> None:
    start = _revision(fleet, "placements")
    for n in range(CHANGES_KEPT + 5):
        assert fleet.put(document("Placement", f"churn-{n % 3}", labels={"n": str(n)})).status in (
            200,
            201,
        )
    status, events = fleet.watch(f"/api/v1/fleet/placements?watch=true&resourceVersion={start}")
    assert status == 410
    assert events[0].data["reason"] == "expired"
    recent = _revision(fleet, "placements")
    status, events = fleet.watch(
        f"/api/v1/fleet/placements?watch=true&resourceVersion={recent}&timeoutSeconds=1"
    )
    assert (status, events) == (200, [])  # from a fresh list: nothing missed, nothing new


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
