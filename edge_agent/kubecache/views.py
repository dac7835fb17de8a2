# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: the cache's *views*, who listed or watches what and at which resourceVersion.

No I/O, no asyncio, no clock: :class:`ViewBook` takes what the API server said and returns
what changed; ``store.py`` persists it and ``watch.py`` / ``offline.py`` act on it.

Theory of operation
-------------------

A *view* is one (component, resource, namespace, label selector, field selector) that a
client listed (a LIST, the last page of a paged LIST, a watch's ``sendInitialEvents``, or a
single object read or written: a view ``metadata.name=<name>`` of its namespace). Objects
are stored once; a view records only its *membership*, ``(namespace, name) -> the
resourceVersion it holds``, and the resourceVersion ``rv`` its membership is complete at.
Rules, all enforced in this file:

1. A view only moves forward. A LIST older than the view is ignored; a watch event is
   applied only if its stream has seen everything up to the view's ``rv`` (``prev`` is not
   newer than it) and the event is newer. So two watches of one view, or a watch from the
   past, never rewind it, and a watch that started after a gap never fills it with guesses.
2. A view's DELETED (or an object missing from its next LIST) means "left this view", never
   "gone": the object is dropped from this view only. An object version stays stored while
   any view records it (``released`` tells the store when none does any more).
3. Replay only from what was recorded. Each view keeps, since ``log_start``, the members'
   versions and the departures (``departed``); a watch from ``since >= log_start`` gets
   exactly the changes after ``since``, compacted (the newest state of each object). Older
   than ``log_start`` (after a restart the log starts at the view's ``rv``) is 410 Gone, as
   the API server answers when its watch cache cannot replay.
4. Every answer is a snapshot of one view: :meth:`ViewBook.covering` picks the newest view
   whose extent contains the query; its members at their recorded versions are the answer,
   at its ``rv``.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field

from edge_agent.kubecache.selectors import FieldSelector, parse_field_selector
from fleet_model.labels import LabelSelector, parse_label_selector

Pair = tuple[str, str]
"""``(namespace, name)`` of an object; namespace is empty for cluster-scoped objects."""
Family = tuple[str, str]
"""``(component, resource key)``: views of one family may share stored objects."""

DEFAULT_MAX_DEPARTED = 4096
"""Departures a view remembers for replay; beyond it the oldest go and ``log_start`` moves."""


def rv_newer(candidate: str, current: str) -> bool:
    """True if ``candidate`` is a later resourceVersion than ``current``.

    resourceVersions are opaque by contract but are etcd (or kine) revisions in practice; when
    both are integers they are compared, otherwise a different version counts as newer. The
    empty string ("nothing known") is older than everything.
    """
    if candidate == current or not candidate:
        return False
    if not current:
        return True
    try:
        return int(candidate) > int(current)
    except ValueError:
        return True


def _rv_order(rv: str) -> tuple[int, str]:
    return (int(rv), "") if rv.isdigit() else (-1, rv)


@dataclass(frozen=True, kw_only=True, slots=True)
class Event:
    """One change of a view, as a watch event type, at ``rv``."""

    type: str
    pair: Pair
    rv: str


@dataclass(frozen=True, kw_only=True, slots=True)
class ViewSpec:
    """What a view selects, and how its LIST is rendered again."""

    family: Family
    namespace: str = ""
    labels: str = ""
    fields: str = ""
    list_kind: str = ""
    api_version: str = ""
    items_have_kind: bool = False


@dataclass(kw_only=True, slots=True)
class View:
    key: str
    spec: ViewSpec
    rv: str = ""
    """Membership is complete as of this resourceVersion ("" = older than anything)."""
    members: dict[Pair, str] = field(default_factory=dict)
    log_start: str = ""
    """Replay is exact for a watch from any resourceVersion not older than this."""
    departed: dict[Pair, str] = field(default_factory=dict)
    """Objects that left the view since ``log_start``, with the rv it was learned at."""
    holes: list[tuple[str, str]] = field(default_factory=list)
    """``(from, to)``: a re-list moved the view from one rv to the other. A client between
    them may know objects that came and went unseen by the view: it cannot be replayed."""
    seq: int = 0
    """When it last changed, in operations of the book: of two views at one rv, the later
    one knows more (a 404 or a DELETE answer has no resourceVersion of its own)."""
    label_selector: LabelSelector = field(default_factory=LabelSelector)
    field_selector: FieldSelector = field(default_factory=FieldSelector)

    def covers(self, namespace: str, labels: LabelSelector, fields: FieldSelector) -> bool:
        """True if every object of the query (namespace, selectors) is inside this view."""
        return (
            (not self.spec.namespace or self.spec.namespace == namespace)
            and self.label_selector.covers(labels)
            and self.field_selector.covers(fields)
        )


@dataclass(kw_only=True, slots=True)
class Effects:
    """What one operation did to a view, for the store to persist."""

    applied: bool = False
    moved: bool = False
    """The view's record (resourceVersion, selectors, list kind) changed: persist it."""
    recorded: list[tuple[Pair, str]] = field(default_factory=list)
    """Members set (or moved to another version) in this view."""
    dropped: list[Pair] = field(default_factory=list)
    """Members removed from this view."""
    released: list[tuple[Pair, str]] = field(default_factory=list)
    """Object versions no view of the family records any more (the store may delete them)."""
    changes: list[Event] = field(default_factory=list)
    """The view's changes as watch events (a re-list's difference)."""


class ViewBook:
    """All views, and how many views record each stored object version."""

    def __init__(self, *, max_departed: int = DEFAULT_MAX_DEPARTED) -> None:
        self.max_departed = max_departed
        self.views: dict[str, View] = {}
        self._by_family: dict[Family, dict[str, View]] = {}
        self._refs: dict[tuple[Family, Pair], dict[str, int]] = {}
        self._seq = 0

    # ------------------------------------------------------------ reading

    def get(self, key: str) -> View | None:
        return self.views.get(key)

    def of_family(self, family: Family) -> list[View]:
        return list(self._by_family.get(family, {}).values())

    def recorded_versions(self, family: Family, pair: Pair) -> set[str]:
        """The versions of ``pair`` that some view of ``family`` records."""
        return set(self._refs.get((family, pair), {}))

    def newest_rv(self, family: Family) -> str:
        newest = ""
        for view in self.of_family(family):
            if rv_newer(view.rv, newest):
                newest = view.rv
        return newest

    def covering(
        self,
        family: Family,
        *,
        namespace: str,
        labels: LabelSelector | None = None,
        fields: FieldSelector | None = None,
    ) -> View | None:
        """The newest view that holds every object the query selects (None: no such view)."""
        labels = labels or LabelSelector()
        fields = fields or FieldSelector()
        best: View | None = None
        for view in self.of_family(family):
            if view.covers(namespace, labels, fields) and (
                best is None
                or rv_newer(view.rv, best.rv)
                or (view.rv == best.rv and view.seq > best.seq)
            ):
                best = view
        return best

    def would_record(self, key: str, rv: str, *, prev: str) -> bool:
        """Whether a watch event or bookmark at ``rv`` after ``prev`` would change view ``key``.

        Safe to ask from another thread: the view only moves forward, so a stale answer can
        only be "no" where "yes" was due, and then rule 1 stops that stream feeding the view
        (its next ``prev`` is past the view); it never records anything wrong.
        """
        view = self.views.get(key)
        return view is not None and self._continuous(view, rv, prev=prev)

    def replay(self, key: str, since: str) -> list[Event] | None:
        """The changes of view ``key`` after ``since``; None if they were not all recorded.

        ``since`` empty or ``"0"``: every member as ADDED (a watch from "any"). Otherwise each
        object changed since is sent once in its newest recorded state (MODIFIED), each that
        left as DELETED, in resourceVersion order.
        """
        view = self.views.get(key)
        if view is None:
            return None
        if since in {"", "0"}:
            return [
                Event(type="ADDED", pair=pair, rv=rv) for pair, rv in sorted(view.members.items())
            ]
        if rv_newer(view.log_start, since) or any(
            rv_newer(since, low) and rv_newer(high, since) for low, high in view.holes
        ):
            return None
        events = [
            Event(type="MODIFIED", pair=pair, rv=rv)
            for pair, rv in view.members.items()
            if rv_newer(rv, since)
        ]
        events += [
            Event(type="DELETED", pair=pair, rv=rv)
            for pair, rv in view.departed.items()
            if rv_newer(rv, since)
        ]
        events.sort(key=lambda e: (_rv_order(e.rv), e.pair))
        return events

    # ------------------------------------------------------------ changing

    def load(self, key: str, spec: ViewSpec, *, rv: str, members: Mapping[Pair, str]) -> None:
        """Restore a view from disk; its replay log starts at its ``rv`` (rule 3)."""
        view = self._new_view(key, spec)
        view.rv = view.log_start = rv
        for pair, member_rv in members.items():
            view.members[pair] = member_rv
            self._ref(spec.family, pair, member_rv, +1)

    def list_done(
        self, key: str, spec: ViewSpec, items: Mapping[Pair, str], *, rv: str | None
    ) -> Effects:
        """A complete LIST of the view at ``rv`` named ``items`` (pair -> rv).

        ``rv=None`` means "now" (a single-object read's 404 carries no resourceVersion): the
        newest version the family has seen, since the answer is at least that new.
        """
        at = self.newest_rv(spec.family) if rv is None else rv
        view = self.views.get(key)
        if view is not None and rv_newer(view.rv, at):
            return Effects()  # rule 1: an older snapshot never replaces a newer one
        fresh = view is None
        moved = view is None or view.spec != spec or view.rv != at
        if view is None:
            view = self._new_view(key, spec)
            view.log_start = at
        else:
            view.spec = spec
            if rv_newer(at, view.rv):
                view.holes.append((view.rv, at))
        effects = Effects(applied=True, moved=moved)
        for pair, old_rv in list(view.members.items()):
            if pair not in items:
                self._drop(view, pair, old_rv, effects)
                effects.changes.append(Event(type="DELETED", pair=pair, rv=at))
                if not fresh:
                    view.departed[pair] = at
        for pair, item_rv in items.items():
            held = view.members.get(pair)
            if held == item_rv:
                continue
            self._record(view, pair, item_rv, effects)
            view.departed.pop(pair, None)
            kind = "ADDED" if held is None else "MODIFIED"
            effects.changes.append(Event(type=kind, pair=pair, rv=item_rv))
        view.rv = at
        self._touch(view)
        self._bound_departed(view)
        return effects

    def event(self, key: str, kind: str, pair: Pair, rv: str, *, prev: str) -> Effects:
        """A watch event of view ``key``; ``prev`` is the last rv its stream delivered before.

        Applied only under rule 1: the stream is continuous from the view's ``rv`` (``prev``
        is set and not newer than it) and the event is newer than the view.
        """
        view = self.views.get(key)
        if view is None or not self._continuous(view, rv, prev=prev):
            return Effects()
        effects = Effects(applied=True, moved=True)
        old_rv = view.members.get(pair)
        if kind in {"ADDED", "MODIFIED"}:
            self._record(view, pair, rv, effects)
            view.departed.pop(pair, None)
            effects.changes.append(
                Event(type="ADDED" if old_rv is None else "MODIFIED", pair=pair, rv=rv)
            )
        elif kind == "DELETED":
            if old_rv is not None:
                self._drop(view, pair, old_rv, effects)
            view.departed[pair] = rv
            effects.changes.append(Event(type="DELETED", pair=pair, rv=rv))
        view.rv = rv
        self._touch(view)
        self._bound_departed(view)
        return effects

    def bookmark(self, key: str, rv: str, *, prev: str) -> bool:
        """A watch's BOOKMARK: nothing changed in the view up to ``rv``."""
        view = self.views.get(key)
        if view is None or not self._continuous(view, rv, prev=prev):
            return False
        view.rv = rv
        return True

    def forget_family(self, family: Family) -> None:
        """Drop every view of ``family`` (an operator purge)."""
        for key in list(self._by_family.pop(family, {})):
            del self.views[key]
        for ref in [r for r in self._refs if r[0] == family]:
            del self._refs[ref]

    # ------------------------------------------------------------ internals

    def _touch(self, view: View) -> None:
        self._seq += 1
        view.seq = self._seq

    @staticmethod
    def _continuous(view: View, rv: str, *, prev: str) -> bool:
        return bool(prev) and not rv_newer(prev, view.rv) and rv_newer(rv, view.rv)

    def _new_view(self, key: str, spec: ViewSpec) -> View:
        view = View(
            key=key,
            spec=spec,
            label_selector=_labels(spec.labels),
            field_selector=_fields(spec.fields),
        )
        self.views[key] = view
        self._by_family.setdefault(spec.family, {})[key] = view
        return view

    def _record(self, view: View, pair: Pair, rv: str, effects: Effects) -> None:
        old_rv = view.members.get(pair)
        view.members[pair] = rv
        self._ref(view.spec.family, pair, rv, +1)
        if old_rv is not None:
            self._release(view.spec.family, pair, old_rv, effects)
        effects.recorded.append((pair, rv))

    def _drop(self, view: View, pair: Pair, rv: str, effects: Effects) -> None:
        del view.members[pair]
        self._release(view.spec.family, pair, rv, effects)
        effects.dropped.append(pair)

    def _release(self, family: Family, pair: Pair, rv: str, effects: Effects) -> None:
        if self._ref(family, pair, rv, -1) == 0:
            effects.released.append((pair, rv))

    def _ref(self, family: Family, pair: Pair, rv: str, delta: int) -> int:
        counts = self._refs.setdefault((family, pair), {})
        count = counts.get(rv, 0) + delta
        if count > 0:
            counts[rv] = count
        else:
            counts.pop(rv, None)
            if not counts:
                del self._refs[(family, pair)]
        return count

    def _bound_departed(self, view: View) -> None:
        """Keep the replay log bounded: the oldest departures and holes go, log_start moves."""
        while len(view.holes) > self.max_departed:
            _, high = view.holes.pop(0)
            if rv_newer(high, view.log_start):
                view.log_start = high
        if len(view.departed) <= self.max_departed:
            return
        ordered = sorted(view.departed.items(), key=lambda item: _rv_order(item[1]))
        for pair, rv in ordered[: len(ordered) - self.max_departed]:
            del view.departed[pair]
            if rv_newer(rv, view.log_start):
                view.log_start = rv


def single_object_spec(family: Family, namespace: str, name: str) -> ViewSpec:
    """The view of one object that a GET or a write answer records."""
    return ViewSpec(family=family, namespace=namespace, fields=f"metadata.name={name}")


def pairs_of(items: Iterable[tuple[str, str, str]]) -> dict[Pair, str]:
    """``{(namespace, name): rv}`` from ``(namespace, name, rv)`` triples."""
    return {(ns, name): rv for ns, name, rv in items}


def _labels(text: str) -> LabelSelector:
    return parse_label_selector(text, max_length=len(text) + 1)


def _fields(text: str) -> FieldSelector:
    return parse_field_selector(text, max_length=len(text) + 1)
