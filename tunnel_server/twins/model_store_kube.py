"""Uploaded device models on the Kubernetes API: one ``DeviceModel`` custom resource per name.

The ``UploadStore`` of ``--store kubernetes`` (docs/ha.md, "Device models"): every replica keeps
the same uploads, in ``devicemodels.edgefleet.io`` objects of the store's namespace
(packaging/kubernetes/tunnel-server/crds/devicemodels.yaml).

Rules:

- One object per model name holds every kept version (oldest first) and ``latest``. A change of
  a name is therefore one write with the object's resourceVersion: the catalogue's rule (a new
  version must be higher than the latest, the bounds) runs on the versions the API has, and on
  a 409 it runs again on the fresh object. Of two replicas racing to upload the same version,
  one stores it and the other answers ``version_not_higher``.
- An object stays within ``max_bytes`` (1 MiB of JSON; etcd refuses a request above 1.5 MiB):
  past it, the oldest versions are dropped, as past ``max_versions``; the latest always stays.
- Reads never call the API: the objects are listed once and then watched (any error or 410
  Gone: list again) on a thread of their own (``WatchThread``), into a mirror of parsed
  versions. A version that does not parse (written past the server, e.g. by a GitOps tool) is
  logged and skipped, as a bad row of the SQLite file is.
- Each write's answer goes into the mirror at once (read your writes); the watch's copy of it
  is then not newer and dropped. A change that another replica made reaches ``on_change``
  (called on the watch thread; ``models_api.setup`` hands it to the loop), never one's own.
- Writes are synchronous calls (one round trip, from the event loop, as SQLite's commit was):
  uploads are rare.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from typing import TYPE_CHECKING, Any, Final

from lightkube import AsyncClient, Client
from lightkube.generic_resource import GenericNamespacedResource, create_namespaced_resource

from device_models import DeviceModel, DeviceModelsError, version_key
from tunnel_server.kubestore.reach import ApiUnreachableError, Reach
from tunnel_server.kubestore.store import WATCH_GRACE, client_config
from tunnel_server.kubestore.watch_thread import WatchThread, call_api, client_timeout
from tunnel_server.twins.model_store import Change, ModelStoreError, ModelVersion

if TYPE_CHECKING:
    from collections.abc import Coroutine, Iterator

    from lightkube import KubeConfig

    from tunnel_server.kubestore.settings import KubeStoreSettings

__all__ = ["GROUP", "KIND", "PLURAL", "VERSION", "KubeModelStore", "model_object"]

log = logging.getLogger("tunnel_server.twins.model_store")

GROUP: Final = "edgefleet.io"
VERSION: Final = "v1alpha1"
KIND: Final = "DeviceModel"
PLURAL: Final = "devicemodels"
FIELD_MANAGER: Final = "tunnel-server"
MAX_BYTES: Final = 1024 * 1024
"""JSON bytes of one object's versions: etcd takes at most 1.5 MiB per request."""

_RESOURCE: type[GenericNamespacedResource] = create_namespaced_resource(
    GROUP, VERSION, KIND, PLURAL
)

Obj = dict[str, Any]


class ModelStoreUnavailableError(ModelStoreError, ApiUnreachableError):
    """An upload could not reach the Kubernetes API: 503 ``store_unavailable`` with Retry-After."""


def _as_obj(resource: Any) -> Obj:  # noqa: ANN401 - lightkube's generic objects are dicts
    return dict(resource.to_dict())


class _ConflictError(Exception):
    """409: the object changed (or was created) since it was read."""


class _GoneError(Exception):
    """404: no such object."""


def _version_json(entry: ModelVersion) -> Obj:
    out: Obj = {
        "version": entry.version,
        "createdAt": entry.created or 0.0,
        "model": entry.model.to_dict(),
    }
    if entry.created_by:
        out["createdBy"] = entry.created_by
    return out


def model_object(name: str, versions: Sequence[ModelVersion]) -> Obj:
    """The custom resource holding ``versions`` (oldest first) of model ``name``."""
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name},
        "spec": {
            "latest": versions[-1].version,
            "versions": [_version_json(e) for e in versions],
        },
    }


def _parse(obj: Obj) -> tuple[str, int, tuple[ModelVersion, ...]]:
    """Name, resourceVersion and the versions that parse (the others logged), oldest first."""
    meta = obj.get("metadata") or {}
    name = str(meta.get("name", ""))
    rv = int(meta.get("resourceVersion") or 0)
    spec = obj.get("spec") or {}
    out: list[ModelVersion] = []
    for item in spec.get("versions") or ():
        try:
            model = DeviceModel.from_dict(item["model"])
            if model.name != name or model.version != item.get("version"):
                raise ValueError(f"holds model {model.name} {model.version}")  # noqa: TRY301
            created = item.get("createdAt")
            by = item.get("createdBy")
            entry = ModelVersion(
                model=model,
                source="uploaded",
                created=float(created) if isinstance(created, int | float) else None,
                created_by=str(by) if by else "",
            )
        except (KeyError, TypeError, ValueError, DeviceModelsError) as error:
            version = item.get("version") if isinstance(item, dict) else None
            log.error("stored model %s %s does not parse; skipped: %s", name, version, error)  # noqa: TRY400
            continue
        out.append(entry)
    out.sort(key=lambda e: version_key(e.version))
    return name, rv, tuple(out)


class _Mirror:
    """The parsed objects by name, ordered by resourceVersion; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._versions: dict[str, int] = {}
        self._tombstones: dict[str, int] = {}
        self.uploads: dict[str, tuple[ModelVersion, ...]] = {}
        """Replaced, never changed in place: a reader's snapshot stays as it was."""

    def get(self, name: str) -> tuple[int, tuple[ModelVersion, ...]] | None:
        with self._lock:
            rv = self._versions.get(name)
            return None if rv is None else (rv, self.uploads.get(name, ()))

    def put(self, name: str, rv: int, versions: tuple[ModelVersion, ...]) -> bool:
        with self._lock:
            if self._versions.get(name, -1) >= rv or self._tombstones.get(name, -1) >= rv:
                return False
            self._tombstones.pop(name, None)
            self._versions[name] = rv
            uploads = dict(self.uploads)
            if versions:
                uploads[name] = versions
            else:
                uploads.pop(name, None)
            self.uploads = uploads
            return True

    def delete(self, name: str, rv: int) -> bool:
        with self._lock:
            held = self._versions.get(name)
            if held is None or held > rv:
                return False
            del self._versions[name]
            self._tombstones[name] = rv
            uploads = dict(self.uploads)
            uploads.pop(name, None)
            self.uploads = uploads
            return True

    def relisted(
        self, listed: dict[str, tuple[int, tuple[ModelVersion, ...]]], rv: int
    ) -> set[str]:
        """A fresh list at ``rv``: the names that changed."""
        changed = {name for name, (at, versions) in listed.items() if self.put(name, at, versions)}
        with self._lock:
            gone = [n for n, at in self._versions.items() if n not in listed and at <= rv]
        for name in gone:
            if self.delete(name, rv):
                changed.add(name)
        with self._lock:
            for name in [n for n, at in self._tombstones.items() if at <= rv]:
                del self._tombstones[name]
        return changed


class KubeModelStore:
    """The uploads as ``DeviceModel`` custom resources; every replica opens one."""

    def __init__(self, settings: KubeStoreSettings, *, max_bytes: int = MAX_BYTES) -> None:
        self.settings = settings
        self.max_bytes = max_bytes
        self._ns = settings.namespace
        config = client_config(settings)
        self._client = Client(
            config,
            namespace=self._ns,
            timeout=client_timeout(settings),
            field_manager=FIELD_MANAGER,
        )
        self.reach = Reach(retry_after=settings.retry_after)
        self._mirror = _Mirror()
        self.on_change: Callable[[str], None] | None = None
        self._watcher = _Watcher(config=config, settings=settings, store=self)

    @classmethod
    def open(cls, settings: KubeStoreSettings, *, max_bytes: int = MAX_BYTES) -> KubeModelStore:
        """List the objects, then watch them; ModelStoreError if the API says no."""
        store = cls(settings, max_bytes=max_bytes)
        try:
            store._watcher.start_and_wait()
        except BaseException:
            store.close()
            raise
        return store

    def uploads(self) -> Mapping[str, Sequence[ModelVersion]]:
        return self._mirror.uploads

    def _call(self, what: str, call: Callable[[], Any]) -> Any:  # noqa: ANN401 - lightkube's
        return call_api(
            self.reach,
            what,
            call,
            unavailable=ModelStoreUnavailableError,
            failed=ModelStoreError,
            conflict=_ConflictError,
            gone=_GoneError,
        )

    def _read(self, name: str) -> tuple[int | None, list[ModelVersion]]:
        """The object as the API has it now (into the mirror too): resourceVersion, versions."""
        try:
            got = self._call(
                f"get {PLURAL}/{name}",
                lambda: self._client.get(_RESOURCE, name, namespace=self._ns),
            )
        except _GoneError:
            held = self._mirror.get(name)
            if held is not None and self._mirror.delete(name, held[0]):
                self._changed(name)
            return None, []
        _, rv, versions = _parse(_as_obj(got))
        if self._mirror.put(name, rv, versions):
            self._changed(name)  # another replica's write the watch has not brought yet
        return rv, list(versions)

    def _fit(self, kept: list[ModelVersion]) -> list[ModelVersion]:
        """Drop the oldest versions until the object's versions fit ``max_bytes``."""
        sizes = [len(json.dumps(_version_json(e), separators=(",", ":"))) for e in kept]
        while len(kept) > 1 and sum(sizes) > self.max_bytes:
            kept, sizes = kept[1:], sizes[1:]
        return kept

    def update(self, name: str, change: Change) -> list[ModelVersion]:
        what = f"write {PLURAL}/{name}"
        # From the mirror: if it lags another replica's write, the write answers 409 and the
        # change runs again on what the API has.
        held = self._mirror.get(name)
        rv, current = (None, []) if held is None else (held[0], list(held[1]))
        for _ in range(self.settings.conflict_retries):
            kept = self._fit(sorted(change(list(current)), key=lambda e: version_key(e.version)))
            try:
                answer = self._write(what, name, rv, kept)
            except _ConflictError:
                rv, current = self._read(name)
                continue
            if answer is not None:
                _, at, versions = _parse(answer)
                self._mirror.put(name, at, versions)
            return kept
        raise ModelStoreError(
            f"{PLURAL}/{name} changed under {self.settings.conflict_retries} attempts in a row:"
            " too many writers at once, try again"
        )

    def _write(self, what: str, name: str, rv: int | None, kept: list[ModelVersion]) -> Obj | None:
        """Create, replace at ``rv`` or delete (nothing kept); the API's answer."""
        if not kept:
            if rv is None:
                return None
            try:
                self._call(what, lambda: self._client.delete(_RESOURCE, name, namespace=self._ns))
            except _GoneError:
                return None
            self._mirror.delete(name, rv)
            return None
        body = model_object(name, kept)
        body["metadata"]["namespace"] = self._ns
        if rv is None:
            call = partial(self._client.create, _RESOURCE.from_dict(body), namespace=self._ns)
        else:
            body["metadata"]["resourceVersion"] = str(rv)
            call = partial(self._client.replace, _RESOURCE.from_dict(body))
        try:
            return _as_obj(self._call(what, call))
        except _GoneError:
            raise _ConflictError(what) from None  # deleted since it was read: create it again

    def watched(self, obj: Obj, *, deleted: bool) -> None:
        """A watch event (on the watch thread): into the mirror; tell ``on_change`` if it moved."""
        name, rv, versions = _parse(obj)
        moved = self._mirror.delete(name, rv) if deleted else self._mirror.put(name, rv, versions)
        if moved:
            self._changed(name)

    def relisted(self, objects: list[Obj], rv: int) -> None:
        listed = {}
        for obj in objects:
            name, at, versions = _parse(obj)
            listed[name] = (at, versions)
        for name in sorted(self._mirror.relisted(listed, rv)):
            self._changed(name)

    def _changed(self, name: str) -> None:
        callback = self.on_change
        if callback is not None:
            callback(name)

    def close(self) -> None:
        self.on_change = None
        self._watcher.stop()
        self._client.close()


class _Watcher(WatchThread):
    """The watch of ``DeviceModel`` objects, on a thread of its own with its own event loop."""

    def __init__(
        self, *, config: KubeConfig, settings: KubeStoreSettings, store: KubeModelStore
    ) -> None:
        super().__init__(
            config=config, settings=settings, name="models-kube-watch", reach=store.reach
        )
        self._store = store
        self._listed = threading.Event()

    def start_and_wait(self) -> None:
        self._start([(self._listed, f"{PLURAL}.{GROUP}")], ModelStoreError)

    def _watches(self, client: AsyncClient) -> Iterator[tuple[str, Coroutine[Any, Any, None]]]:
        yield f"models-kube-{PLURAL}", self._watch(client)

    async def _watch(self, client: AsyncClient) -> None:
        ns = self._settings.namespace
        version: str | None = None
        while True:
            try:
                if version is None:
                    listed = client.list(_RESOURCE, namespace=ns)
                    objects = [_as_obj(o) async for o in listed]
                    version = listed.resourceVersion
                    self._store.relisted(objects, int(version or 0))
                    self._listed.set()
                # As the other stores' watches: a connection that died without a word would
                # hang forever, so past the server's own timeout and a grace we list again.
                async with asyncio.timeout(self._settings.watch_timeout + WATCH_GRACE):
                    async for event, resource in client.watch(
                        _RESOURCE,
                        namespace=ns,
                        resource_version=version,
                        server_timeout=int(self._settings.watch_timeout),
                    ):
                        obj = _as_obj(resource)
                        version = str((obj.get("metadata") or {}).get("resourceVersion") or version)
                        if event in ("ADDED", "MODIFIED", "DELETED"):
                            self._store.watched(obj, deleted=event == "DELETED")
                version = None
            except TimeoutError:
                version = None
                log.debug("watch of %s renewed: listing again", PLURAL)
            except Exception as error:  # noqa: BLE001 - a watch must outlive any one failure
                # 410 Gone, the API server restarting, a broken line: list again, then watch.
                version = None
                self._failure = error
                log.warning("watch of %s failed (%s): listing again", PLURAL, error)
                await asyncio.sleep(self._settings.watch_retry)
