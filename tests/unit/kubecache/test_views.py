# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The pure view core: membership per view, replay only from what was recorded.

The property test plays a model API server (a history of revisions) against the book:
random interleavings of changes, LISTs, watch events from fresh and stale streams,
bookmarks, restarts and re-watches. After every step each view must hold exactly what the
server held in that view at the view's resourceVersion (so nothing the server still has is
lost, nothing it deleted is shown), and a replay must take a client from its snapshot to the
view's, or be a 410.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.views import (
    Event,
    Pair,
    ViewBook,
    ViewSpec,
    rv_newer,
    single_object_spec,
)
from fleet_model.labels import parse_label_selector

FAMILY = ("kubelet", "pods.v1.core")
NS = "ns"
ALL = ViewSpec(family=FAMILY, namespace=NS)
WEB = ViewSpec(family=FAMILY, namespace=NS, labels="app=web")


def test_a_selective_list_without_x_keeps_x_in_wider_views() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5", (NS, "y"): "6"}, rv="10")
    book.list_done("web", WEB, {(NS, "x"): "5", (NS, "y"): "6"}, rv="10")
    effects = book.list_done("web", WEB, {(NS, "y"): "6"}, rv="12")
    assert effects.dropped == [(NS, "x")]
    assert effects.released == []  # "all" still records x at 5: it stays stored
    assert book.recorded_versions(FAMILY, (NS, "x")) == {"5"}
    gone = book.list_done("all", ALL, {(NS, "y"): "6"}, rv="13")
    assert gone.released == [((NS, "x"), "5")]


def test_a_selective_watch_deleted_means_left_this_view() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5"}, rv="10")
    book.list_done("web", WEB, {(NS, "x"): "5"}, rv="10")
    book.event("web", "DELETED", (NS, "x"), "11", prev="10")
    assert book.get("all") is not None
    assert book.get("all").members == {(NS, "x"): "5"}  # type: ignore[union-attr]
    assert book.recorded_versions(FAMILY, (NS, "x")) == {"5"}


def test_older_lists_and_stale_streams_never_rewind_a_view() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5"}, rv="10")
    book.event("all", "DELETED", (NS, "x"), "12", prev="10")
    assert not book.list_done("all", ALL, {(NS, "x"): "5"}, rv="11").applied
    # A second watch of the view, behind it: its events are already in the view.
    assert not book.event("all", "ADDED", (NS, "x"), "9", prev="8").applied
    # A watch that started after a gap (from 15 while the view is at 12) fills nothing.
    assert not book.event("all", "ADDED", (NS, "z"), "16", prev="15").applied
    assert book.get("all").members == {}  # type: ignore[union-attr]


def test_replay_is_gone_before_what_was_recorded() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5", (NS, "y"): "6"}, rv="10")
    book.event("all", "DELETED", (NS, "x"), "11", prev="10")
    book.event("all", "MODIFIED", (NS, "y"), "12", prev="11")
    assert book.replay("all", "10") == [
        Event(type="DELETED", pair=(NS, "x"), rv="11"),
        Event(type="MODIFIED", pair=(NS, "y"), rv="12"),
    ]
    assert book.replay("all", "9") is None
    restarted = ViewBook()
    view = book.get("all")
    assert view is not None
    restarted.load("all", ALL, rv=view.rv, members=view.members)
    assert restarted.replay("all", "10") is None  # the departures were not kept: 410
    assert restarted.replay("all", "12") == []


def test_two_watchers_both_catch_up_after_one_relist() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5", (NS, "y"): "6"}, rv="10")
    book.list_done("all", ALL, {(NS, "y"): "20", (NS, "z"): "21"}, rv="30")
    for _watcher in range(2):
        assert book.replay("all", "10") == [
            Event(type="MODIFIED", pair=(NS, "y"), rv="20"),
            Event(type="MODIFIED", pair=(NS, "z"), rv="21"),
            Event(type="DELETED", pair=(NS, "x"), rv="30"),
        ]


def test_a_client_between_two_lists_of_a_view_is_gone() -> None:
    """It may hold an object that came and went between the lists, unseen by the view."""
    book = ViewBook()
    book.list_done("all", ALL, {}, rv="1")
    book.list_done("all", ALL, {}, rv="3")
    assert book.replay("all", "1") == []
    assert book.replay("all", "2") is None
    assert book.replay("all", "3") == []


def test_an_answer_without_a_version_is_newer_than_what_was_known() -> None:
    book = ViewBook()
    book.list_done("all", ALL, {(NS, "x"): "5"}, rv="10")
    single = single_object_spec(FAMILY, NS, "x")
    book.list_done("x", single, {}, rv=None)  # a GET's 404 after the list
    name_x = parse_field_selector("metadata.name=x")
    chosen = book.covering(FAMILY, namespace=NS, fields=name_x)
    assert chosen is not None
    assert chosen.key == "x"
    assert book.covering(FAMILY, namespace=NS) is book.get("all")
    assert book.covering(FAMILY, namespace=NS, labels=parse_label_selector("app=web")) is (
        book.get("all")
    )
    assert book.covering(FAMILY, namespace="other") is None


# ---------------------------------------------------------------- the model server

NAMES = ("x0", "x1", "x2", "x3")
SPECS = {
    "all": ALL,
    "web": WEB,
    "one": single_object_spec(FAMILY, NS, "x0"),
}


def _in_view(view: str, name: str, app: str | None) -> bool:
    if app is None:
        return False
    if view == "web":
        return app == "web"
    if view == "one":
        return name == "x0"
    return True


@dataclass
class Server:
    """Revisions of a few objects: ``history[i]`` is (rev, name, app label or None)."""

    rev: int = 1
    history: list[tuple[int, str, str | None]] = field(default_factory=list)

    def state(self, at: int) -> dict[str, tuple[str, int]]:
        """Objects at revision ``at``: name -> (app label, rv)."""
        out: dict[str, tuple[str, int]] = {}
        for rev, name, app in self.history:
            if rev > at:
                break
            if app is None:
                out.pop(name, None)
            else:
                out[name] = (app, rev)
        return out

    def view(self, view: str, at: int) -> dict[Pair, str]:
        return {
            (NS, name): str(rv)
            for name, (app, rv) in self.state(at).items()
            if _in_view(view, name, app)
        }

    def change(self, name: str, app: str | None) -> None:
        if app is None and name not in self.state(self.rev):
            return
        self.rev += 1
        self.history.append((self.rev, name, app))

    def events_after(self, view: str, after: int) -> list[Event]:
        """What a watch of ``view`` from ``after`` delivers, in order."""
        out: list[Event] = []
        for rev, name, app in self.history:
            if rev <= after:
                continue
            before = self.state(rev - 1).get(name)
            was = before is not None and _in_view(view, name, before[0])
            now = _in_view(view, name, app)
            if now:
                out.append(Event(type="MODIFIED" if was else "ADDED", pair=(NS, name), rv=str(rev)))
            elif was:
                out.append(Event(type="DELETED", pair=(NS, name), rv=str(rev)))
        return out


views_st = st.sampled_from(sorted(SPECS))
operation = st.one_of(
    st.tuples(st.just("change"), st.sampled_from(NAMES), st.sampled_from(["web", "db", None])),
    st.tuples(st.just("list"), views_st),
    st.tuples(st.just("watch"), views_st, st.integers(0, 1), st.integers(1, 4), st.integers(0, 4)),
    st.tuples(st.just("bookmark"), views_st, st.integers(0, 1)),
    st.tuples(st.just("restart")),
    st.tuples(st.just("rewatch"), views_st, st.integers(0, 4)),
)


def _check_views(book: ViewBook, server: Server) -> None:
    recorded: dict[Pair, set[str]] = {}
    for key in SPECS:
        view = book.get(key)
        if view is None:
            continue
        assert view.members == server.view(key, int(view.rv)), key
        for pair, rv in view.members.items():
            recorded.setdefault(pair, set()).add(rv)
    for name in NAMES:
        assert book.recorded_versions(FAMILY, (NS, name)) == recorded.get((NS, name), set())


def _check_replay(book: ViewBook, server: Server, key: str, back: int) -> None:
    view = book.get(key)
    if view is None:
        return
    since = max(1, int(view.rv) - back)
    events = book.replay(key, str(since))
    if events is None:  # 410 only where the view truly lacks the record
        in_hole = any(low < since < high for low, high in ((int(a), int(b)) for a, b in view.holes))
        assert rv_newer(view.log_start, str(since)) or in_hole
        return
    client = dict(server.view(key, since))
    for event in events:
        if event.type == "DELETED":
            client.pop(event.pair, None)
        else:
            client[event.pair] = event.rv
    assert client == view.members


def _reload(book: ViewBook) -> ViewBook:
    restarted = ViewBook(max_departed=book.max_departed)
    for key, view in book.views.items():
        restarted.load(key, view.spec, rv=view.rv, members=dict(view.members))
    return restarted


@dataclass
class Run:
    server: Server = field(default_factory=Server)
    book: ViewBook = field(default_factory=lambda: ViewBook(max_departed=3))
    streams: dict[tuple[str, int], int] = field(default_factory=dict)
    """(view, watcher) -> the last rv its watch stream delivered."""

    def watch(self, key: str, watcher: int, count: int, back: int) -> None:
        if (key, watcher) not in self.streams:
            # Another watcher, from a resourceVersion its client got elsewhere: behind the
            # view, or ahead of it (a gap the view must not paper over).
            self.streams[(key, watcher)] = max(1, self.server.rev - back)
        prev = self.streams[(key, watcher)]
        for event in self.server.events_after(key, prev)[:count]:
            self.book.event(key, event.type, event.pair, event.rv, prev=str(prev))
            prev = int(event.rv)
        self.streams[(key, watcher)] = prev

    def bookmark(self, key: str, watcher: int) -> None:
        prev = self.streams.get((key, watcher))
        if prev is not None and not self.server.events_after(key, prev):
            self.book.bookmark(key, str(self.server.rev), prev=str(prev))
            self.streams[(key, watcher)] = self.server.rev

    def step(self, op: tuple[object, ...]) -> None:
        match op:
            case ("change", str(name), app):
                self.server.change(name, app if isinstance(app, str) else None)
            case ("list", str(key)):
                at = self.server.rev
                self.book.list_done(key, SPECS[key], self.server.view(key, at), rv=str(at))
                self.streams[(key, 0)] = at  # the lister watches on from its list
            case ("watch", str(key), int(watcher), int(count), int(back)):
                self.watch(key, watcher, count, back)
            case ("bookmark", str(key), int(watcher)):
                self.bookmark(key, watcher)
            case ("restart",):
                self.book = _reload(self.book)
            case ("rewatch", str(key), int(back)):
                _check_replay(self.book, self.server, key, back)


@settings(max_examples=500, deadline=None)
@given(st.lists(operation, max_size=50))
def test_views_never_lose_or_invent_objects(ops: list[tuple[object, ...]]) -> None:
    run = Run()
    for op in ops:
        run.step(op)
        _check_views(run.book, run.server)
