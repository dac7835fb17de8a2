"""The controller's in-memory copy of the fleet objects it reads, kept by the store's change log.

A pass must not re-read and re-decode every object of the store (1,000 clusters, their works):
the mirror is filled once by ``list`` and then follows ``changes_since``. It also tells which
objects changed since the last pass, so a pass only redoes the work that depends on them.

Rules:

* A change whose object is not newer than the mirrored one (same or older resourceVersion)
  is the controller's own write, already applied when it was made: it marks nothing dirty.
  So the controller's writes do not wake it again (no ping-pong), while anyone else's do.
* ``ChangesExpiredError`` (the log was trimmed past our revision, a long stall) or a first
  load re-lists every kind and marks everything dirty.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field

from tunnel_server.fleet.hub.store import ChangesExpiredError, FleetStore, StoredObject

__all__ = ["KINDS_READ", "Mirror"]

log = logging.getLogger("tunnel_server.fleet.controller")

KINDS_READ = ("ManagedCluster", "ManagedClusterSet", "Placement", "WorkSet", "Work")
"""The kinds the controller reads (GitSource is the syncer's)."""


@dataclass(kw_only=True)
class Mirror:
    store: FleetStore
    objects: dict[str, dict[str, StoredObject]] = field(
        default_factory=lambda: {kind: {} for kind in KINDS_READ}
    )
    dirty: dict[str, set[str]] = field(default_factory=lambda: {kind: set() for kind in KINDS_READ})
    """Per kind, the names changed (or deleted) by others since ``take_dirty``."""
    revision: int = -1
    """The store revision the mirror reflects; -1 before the first load."""

    def load(self) -> None:
        """Read every object of the kinds afresh; everything is dirty."""
        revision = self.store.revision()
        for kind in KINDS_READ:
            fresh = {obj.name: obj for obj in self.store.list(kind)}
            self.dirty[kind] |= set(fresh) | set(self.objects[kind])
            self.objects[kind] = fresh
        self.revision = revision

    def follow(self) -> bool:
        """Apply the store's changes since the last call; True if something of others changed."""
        if self.revision < 0:
            self.load()
            return True
        current = self.store.revision()
        if current == self.revision:
            return False
        try:
            changes = self.store.changes_since(self.revision)
        except ChangesExpiredError:
            log.warning(
                "fleet change log expired under the controller: re-reading every object",
                extra={"kv": {"revision": self.revision}},
            )
            self.load()
            return True
        moved = False
        for change in changes:
            moved |= self._apply(change.type, change.object)
            self.revision = max(self.revision, change.revision)
        self.revision = max(self.revision, current)
        return moved

    def _apply(self, type_: str, obj: StoredObject) -> bool:
        kinds = self.objects.get(obj.kind)
        if kinds is None:
            return False
        held = kinds.get(obj.name)
        if type_ == "DELETED":
            if held is None or held.uid != obj.uid:
                return False  # deleted by us (already gone) or an older incarnation
            del kinds[obj.name]
        else:
            if (
                held is not None
                and held.uid == obj.uid
                and held.resource_version >= obj.resource_version
            ):
                return False  # our own write, or older than what we hold
            kinds[obj.name] = obj
        self.dirty[obj.kind].add(obj.name)
        return True

    def wrote(self, obj: StoredObject) -> None:
        """Record the controller's own write (not dirty: it follows from the pass itself)."""
        self.objects[obj.kind][obj.name] = obj

    def deleted(self, kind: str, name: str) -> None:
        self.objects[kind].pop(name, None)

    def take_dirty(self) -> dict[str, set[str]]:
        """The names changed by others since the last call, per kind; resets them."""
        out = self.dirty
        self.dirty = {kind: set() for kind in KINDS_READ}
        return out

    def all(self, kind: str) -> Iterable[StoredObject]:
        return self.objects[kind].values()

    def get(self, kind: str, name: str) -> StoredObject | None:
        return self.objects[kind].get(name)
