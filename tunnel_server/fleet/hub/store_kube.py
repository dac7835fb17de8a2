"""``FleetStore`` on the Kubernetes API: a custom resource per fleet kind (``--store kubernetes``).

Every fleet object is a namespaced custom resource of ``fleet.edgefleet.io/v1alpha1``
(packaging/kubernetes/tunnel-server/crds/fleet-*.yaml) in the store's namespace, so every
replica sees the same objects and ``kubectl get managedclusters.fleet.edgefleet.io`` works.

Rules:

- Reads never call the API. Each kind is listed once and then watched from the list's
  resourceVersion (any error or 410 Gone: list again, the difference logged as changes) on a
  thread of its own with its own event loop, because the protocol is synchronous and the store
  is opened before the server's loop runs. ``get``/``list`` read the in-memory mirror.
- ``resource_version``, ``uid``, ``generation`` and ``created_at`` are Kubernetes' own
  (``metadata.resourceVersion`` read as an integer: etcd's revision, what kube-apiserver hands
  out). ``expected_version`` is sent as the object's resourceVersion: a 409 is ``ConflictError``.
  Kubernetes bumps ``generation`` on spec changes only (not on labels/annotations, unlike the
  SQLite store).
- ``revision()`` and ``changes_since`` are a change log local to this replica, fed by its own
  writes and by the watch. Its revision is ``max(previous + 1, resourceVersion of the change)``:
  monotonic, and never below the resourceVersion of the object changed, so a watch resumed
  from an object's resourceVersion misses nothing (it may repeat one event). It is per
  replica: a list's resourceVersion from one replica is no resume point on another (a client
  that moves lists again). The log starts at the first list (older: ``ChangesExpiredError``).
- Writes are synchronous calls on a ``lightkube.Client`` with the store's ``request_timeout``,
  made from the event loop: the loop waits one API round trip per write (a few ms on a local
  network; ``tests/integration/fleet_kube`` measures it), as it waited for SQLite's commit
  before. Every write site in the hub (API handlers, controller, stream) is synchronous, so an
  asynchronous store would change them all for no gain in a write rate of a handful per second.
  Each write's answer goes into the mirror and the log at once (read your writes); the watch's
  copy of it is then older-or-equal and dropped, so a change is logged once per replica.
- An API server that is down never stalls the loop for long: a call that does not reach it
  (refused, reset, timed out) marks it unreachable (``kubestore.reach.Reach``), and every
  write then fails at once with ``FleetStoreUnavailableError`` (a ``FleetStoreError``; the
  REST API answers 503 with ``Retry-After``) until the watch thread's probe or a list gets
  an answer again. Reads keep answering from the mirror.
- A change made by another replica reaches ``on_change`` (set by ``setup``: it wakes
  ``FleetEvents`` on the loop's thread), so watchers and the controller react at once.
- ``delete`` with ``expected_version`` checks the version by a fresh read, then deletes:
  lightkube's delete sends no preconditions, so a write landing between the two is deleted too.
"""

from __future__ import annotations

import asyncio
import builtins
import calendar
import json
import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Mapping
from dataclasses import replace
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from lightkube import AsyncClient, Client
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from fleet_model.documents import KINDS
from tunnel_server.fleet.hub.store import (
    Change,
    ChangesExpiredError,
    ConflictError,
    FleetStoreError,
    ObjectNotFoundError,
    StoredObject,
    check_kind,
)
from tunnel_server.kubestore.reach import ApiUnreachableError, Reach
from tunnel_server.kubestore.store import WATCH_GRACE, client_config, same_content
from tunnel_server.kubestore.watch_thread import (
    WatchThread,
    call_api,
    client_timeout,
)

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from lightkube import KubeConfig

    from fleet_model.labels import LabelSelector
    from tunnel_server.kubestore.settings import KubeStoreSettings

__all__ = ["GROUP", "VERSION", "FleetStoreUnavailableError", "KubeFleetStore"]

log = logging.getLogger("tunnel_server.fleet.hub.store")

GROUP: Final = "fleet.edgefleet.io"
VERSION: Final = "v1alpha1"
FIELD_MANAGER: Final = "tunnel-server"
PROBE_NAME: Final = "edgefleet-probe"
"""An object name the probe of an unreachable API asks for: a 404 is an answer too."""

_RESOURCES: dict[str, type[GenericNamespacedResource]] = {
    kind: create_namespaced_resource(GROUP, VERSION, kind, info.plural)
    for kind, info in KINDS.items()
}

Obj = dict[str, Any]


class FleetStoreUnavailableError(FleetStoreError, ApiUnreachableError):
    """A write of a fleet object could not reach the Kubernetes API (it is down)."""


class _ConflictError(Exception):
    """409 from the API."""


class _GoneError(Exception):
    """404 from the API."""


def _as_obj(resource: Any) -> Obj:  # noqa: ANN401 - lightkube's generic objects are dicts
    return dict(resource.to_dict())


def _copy(value: Mapping[str, Any]) -> Obj:
    """A private copy of a JSON object (and the check that it is one)."""
    return dict(json.loads(json.dumps(value, allow_nan=False)))


def _timestamp(text: object) -> float:
    if not isinstance(text, str):
        return 0.0
    try:
        return float(calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%SZ")))
    except ValueError:
        return 0.0


def _stored(kind: str, obj: Obj) -> StoredObject:
    meta = obj.get("metadata") or {}
    spec, status = obj.get("spec"), obj.get("status")
    return StoredObject(
        kind=kind,
        name=str(meta["name"]),
        uid=str(meta.get("uid", "")),
        resource_version=int(meta.get("resourceVersion", "0")),
        generation=int(meta.get("generation", 1)),
        created_at=_timestamp(meta.get("creationTimestamp")),
        labels={str(k): str(v) for k, v in (meta.get("labels") or {}).items()},
        annotations={str(k): str(v) for k, v in (meta.get("annotations") or {}).items()},
        spec=spec if isinstance(spec, dict) else {},
        status=status if isinstance(status, dict) else {},
    )


class _Mirror:
    """The objects, the tombstones of this replica's deletes and the change log; thread-safe."""

    def __init__(self, changes_kept: int) -> None:
        self._lock = threading.Lock()
        self.objects: dict[str, dict[str, StoredObject]] = {kind: {} for kind in KINDS}
        self._tombstones: dict[str, dict[str, int]] = {kind: {} for kind in KINDS}
        self._log: deque[Change] = deque()
        self._kept = changes_kept
        self.revision = 0
        self.compacted = 0

    def start(self, revision: int) -> None:
        """The first lists are in: the log starts after ``revision``."""
        with self._lock:
            self._log.clear()  # the first lists are the start, not changes
            self.revision = self.compacted = max(self.revision, revision)

    def _record(self, change_type: Any, obj: StoredObject, before: StoredObject | None) -> None:  # noqa: ANN401 - ChangeType
        self.revision = max(self.revision + 1, obj.resource_version)
        cluster = None if before is None else before.spec.get("clusterName")
        self._log.append(
            Change(
                self.revision,
                change_type,
                obj,
                labels_before=None if before is None else before.labels,
                cluster_before=cluster if isinstance(cluster, str) else None,
            )
        )
        while len(self._log) > self._kept:
            self.compacted = self._log.popleft().revision

    def put(self, obj: StoredObject) -> bool:
        """Take a newer version of ``obj`` (older or equal: dropped); whether it was taken."""
        with self._lock:
            held = self.objects[obj.kind].get(obj.name)
            if held is not None and held.resource_version >= obj.resource_version:
                return False
            if self._tombstones[obj.kind].get(obj.name, -1) >= obj.resource_version:
                return False
            self._tombstones[obj.kind].pop(obj.name, None)
            self.objects[obj.kind][obj.name] = obj
            self._record("ADDED" if held is None else "MODIFIED", obj, held)
            return True

    def delete(self, obj: StoredObject) -> bool:
        """Drop ``obj`` unless what is held is newer; whether it was dropped."""
        with self._lock:
            held = self.objects[obj.kind].get(obj.name)
            if held is None or held.resource_version > obj.resource_version:
                return False
            del self.objects[obj.kind][obj.name]
            gone = replace(held, resource_version=obj.resource_version)
            self._tombstones[obj.kind][obj.name] = obj.resource_version
            self._record("DELETED", gone, None)
            return True

    def reset(self, kind: str, listed: builtins.list[StoredObject], version: int) -> bool:
        """A fresh list at ``version``: log what differs from what is held; whether any did."""
        names = {obj.name for obj in listed}
        changed = False
        for obj in listed:
            changed = self.put(obj) or changed
        with self._lock:
            for name, held in list(self.objects[kind].items()):
                # Written by this replica after the list was taken: not a delete.
                if name not in names and held.resource_version <= version:
                    del self.objects[kind][name]
                    self._record("DELETED", replace(held, resource_version=version), None)
                    changed = True
            tombs = self._tombstones[kind]
            for name in [n for n, rv in tombs.items() if rv <= version]:
                del tombs[name]
        return changed

    def changes_since(self, revision: int, kind: str | None) -> builtins.list[Change]:
        with self._lock:
            if revision < self.compacted:
                raise ChangesExpiredError(revision, oldest=self.compacted)
            found: builtins.list[Change] = []
            for change in reversed(self._log):
                if change.revision <= revision:
                    break
                if kind is None or change.object.kind == kind:
                    found.append(change)
        found.reverse()
        return found


class KubeFleetStore:
    """The fleet's ``FleetStore`` with ``--store kubernetes``; every replica opens one."""

    def __init__(self, settings: KubeStoreSettings, *, changes_kept: int = 10_000) -> None:
        if changes_kept < 1:
            raise ValueError("changes_kept must be at least 1")
        self.settings = settings
        self._ns = settings.namespace
        config = client_config(settings)
        self._client = Client(
            config,
            namespace=self._ns,
            timeout=client_timeout(settings),
            field_manager=FIELD_MANAGER,
        )
        self._mirror = _Mirror(changes_kept)
        self.reach = Reach(retry_after=settings.retry_after)
        self.on_change: Callable[[], None] | None = None
        """Called from the watch thread when another replica's change reached the mirror."""
        self._watcher = _Watcher(config=config, settings=settings, store=self)

    @classmethod
    def open(cls, settings: KubeStoreSettings, *, changes_kept: int = 10_000) -> KubeFleetStore:
        """List every kind, then start the watches; FleetStoreError if the API says no."""
        store = cls(settings, changes_kept=changes_kept)
        try:
            top = store._watcher.start_and_wait()
            store._mirror.start(top)
        except BaseException:
            store.close()
            raise
        return store

    # ------------------------------------------------------------------ API calls

    def _call(self, what: str, call: Callable[[], Any]) -> Any:  # noqa: ANN401 - lightkube's
        return call_api(
            self.reach,
            what,
            call,
            unavailable=FleetStoreUnavailableError,
            failed=FleetStoreError,
            conflict=_ConflictError,
            gone=_GoneError,
        )

    def _read(self, kind: str, name: str) -> StoredObject | None:
        """The object as the API has it now (into the mirror too), None if there is none."""
        try:
            got = self._call(
                f"get {KINDS[kind].plural}/{name}",
                lambda: self._client.get(_RESOURCES[kind], name, namespace=self._ns),
            )
        except _GoneError:
            held = self._mirror.objects[kind].get(name)
            if held is not None:
                self._mirror.delete(held)
            return None
        obj = _stored(kind, _as_obj(got))
        self._mirror.put(obj)
        return self._mirror.objects[kind].get(name, obj)

    def _fresh_conflict(self, kind: str, name: str, expected: int) -> ConflictError:
        current = self._read(kind, name)
        return ConflictError(
            kind,
            name,
            expected=expected,
            current=None if current is None else current.resource_version,
        )

    def _body(self, obj: StoredObject | None, kind: str, name: str, version: int | None) -> Obj:
        metadata: Obj = {"name": name, "namespace": self._ns}
        if version is not None:
            metadata["resourceVersion"] = str(version)
        if obj is not None:
            if obj.labels:
                metadata["labels"] = dict(obj.labels)
            if obj.annotations:
                metadata["annotations"] = dict(obj.annotations)
        return {
            "apiVersion": f"{GROUP}/{VERSION}",
            "kind": kind,
            "metadata": metadata,
            "spec": {} if obj is None else dict(obj.spec),
            "status": {} if obj is None else dict(obj.status),
        }

    def _taken(self, kind: str, answer: Any) -> StoredObject:  # noqa: ANN401 - lightkube's object
        obj = _stored(kind, _as_obj(answer))
        self._mirror.put(obj)
        return self._mirror.objects[kind].get(obj.name, obj)

    # ------------------------------------------------------------------ reads

    def revision(self) -> int:
        return self._mirror.revision

    def get(self, kind: str, name: str) -> StoredObject | None:
        return self._mirror.objects.get(kind, {}).get(name)

    def list(self, kind: str, *, selector: LabelSelector | None = None) -> list[StoredObject]:
        objects = dict(self._mirror.objects.get(kind, {}))
        return [
            objects[name]
            for name in sorted(objects)
            if selector is None or selector.matches(objects[name].labels)
        ]

    def changes_since(self, revision: int, *, kind: str | None = None) -> builtins.list[Change]:
        return self._mirror.changes_since(revision, kind)

    # ------------------------------------------------------------------ writes

    def put(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        expected_version: int | None = None,
        now: float,  # noqa: ARG002 - Kubernetes sets creationTimestamp
    ) -> tuple[StoredObject, bool]:
        check_kind(kind)
        new_labels = {str(k): str(v) for k, v in labels.items()}
        new_annotations = {str(k): str(v) for k, v in annotations.items()}
        new_spec = _copy(spec)
        res = _RESOURCES[kind]
        what = f"write {KINDS[kind].plural}/{name}"
        for _ in range(self.settings.conflict_retries):
            held = self.get(kind, name)
            if expected_version is not None and (
                held is None or held.resource_version != expected_version
            ):
                held = self._read(kind, name)  # the mirror may lag: ask the API
                if held is None or held.resource_version != expected_version:
                    raise self._fresh_conflict(kind, name, expected_version)
            wanted = StoredObject(
                kind=kind,
                name=name,
                uid="",
                resource_version=0,
                generation=0,
                created_at=0.0,
                labels=new_labels,
                annotations=new_annotations,
                spec=new_spec,
                status={},
            )
            if held is None:
                body = self._body(wanted, kind, name, None)
                try:
                    created = self._call(
                        what, partial(self._client.create, res.from_dict(body), namespace=self._ns)
                    )
                except _ConflictError:
                    self._read(kind, name)  # another replica created it: replace that one
                    continue
                return self._taken(kind, created), True
            if (
                same_content(dict(held.spec), new_spec)
                and held.labels == new_labels
                and held.annotations == new_annotations
            ):
                return held, False
            body = self._body(wanted, kind, name, held.resource_version)
            try:
                replaced = self._call(what, partial(self._client.replace, res.from_dict(body)))
            except (_ConflictError, _GoneError):
                if expected_version is not None:
                    raise self._fresh_conflict(kind, name, expected_version) from None
                self._read(kind, name)
                continue
            return self._taken(kind, replaced), False
        raise self._too_busy(kind, name)

    def set_status(
        self,
        kind: str,
        name: str,
        status: Mapping[str, Any],
        *,
        expected_version: int | None = None,
    ) -> StoredObject:
        check_kind(kind)
        new_status = _copy(status)
        res = _RESOURCES[kind]
        what = f"write {KINDS[kind].plural}/{name}/status"
        for _ in range(self.settings.conflict_retries):
            held = self.get(kind, name)
            if held is None or (
                expected_version is not None and held.resource_version != expected_version
            ):
                held = self._read(kind, name)
            if held is None:
                raise ObjectNotFoundError(kind, name)
            if expected_version is not None and held.resource_version != expected_version:
                raise ConflictError(
                    kind, name, expected=expected_version, current=held.resource_version
                )
            if same_content(dict(held.status), new_status):
                return held
            body = self._body(replace(held, status=new_status), kind, name, held.resource_version)
            try:
                replaced = self._call(
                    what,
                    partial(
                        self._client.replace,
                        res.Status.from_dict(body),
                        name,
                        namespace=self._ns,
                    ),
                )
            except _GoneError:
                self._read(kind, name)
                raise ObjectNotFoundError(kind, name) from None
            except _ConflictError:
                if expected_version is not None:
                    raise self._fresh_conflict(kind, name, expected_version) from None
                self._read(kind, name)
                continue
            return self._taken(kind, replaced)
        raise self._too_busy(kind, name)

    def delete(self, kind: str, name: str, *, expected_version: int | None = None) -> StoredObject:
        check_kind(kind)
        held = self.get(kind, name)
        if held is None or expected_version is not None:
            held = self._read(kind, name)
        if held is None:
            raise ObjectNotFoundError(kind, name)
        if expected_version is not None and held.resource_version != expected_version:
            raise ConflictError(
                kind, name, expected=expected_version, current=held.resource_version
            )
        try:
            self._call(
                f"delete {KINDS[kind].plural}/{name}",
                lambda: self._client.delete(_RESOURCES[kind], name, namespace=self._ns),
            )
        except _GoneError:
            self._read(kind, name)
            raise ObjectNotFoundError(kind, name) from None
        self._mirror.delete(held)
        return held

    def _too_busy(self, kind: str, name: str) -> FleetStoreError:
        return FleetStoreError(
            f"{KINDS[kind].plural}/{name} changed under {self.settings.conflict_retries} attempts"
            " in a row: too many writers at once, try again"
        )

    def watched(self, obj: StoredObject, *, deleted: bool) -> None:
        """A watch event (from the watch thread): into the mirror; wake the loop if it moved."""
        moved = self._mirror.delete(obj) if deleted else self._mirror.put(obj)
        if moved:
            self._changed()

    def relisted(self, kind: str, objects: builtins.list[StoredObject], version: int) -> None:
        if self._mirror.reset(kind, objects, version):
            self._changed()

    def _changed(self) -> None:
        callback = self.on_change
        if callback is not None:
            callback()

    def close(self) -> None:
        self.on_change = None
        self._watcher.stop()
        self._client.close()


class _Watcher(WatchThread):
    """The watches of every fleet kind, on a thread of their own with their own event loop."""

    def __init__(
        self, *, config: KubeConfig, settings: KubeStoreSettings, store: KubeFleetStore
    ) -> None:
        super().__init__(
            config=config, settings=settings, name="fleet-kube-watch", reach=store.reach
        )
        self._store = store
        self._listed = {kind: threading.Event() for kind in KINDS}
        self._first_versions: dict[str, int] = {}

    def start_and_wait(self) -> int:
        """Start the watches once every kind is listed; the newest of the lists' versions."""
        self._start(
            ((self._listed[kind], f"{info.plural}.{GROUP}") for kind, info in KINDS.items()),
            FleetStoreError,
        )
        return max(self._first_versions.values(), default=0)

    def _watches(self, client: AsyncClient) -> Iterator[tuple[str, Coroutine[Any, Any, None]]]:
        for kind, info in KINDS.items():
            yield f"fleet-kube-{info.plural}", self._watch(client, kind)

    async def _probe(self, client: AsyncClient) -> None:
        kind = next(iter(KINDS))
        await client.get(_RESOURCES[kind], PROBE_NAME, namespace=self._settings.namespace)

    async def _watch(self, client: AsyncClient, kind: str) -> None:
        res = _RESOURCES[kind]
        ns = self._settings.namespace
        version: str | None = None
        while True:
            try:
                if version is None:
                    listed = client.list(res, namespace=ns)
                    objects = [_stored(kind, _as_obj(o)) async for o in listed]
                    version = listed.resourceVersion
                    self._store.relisted(kind, objects, int(version or 0))
                    self._listed_ok()
                    self._first_versions.setdefault(kind, int(version or 0))
                    self._listed[kind].set()
                # The server ends the watch after watch_timeout; a connection that died without
                # a word (no FIN) would hang forever, so past that and a grace we list again.
                async with asyncio.timeout(self._settings.watch_timeout + WATCH_GRACE):
                    async for event, resource in client.watch(
                        res,
                        namespace=ns,
                        resource_version=version,
                        server_timeout=int(self._settings.watch_timeout),
                    ):
                        obj = _stored(kind, _as_obj(resource))
                        version = str(obj.resource_version)
                        if event in ("ADDED", "MODIFIED", "DELETED"):
                            self._store.watched(obj, deleted=event == "DELETED")
                version = None
            except TimeoutError:
                version = None
                log.debug("watch of %s renewed: listing again", KINDS[kind].plural)
            except Exception as error:  # noqa: BLE001 - a watch must outlive any one failure
                # 410 Gone, the API server restarting, a broken line: list again, then watch.
                version = None
                level = self._watch_failed(error)
                log.log(level, "watch of %s failed (%s): listing again", KINDS[kind].plural, error)
                await asyncio.sleep(self._settings.watch_retry)
