"""The fleet objects' store: one interface, so SQLite today and Kubernetes CRDs later.

Every fleet object (``fleet.edgefleet.io/v1alpha1``: ManagedCluster, Placement, Work, ...) is
kept as a ``StoredObject``: its spec and metadata as the caller wrote them, its status as the
hub and the agents wrote it, and the server-set metadata Kubernetes users know:

* ``uid``: uuid4 hex, stable for the object's life (a deleted and re-created name gets a new one);
* ``resource_version``: the store's global revision at the object's last write. Every write of
  any object bumps the revision by one, so revisions order all changes, as etcd's do;
* ``generation``: +1 on every change of spec, labels or annotations, never on status;
* ``created_at``: seconds since the epoch.

Writes take an optional ``expected_version``: the write happens only while the object is still
at that resourceVersion (``ConflictError`` otherwise), the optimistic concurrency Kubernetes
clients use. ``changes_since`` replays the kept change log for watches; an older revision than
the log holds is ``ChangesExpiredError`` (a watch answers 410 and the client lists again).

``FleetEvents`` is the in-process wake-up: every writer calls ``notify()`` after a write (the
``FleetHub`` write methods do), and a watcher awaits ``wait_past(revision, timeout)``.

Objects handed out share their mappings with the store's cache: treat them as read-only.
"""

from __future__ import annotations

import asyncio
import builtins
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Literal, Protocol

from fleet_model.documents import API_VERSION, KINDS

if TYPE_CHECKING:
    from fleet_model.labels import LabelSelector

__all__ = [
    "Change",
    "ChangeType",
    "ChangesExpiredError",
    "ConflictError",
    "FleetEvents",
    "FleetStore",
    "FleetStoreError",
    "ObjectNotFoundError",
    "StoredObject",
    "rfc3339",
]

ChangeType = Literal["ADDED", "MODIFIED", "DELETED"]


def rfc3339(seconds: float) -> str:
    """``seconds`` since the epoch as Kubernetes writes times: UTC, whole seconds, ``Z``."""
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True, kw_only=True)
class StoredObject:
    """One fleet object as stored; ``document()`` is what the API serves."""

    kind: str
    name: str
    uid: str
    resource_version: int
    generation: int
    created_at: float
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    status: Mapping[str, Any]

    def document(self) -> dict[str, Any]:
        """The full document (apiVersion, kind, metadata, spec, status) as the API serves it.

        A new top-level dict each call; ``spec`` and ``status`` are shared with the store:
        serialize them, do not change them.
        """
        metadata: dict[str, Any] = {
            "name": self.name,
            "uid": self.uid,
            "resourceVersion": str(self.resource_version),
            "generation": self.generation,
            "creationTimestamp": rfc3339(self.created_at),
        }
        if self.labels:
            metadata["labels"] = dict(self.labels)
        if self.annotations:
            metadata["annotations"] = dict(self.annotations)
        return {
            "apiVersion": API_VERSION,
            "kind": self.kind,
            "metadata": metadata,
            "spec": self.spec,
            "status": self.status,
        }


@dataclass(frozen=True)
class Change:
    """One write, as a watch replays it: the object after it (before it, for DELETED).

    ``labels_before`` and ``cluster_before`` are the object's labels and ``spec.clusterName``
    before a MODIFIED write, so a filtered watch (a label selector, a caller's cluster scope)
    can tell an object that left its filter (a DELETED for that watch) from one never in it.
    """

    revision: int
    type: ChangeType
    object: StoredObject
    labels_before: Mapping[str, str] | None = None
    cluster_before: str | None = None


class FleetStoreError(Exception):
    """Base of the fleet store's own errors."""


class ObjectNotFoundError(FleetStoreError, LookupError):
    """No object of that kind and name."""

    def __init__(self, kind: str, name: str) -> None:
        super().__init__(f"no {kind} named {name!r}")
        self.kind = kind
        self.name = name


class ConflictError(FleetStoreError):
    """The object is not at the expected resourceVersion (``current`` None: it does not exist)."""

    def __init__(self, kind: str, name: str, *, expected: int, current: int | None) -> None:
        at = "does not exist" if current is None else f"is at resourceVersion {current}"
        super().__init__(f"{kind} {name!r} {at}, not {expected}")
        self.kind = kind
        self.name = name
        self.expected = expected
        self.current = current


class ChangesExpiredError(FleetStoreError):
    """The change log no longer reaches back to the revision asked for: list again."""

    def __init__(self, revision: int, *, oldest: int) -> None:
        super().__init__(
            f"resourceVersion {revision} is older than the change log kept (it starts after "
            f"{oldest})"
        )
        self.revision = revision
        self.oldest = oldest


class FleetStore(Protocol):
    """Where fleet objects live. Synchronous and quick: callers run it on the event loop."""

    def revision(self) -> int:
        """The revision of the last write (0 for an empty store)."""
        ...

    def get(self, kind: str, name: str) -> StoredObject | None: ...

    def list(
        self, kind: str, *, selector: LabelSelector | None = None
    ) -> builtins.list[StoredObject]:
        """Every object of ``kind`` (matching ``selector``), sorted by name."""
        ...

    def put(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        expected_version: int | None = None,
        now: float,
    ) -> tuple[StoredObject, bool]:
        """Create or replace spec and metadata (status is kept); the object and created-or-not.

        A replace that changes nothing writes nothing (no new revision).
        """
        ...

    def set_status(
        self,
        kind: str,
        name: str,
        status: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> StoredObject:
        """Replace the status; no write (and no revision bump) when it is unchanged."""
        ...

    def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> StoredObject:
        """Remove the object; the last state of it, at the deletion's revision."""
        ...

    def changes_since(self, revision: int, *, kind: str | None = None) -> builtins.list[Change]:
        """Writes after ``revision`` in order; ``ChangesExpiredError`` if the log is shorter."""
        ...

    def close(self) -> None: ...


def check_kind(kind: str) -> None:
    """ValueError for a kind the fleet does not know (a programming error, not input)."""
    if kind not in KINDS:
        raise ValueError(f"unknown fleet kind {kind!r}")


class FleetEvents:
    """Wakes watchers when the store moves: ``notify()`` after a write, ``wait_past()`` to wait.

    Writes by this process are seen at once (their writer calls ``notify``); a write by another
    process on the same store (a second replica) within ``poll_interval`` seconds.
    """

    def __init__(self, revision: Callable[[], int], *, poll_interval: float = 1.0) -> None:
        self._revision = revision
        self.poll_interval = poll_interval
        self._changed = asyncio.Event()

    def notify(self) -> None:
        """Wake every waiter (call from the event loop's thread)."""
        self._changed.set()
        self._changed = asyncio.Event()

    async def wait_past(self, revision: int, timeout: float) -> int:  # noqa: ASYNC109 - a watch's own deadline
        """The store's revision once it is past ``revision``, or when ``timeout`` s have passed."""
        deadline = time.monotonic() + max(0.0, timeout)
        while True:
            current = self._revision()
            left = deadline - time.monotonic()
            if current > revision or left <= 0:
                return current
            changed = self._changed
            try:
                async with asyncio.timeout(min(left, self.poll_interval)):
                    await changed.wait()
            except TimeoutError:
                pass
