"""One reader of the fleet store's change log for every ``fleet`` stream of this hub.

Before this, each cluster's stream read the change log on every write to find its own Works:
every write woke all N streams and each decoded every change since its last look, O(streams x
changes) — a hub with 100 clusters spent 70 % of a rollout's CPU there (docs/benchmarks.md).
Now one task reads each change once and hands it to the streams it concerns. Rules:

* ``run`` follows the change log from the revision it started at: it wakes on the hub's events
  (or every ``follow_timeout`` seconds), reads ``changes_since(position)`` once and dispatches.
* A Work change goes to the subscriptions of its ``spec.clusterName`` and, when a MODIFIED write
  moved it, of its ``cluster_before`` (that cluster's agent must delete it). A ManagedCluster
  change pokes that cluster's subscriptions (acceptance or the lease duration may have
  changed). Other kinds go to nobody. Objects are shared, never copied, between subscriptions.
* ``subscribe`` is synchronous: a stream subscribes in the same step as it reads its catch-up
  from the store, and gets exactly the changes past the revision it read then.
* Bounded: a subscription keeps at most ``max_pending`` changes. One more and it drops them and
  is marked expired; its stream then resends everything from the store, as after an expired
  change log. A change log that expired under the reader (``ChangesExpiredError``) expires
  every subscription the same way. Nothing else is kept per stream.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from typing import TYPE_CHECKING

from tunnel_server.fleet.hub.store import ChangesExpiredError

if TYPE_CHECKING:
    from tunnel_server.fleet.hub.store import Change, FleetEvents, FleetStore

__all__ = ["ChangeFanout", "Subscription"]

log = logging.getLogger("tunnel_server.fleet.hub.stream")


class Subscription:
    """What one stream has not taken yet of its cluster's changes."""

    def __init__(self, cluster: str, revision: int, *, max_pending: int) -> None:
        self.cluster = cluster
        self.revision = revision
        """Changes at or below this revision are already in the stream's catch-up."""
        self._max_pending = max_pending
        self._changes: list[Change] = []
        self._expired = False
        self._poked = False
        self._ready = asyncio.Event()

    def offer(self, change: Change) -> None:
        if change.revision <= self.revision or self._expired:
            return
        if len(self._changes) >= self._max_pending:
            log.info(
                "cluster %s's stream fell %d changes behind: it resends everything",
                self.cluster,
                self._max_pending,
            )
            self.expire()
            return
        self._changes.append(change)
        self._ready.set()

    def expire(self) -> None:
        self._changes = []
        self._expired = True
        self._ready.set()

    def poke(self) -> None:
        self._poked = True
        self._ready.set()

    @property
    def ready(self) -> bool:
        """Something was offered, expired or poked since the last take."""
        return self._ready.is_set()

    async def wait(self, timeout: float) -> None:  # noqa: ASYNC109 - the stream's safety net
        """Until something was offered, expired or poked, or ``timeout`` seconds passed."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._ready.wait()

    def take(self) -> list[Change] | None:
        """The changes offered since the last take, oldest first; None: resend everything."""
        changes = None if self._expired else self._changes
        self._changes = []
        self._expired = False
        self._poked = False
        self._ready.clear()
        return changes


class ChangeFanout:
    """Reads the change log once per write and offers each change to its clusters' streams."""

    def __init__(
        self,
        store: FleetStore,
        events: FleetEvents,
        *,
        follow_timeout: float,
        max_pending: int,
    ) -> None:
        self._store = store
        self._events = events
        self._follow_timeout = follow_timeout
        self._max_pending = max_pending
        self._subscribers: dict[str, set[Subscription]] = {}
        self.position = store.revision()

    def subscribe(self, cluster: str) -> Subscription:
        """A subscription starting at the store's revision now (read the catch-up right after)."""
        subscription = Subscription(cluster, self._store.revision(), max_pending=self._max_pending)
        self._subscribers.setdefault(cluster, set()).add(subscription)
        return subscription

    def unsubscribe(self, subscription: Subscription) -> None:
        subscribers = self._subscribers.get(subscription.cluster)
        if subscribers is None:
            return
        subscribers.discard(subscription)
        if not subscribers:
            del self._subscribers[subscription.cluster]

    async def run(self) -> None:
        while True:
            with contextlib.suppress(TimeoutError):
                await self._events.wait_past(self.position, self._follow_timeout)
            self.step()

    def step(self) -> None:
        """Read what was written past ``position`` and offer it (one pass of ``run``)."""
        top = self._store.revision()
        if top <= self.position:
            return
        try:
            changes = self._store.changes_since(self.position)
        except ChangesExpiredError:
            log.info("the change log expired under the fleet streams: each resends everything")
            for subscription in self._all():
                subscription.expire()
            self.position = top
            return
        for change in changes:
            self._dispatch(change)
        self.position = max([top, *(change.revision for change in changes)])

    def _dispatch(self, change: Change) -> None:
        kind = change.object.kind
        if kind == "ManagedCluster":
            for subscription in self._subscribers.get(change.object.name, ()):
                subscription.poke()
            return
        if kind != "Work":
            return
        cluster = change.object.spec.get("clusterName")
        targets = {cluster, change.cluster_before} - {None}
        for target in targets:
            for subscription in self._subscribers.get(str(target), ()):
                subscription.offer(change)

    def _all(self) -> Iterator[Subscription]:
        for subscribers in self._subscribers.values():
            yield from subscribers
