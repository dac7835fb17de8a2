"""The applier's state on disk: one atomic JSON file per work, ``<state_dir>/<name>.json``.

Each file holds the work document (None once the hub deleted it and its resources are still
being removed), the resources the work applied (OCM's AppliedManifestWork: what to delete
when the work goes or a manifest leaves it, with each object's uid so that an object someone
re-created is never deleted in its place), the pending delete policy, and the last status
reported. Written with ``daemon_support.files.write_atomic``: a crash leaves the old file or
the new one. A file that cannot be read is logged once and left aside (renamed ``.bad``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon_support.files import write_atomic
from edge_agent.cluster.works.manifests import WorkError, work_name

log = logging.getLogger("edge_agent.cluster.works")

__all__ = ["AppliedResource", "WorkRecord", "WorkStore"]


@dataclass(frozen=True)
class AppliedResource:
    """One object a work created or applied, as its uid pins it."""

    group: str
    version: str
    resource: str
    namespaced: bool
    namespace: str
    name: str
    uid: str
    kind: str = ""

    @property
    def identity(self) -> tuple[str, str, str, str]:
        return (self.group, self.resource, self.namespace, self.name)

    def to_json(self) -> dict[str, Any]:
        return dict(self.__dict__)

    @classmethod
    def from_json(cls, raw: object) -> AppliedResource | None:
        if not isinstance(raw, dict):
            return None
        try:
            return cls(
                group=str(raw["group"]),
                version=str(raw["version"]),
                resource=str(raw["resource"]),
                namespaced=bool(raw["namespaced"]),
                namespace=str(raw["namespace"]),
                name=str(raw["name"]),
                uid=str(raw["uid"]),
                kind=str(raw.get("kind", "")),
            )
        except KeyError:
            return None


@dataclass
class WorkRecord:
    document: dict[str, Any] | None
    applied: list[AppliedResource] = field(default_factory=list)
    deleting: str | None = None
    """"Foreground" or "Orphan" once the hub deleted the work; None while it is held."""
    status: dict[str, Any] | None = None
    resource_version: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "document": self.document,
            "resourceVersion": self.resource_version,
            "applied": [a.to_json() for a in self.applied],
            "deleting": self.deleting,
            "status": self.status,
        }


class WorkStore:
    """The folder of work files; ``load`` at start, ``save``/``remove`` as works change."""

    def __init__(self, folder: Path, *, max_file_bytes: int) -> None:
        self._folder = folder
        self._max = max_file_bytes

    def load(self) -> dict[str, WorkRecord]:
        self._folder.mkdir(parents=True, exist_ok=True, mode=0o700)
        records: dict[str, WorkRecord] = {}
        for path in sorted(self._folder.glob("*.json")):
            try:
                records[work_name(path.stem)] = self._read(path)
            except (OSError, ValueError) as error:  # WorkError, JSON errors are ValueErrors
                log.warning("work file %s left aside: %s", path, error)
                path.replace(path.with_suffix(".bad"))
        return records

    def _read(self, path: Path) -> WorkRecord:
        with path.open("rb") as file:
            raw = file.read(self._max + 1)
        if len(raw) > self._max:
            raise WorkError(f"larger than {self._max} bytes")
        data = json.loads(raw)
        if not isinstance(data, dict):
            raise WorkError("not a JSON object")
        document = data.get("document")
        applied = [AppliedResource.from_json(a) for a in data.get("applied") or []]
        deleting = data.get("deleting")
        status = data.get("status")
        version = data.get("resourceVersion")
        return WorkRecord(
            document=document if isinstance(document, dict) else None,
            applied=[a for a in applied if a is not None],
            deleting=deleting if deleting in ("Foreground", "Orphan") else None,
            status=status if isinstance(status, dict) else None,
            resource_version=version if isinstance(version, int) else 0,
        )

    def save(self, name: str, record: WorkRecord) -> None:
        data = json.dumps(record.to_json(), separators=(",", ":")).encode()
        write_atomic(self._folder / f"{work_name(name)}.json", data, mode=0o600)

    def remove(self, name: str) -> None:
        (self._folder / f"{work_name(name)}.json").unlink(missing_ok=True)
