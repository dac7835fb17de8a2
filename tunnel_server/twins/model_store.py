"""Uploaded device models, kept durably, and the cloud's catalogue of every model it knows.

Rules (docs/device-models.md, "Uploading and distributing models"):

* Uploads live in their own SQLite file (``device-models.sqlite3`` in the data dir), one row per
  (name, version) with the canonical model (``DeviceModel.to_dict()`` as JSON), who uploaded it
  and when. A version of a name must be higher than every version the cloud knows of that name
  (built-in, the models folder, uploads): versions only go forward, so "latest" is well defined
  on every node and the cloud and the agents agree on it.
* Bounded: at most ``max_names`` uploaded names and ``max_versions`` versions per name; past the
  second, the oldest uploaded version of the name is dropped (the latest is what validates).
* ``ModelCatalogue`` is the API's view: the built-ins and the server's models folder as loaded at
  start (the "base"), plus the uploads; the twins part's ``ModelRegistry`` is kept at the latest
  version of each name (``offer``), so twin validation uses an upload at once.
* Schema versions: `SCHEMA` (daemon_support.schema); version 1 is the table below, which the
  release before already stamped 1.
* Where uploads are kept is an ``UploadStore``: ``ModelStore`` (the SQLite file, one server) or
  ``model_store_kube.KubeModelStore`` (``--store kubernetes``: one ``DeviceModel`` custom resource
  per name, shared by every replica, docs/ha.md). Every change of a name is one atomic
  ``update`` whose rule (``ModelCatalogue.add``) runs on the name's current versions, so "versions
  only go forward" holds across replicas too. An upload taken by another replica reaches
  ``ModelCatalogue.changed`` (the store's ``on_change``), which offers it to the registry and
  hands it to the listeners (the ``models`` push to this replica's agents).
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from daemon_support.schema import Schema, migrate
from device_models import (
    DeviceModel,
    DeviceModelsError,
    ModelRegistry,
    builtin_models,
    is_newer,
    version_key,
)

__all__ = [
    "MODELS_FILE",
    "SCHEMA",
    "LimitError",
    "ModelCatalogue",
    "ModelStore",
    "ModelStoreError",
    "ModelVersion",
    "NotNewerError",
    "UploadStore",
]

log = logging.getLogger("tunnel_server.twins.model_store")

MODELS_FILE = "device-models.sqlite3"

_VERSION_1 = """
CREATE TABLE IF NOT EXISTS versions (
    name TEXT NOT NULL,
    version TEXT NOT NULL,
    model TEXT NOT NULL,
    created REAL NOT NULL,
    created_by TEXT NOT NULL,
    PRIMARY KEY (name, version)
) WITHOUT ROWID;
"""
SCHEMA = Schema(name="device model store", steps=(_VERSION_1,))


@dataclass(frozen=True, kw_only=True)
class ModelVersion:
    """One version of a model the cloud knows, and where it came from."""

    model: DeviceModel
    source: str
    """``builtin``, ``file`` (the server's models folder) or ``uploaded``."""
    created: float | None = None
    created_by: str | None = None

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def version(self) -> str:
        return self.model.version


class NotNewerError(ValueError):
    def __init__(self, current: str) -> None:
        super().__init__(current)
        self.current = current


class LimitError(ValueError):
    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


class ModelStoreError(RuntimeError):
    """The uploads could not be written (the Kubernetes API unreachable or refusing)."""


Change = Callable[[list[ModelVersion]], list[ModelVersion]]
"""A name's uploaded versions (oldest first) -> what to keep; may raise to refuse."""


class UploadStore(Protocol):
    """Where uploaded versions are kept: one SQLite file, or the Kubernetes API."""

    on_change: Callable[[str], None] | None
    """Called with a name another replica changed (from any thread); never for own writes."""

    def uploads(self) -> Mapping[str, Sequence[ModelVersion]]:
        """Every kept upload by name, oldest first; a snapshot the caller must not change."""
        ...

    def update(self, name: str, change: Change) -> list[ModelVersion]:
        """Apply ``change`` to ``name``'s current versions atomically; what is kept now.

        ``change`` may run more than once (a concurrent writer came first: it runs again on
        the fresh versions) and its exceptions pass through, nothing written.
        """
        ...

    def close(self) -> None: ...


def _sorted(entries: Sequence[ModelVersion]) -> list[ModelVersion]:
    return sorted(entries, key=lambda e: version_key(e.version))


class ModelStore:
    """The uploads, over one SQLite file (one server: ``on_change`` is never called)."""

    def __init__(self, path: Path) -> None:
        if not path.exists():
            # Create it 0600 first: SQLite copies the mode to its -wal and -shm files.
            os.close(os.open(path, os.O_CREAT | os.O_WRONLY, 0o600))
        self._db = sqlite3.connect(path, isolation_level=None, timeout=5.0)
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = FULL")  # an acknowledged upload survives a crash
        try:
            migrate(self._db, SCHEMA, path=path)  # SchemaError: a newer release's file
        except BaseException:
            self._db.close()
            raise
        self.on_change: Callable[[str], None] | None = None
        held: dict[str, list[ModelVersion]] = {}
        for entry in self.load():
            held.setdefault(entry.name, []).append(entry)
        self._uploads = {name: tuple(_sorted(entries)) for name, entries in held.items()}

    def load(self) -> list[ModelVersion]:
        """Every stored version that still parses (a bad row is logged and skipped)."""
        out = []
        for name, version, raw, created, created_by in self._db.execute(
            "SELECT name, version, model, created, created_by FROM versions"
        ):
            try:
                model = DeviceModel.from_dict(json.loads(raw))
            except (ValueError, DeviceModelsError) as error:
                log.error("stored model %s %s does not parse; skipped: %s", name, version, error)  # noqa: TRY400
                continue
            out.append(
                ModelVersion(model=model, source="uploaded", created=created, created_by=created_by)
            )
        return out

    def uploads(self) -> Mapping[str, Sequence[ModelVersion]]:
        return self._uploads

    def update(self, name: str, change: Change) -> list[ModelVersion]:
        """One transaction: rows added and dropped as ``change`` says."""
        current = list(self._uploads.get(name, ()))
        kept = _sorted(change(list(current)))
        before = {e.version for e in current}
        after = {e.version for e in kept}
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.executemany(
                "INSERT INTO versions (name, version, model, created, created_by)"
                " VALUES (?, ?, ?, ?, ?)",
                [
                    (
                        name,
                        e.version,
                        json.dumps(e.model.to_dict(), separators=(",", ":")),
                        e.created,
                        e.created_by or "",
                    )
                    for e in kept
                    if e.version not in before
                ],
            )
            self._db.executemany(
                "DELETE FROM versions WHERE name = ? AND version = ?",
                [(name, version) for version in before - after],
            )
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")
        uploads = dict(self._uploads)
        if kept:
            uploads[name] = tuple(kept)
        else:
            uploads.pop(name, None)
        self._uploads = uploads
        return kept

    def close(self) -> None:
        self._db.close()


class ModelCatalogue:
    """Every model version the cloud knows: the base (built-ins, models folder) and uploads."""

    def __init__(
        self,
        *,
        store: UploadStore,
        registry: ModelRegistry,
        max_names: int = 256,
        max_versions: int = 32,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_names = max_names
        self.max_versions = max_versions
        self._listeners: list[Callable[[DeviceModel], None]] = []
        builtins = builtin_models()
        self._base: dict[str, ModelVersion] = {}
        for name in registry.names():
            model = registry.get(name)
            if model is None:
                continue
            builtin = builtins.get(name)
            source = "builtin" if builtin is not None and builtin == model else "file"
            self._base[name] = ModelVersion(model=model, source=source)
        for name, entries in store.uploads().items():
            if entries:
                registry.offer(entries[-1].model)
                log.info("device model %s %s (uploaded) loaded", name, entries[-1].version)

    def listen(self, listener: Callable[[DeviceModel], None]) -> None:
        """Call ``listener`` with each upload that becomes the latest of its name.

        Wherever it was taken: this server or, through the store's watch, another replica.
        """
        self._listeners.append(listener)

    def names(self) -> list[str]:
        return sorted(set(self._base) | set(self.store.uploads()))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        return self._with_base(name, self.store.uploads().get(name, ()))

    def _with_base(self, name: str, uploads: Sequence[ModelVersion]) -> list[ModelVersion]:
        entries = [*uploads]
        base = self._base.get(name)
        if base is not None and all(e.version != base.version for e in entries):
            entries.append(base)
        return _sorted(entries)

    def latest(self, name: str) -> ModelVersion | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def find(self, name: str, version: str) -> ModelVersion | None:
        return next((e for e in self.versions(name) if e.version == version), None)

    def add(self, model: DeviceModel, *, now: float, by: str) -> ModelVersion:
        """Store an upload; NotNewerError or LimitError when it may not be stored.

        The rules run inside the store's atomic update, on the name's versions as stored
        (another replica's upload of the same name makes them run again).
        ModelStoreError: the store could not write it.
        """
        entry = ModelVersion(model=model, source="uploaded", created=now, created_by=by)

        def change(uploads: list[ModelVersion]) -> list[ModelVersion]:
            known = self._with_base(model.name, uploads)
            if known and not is_newer(model.version, known[-1].version):
                raise NotNewerError(known[-1].version)
            others = len(set(self.store.uploads()) - {model.name})
            if not uploads and others >= self.max_names:
                raise LimitError(
                    "too_many_models",
                    f"the cloud holds {self.max_names} uploaded model names already (the bound)",
                )
            kept = [*_sorted(uploads), entry]
            return kept[max(0, len(kept) - self.max_versions) :]

        self.store.update(model.name, change)
        self._offer(model)
        return entry

    def changed(self, name: str) -> None:
        """Another replica changed ``name``'s uploads: follow a new latest (on the loop)."""
        latest = self.latest(name)
        if latest is not None and latest.source == "uploaded":
            self._offer(latest.model)

    def refresh(self) -> None:
        """Follow every name's latest upload (after missing changes, e.g. at start)."""
        for name in list(self.store.uploads()):
            self.changed(name)

    def _offer(self, model: DeviceModel) -> None:
        if not self.registry.offer(model):
            return  # not newer than what twins validate with: nothing to push
        log.info("device model %s %s is the latest now", model.name, model.version)
        for listener in self._listeners:
            listener(model)
