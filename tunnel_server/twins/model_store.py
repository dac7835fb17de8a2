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
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
from dataclasses import dataclass
from pathlib import Path

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
    "ModelVersion",
    "NotNewerError",
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


class ModelStore:
    """The uploads, over one SQLite file."""

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

    def add(self, entry: ModelVersion, *, drop: list[tuple[str, str]]) -> None:
        """Store ``entry`` and drop the ``(name, version)`` rows in one transaction."""
        self._db.execute("BEGIN IMMEDIATE")
        try:
            self._db.execute(
                "INSERT INTO versions (name, version, model, created, created_by)"
                " VALUES (?, ?, ?, ?, ?)",
                (
                    entry.name,
                    entry.version,
                    json.dumps(entry.model.to_dict(), separators=(",", ":")),
                    entry.created,
                    entry.created_by or "",
                ),
            )
            self._db.executemany("DELETE FROM versions WHERE name = ? AND version = ?", drop)
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def close(self) -> None:
        self._db.close()


class ModelCatalogue:
    """Every model version the cloud knows: the base (built-ins, models folder) and uploads."""

    def __init__(
        self,
        *,
        store: ModelStore,
        registry: ModelRegistry,
        max_names: int = 256,
        max_versions: int = 32,
    ) -> None:
        self.store = store
        self.registry = registry
        self.max_names = max_names
        self.max_versions = max_versions
        builtins = builtin_models()
        self._base: dict[str, ModelVersion] = {}
        for name in registry.names():
            model = registry.get(name)
            if model is None:
                continue
            builtin = builtins.get(name)
            source = "builtin" if builtin is not None and builtin == model else "file"
            self._base[name] = ModelVersion(model=model, source=source)
        self._uploads: dict[str, list[ModelVersion]] = {}
        for entry in store.load():
            self._uploads.setdefault(entry.name, []).append(entry)
        for name, entries in self._uploads.items():
            entries.sort(key=lambda e: version_key(e.version))
            registry.offer(entries[-1].model)
            log.info("device model %s %s (uploaded) loaded", name, entries[-1].version)

    def names(self) -> list[str]:
        return sorted(set(self._base) | set(self._uploads))

    def versions(self, name: str) -> list[ModelVersion]:
        """Every version of ``name``, oldest first."""
        entries = [*self._uploads.get(name, [])]
        base = self._base.get(name)
        if base is not None and all(e.version != base.version for e in entries):
            entries.append(base)
        return sorted(entries, key=lambda e: version_key(e.version))

    def latest(self, name: str) -> ModelVersion | None:
        versions = self.versions(name)
        return versions[-1] if versions else None

    def find(self, name: str, version: str) -> ModelVersion | None:
        return next((e for e in self.versions(name) if e.version == version), None)

    def add(self, model: DeviceModel, *, now: float, by: str) -> ModelVersion:
        """Store an upload; NotNewerError or LimitError when it may not be stored."""
        current = self.latest(model.name)
        if current is not None and not is_newer(model.version, current.version):
            raise NotNewerError(current.version)
        uploads = self._uploads.get(model.name, [])
        if not uploads and len(self._uploads) >= self.max_names:
            raise LimitError(
                "too_many_models",
                f"the cloud holds {self.max_names} uploaded model names already (the bound)",
            )
        entry = ModelVersion(model=model, source="uploaded", created=now, created_by=by)
        kept = [*uploads, entry]
        dropped = kept[: max(0, len(kept) - self.max_versions)]
        self.store.add(entry, drop=[(e.name, e.version) for e in dropped])
        self._uploads[model.name] = kept[len(dropped) :]
        self.registry.offer(model)
        return entry
