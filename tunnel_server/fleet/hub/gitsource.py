"""The GitSource syncer: fleet objects kept in step with a folder of a git repository.

One task per GitSource (``gitsource.<name>``), in one task group started by
``setup_gitsource(app)``. The group's own task follows the store: a new source starts its task,
a changed spec (new generation) restarts it (an immediate sync), a deleted source stops it and
removes its mirror. Each source's task, every ``intervalSeconds``:

1. fetches the branch or tag into its bare mirror ``<data>/fleet/git/<name>/`` (the git CLI,
   ``gitsource_git``); a failing fetch keeps every object applied so far and says why
   (``Synced`` False, reason ``FetchFailed``, git's own message);
2. when the commit moved (or the spec did), reads the folder's ``*.yaml``/``*.yml``/``*.json``
   (recursive, hidden files skipped, bounded: files, bytes, 1,000 documents) and validates each
   document as the API would (``gitsource_files``);
3. applies every object that differs from the store (so drift, an object edited or deleted by
   hand, is put back each interval even when the commit did not move), each labelled
   ``fleet.edgefleet.io/gitsource=<name>``;
4. prunes (when ``prune``) the objects with its label the folder no longer declares; not while
   a file of the folder cannot be read at all (what it held is unknown), and never an object
   whose document is in the folder but refused (fix the document, the object stays);
5. writes its status: ``commit``, ``syncedAt``, ``objects``, ``files`` (each file with an error),
   condition ``Synced``.

Ownership: an object carrying another live GitSource's label belongs to that source (the first
to claim it); this source reports the conflict against its file. An object without the label,
or labelled by a GitSource that no longer exists, is adopted.

A deleted GitSource's objects are kept (deleting a source is not a request to delete what it
made: moving objects to another source, or renaming a source, must not take them down). The new
owner adopts them; ``tunnel-server delete`` removes them one by one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import shutil
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from aiohttp import web

from fleet_model.documents import KINDS, SpecError
from fleet_model.gitsource import GITSOURCE_LABEL, GitSourceSpec, is_manifest_file, parse_spec
from fleet_model.labels import parse_label_selector
from tunnel_server.app_keys import FLEET_HUB_KEY, SETTINGS_KEY
from tunnel_server.fleet.hub.gitsource_files import Desired, FolderRead, read_folder
from tunnel_server.fleet.hub.gitsource_git import (
    GitError,
    GitSettings,
    Mirror,
    NotAFolderError,
    OutputTooLargeError,
    TreeFile,
)
from tunnel_server.fleet.hub.hub import CLUSTER_LABEL, FleetHub
from tunnel_server.fleet.hub.store import (
    ChangesExpiredError,
    FleetStoreError,
    StoredObject,
)
from tunnel_server.replicas.keys import singleton

__all__ = ["GitSourceSettings", "GitSyncer", "setup_gitsource"]

log = logging.getLogger("tunnel_server.fleet.gitsource")

KIND = "GitSource"
MAX_FILE_ERRORS = 100
"""Files with errors listed in the status (the rest counted in the condition's message)."""


@dataclass(frozen=True, kw_only=True)
class GitSourceSettings:
    git: GitSettings = field(default_factory=GitSettings)
    max_documents: int = 1000
    """Documents of one folder: the issue's bound for one apply."""
    follow_timeout: float = 30.0
    """Seconds the follower waits for a store change before it looks again anyway."""


def _rfc3339(seconds: float) -> str:
    return datetime.fromtimestamp(seconds, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(kw_only=True)
class _Outcome:
    """One sync's result, made into the status."""

    commit: str | None
    synced: bool
    reason: str
    message: str
    files: dict[str, str] = field(default_factory=dict)
    applied_now: bool = False


class SourceSync:
    """One GitSource's state between intervals: its mirror, what its commit declares."""

    def __init__(
        self,
        *,
        hub: FleetHub,
        source: StoredObject,
        spec: GitSourceSpec,
        mirror: Mirror,
        settings: GitSourceSettings,
    ) -> None:
        self.hub = hub
        self.name = source.name
        self.generation = source.generation
        self.spec = spec
        self.mirror = mirror
        self.settings = settings
        self.read: FolderRead | None = None
        self.read_commit: str | None = None
        self.read_failure: tuple[str, str] | None = None
        """(reason, message) when the commit's folder could not be read as a whole."""

    async def sync_once(self) -> None:
        outcome = await self._sync()
        self._write_status(outcome)

    async def _sync(self) -> _Outcome:
        applied = self._status().get("commit")
        try:
            commit = await self.mirror.fetch(self.spec)
        except GitError as error:
            log.warning("gitsource %s: fetch failed: %s", self.name, error)
            return _Outcome(
                commit=applied if isinstance(applied, str) else None,
                synced=False,
                reason="FetchFailed",
                message=f"fetching {self.spec.ref} of {self.spec.repository} failed: {error}",
            )
        if commit != self.read_commit:
            await self._read_commit(commit)
        if self.read_failure is not None:
            reason, message = self.read_failure
            return _Outcome(
                commit=applied if isinstance(applied, str) else None,
                synced=False,
                reason=reason,
                message=f"commit {commit[:12]}: {message}; the objects of the last good commit "
                "are kept",
            )
        assert self.read is not None  # noqa: S101 - read_commit sets one or the other
        files = dict(self.read.errors)
        writes = self._apply(self.read, files)
        writes += self._prune(self.read)
        bad = len(files)
        if bad:
            pruning = (
                " (nothing pruned while a file cannot be read)" if self.read.unreadable else ""
            )
            return _Outcome(
                commit=commit,
                synced=False,
                reason="FileErrors",
                message=f"commit {commit[:12]} applied except {bad} file(s) with errors{pruning}",
                files=files,
                applied_now=writes > 0 or commit != applied,
            )
        return _Outcome(
            commit=commit,
            synced=True,
            reason="Synced",
            message=f"commit {commit[:12]} applied: {len(self.read.objects)} object(s)",
            applied_now=writes > 0 or commit != applied,
        )

    async def _read_commit(self, commit: str) -> None:
        self.read, self.read_failure = None, None
        limits = self.settings.git
        try:
            listed = await self.mirror.list_files(commit, self.spec.path)
        except NotAFolderError as error:
            self.read_failure = ("PathNotFound", str(error))
            self.read_commit = commit
            return
        except OutputTooLargeError as error:
            self.read_failure = ("LimitExceeded", f"listing the folder: {error}")
            self.read_commit = commit
            return
        except GitError as error:
            self.read_failure = ("ReadFailed", str(error))
            return  # read again at the next interval
        wanted = [f for f in listed if is_manifest_file(f.path)]
        total = sum(f.size for f in wanted if f.size <= limits.max_file_bytes)
        if len(wanted) > limits.max_files:
            self.read_failure = (
                "LimitExceeded",
                f"the folder holds {len(wanted)} YAML/JSON files; at most {limits.max_files}",
            )
        elif total > limits.max_total_bytes:
            self.read_failure = (
                "LimitExceeded",
                f"the folder's files hold {total} bytes; at most {limits.max_total_bytes}",
            )
        else:
            try:
                self.read = await self._read_files(wanted)
            except GitError as error:
                self.read_failure = ("ReadFailed", str(error))
                return  # read again at the next interval
        self.read_commit = commit
        log.info("gitsource %s: read commit %s", self.name, commit)

    async def _read_files(self, wanted: list[TreeFile]) -> FolderRead:
        limit = self.settings.git.max_file_bytes
        readable = [f for f in wanted if f.mode != "120000" and f.size <= limit]
        blobs = await self.mirror.read_blobs(
            sorted({f.oid for f in readable}), total=sum(f.size for f in readable)
        )
        errors: dict[str, str] = {}
        for f in wanted:
            if f.mode == "120000":
                errors[f.path] = "a symbolic link: links are not followed"
            elif f.size > limit:
                errors[f.path] = f"{f.size} bytes; a file may hold at most {limit}"

        def contents() -> Iterator[tuple[str, bytes]]:
            for f in sorted(readable, key=lambda f: f.path):
                yield f.path, blobs[f.oid]

        hub_settings = self.hub.settings
        read = read_folder(
            contents(),
            source=self.name,
            max_documents=self.settings.max_documents,
            max_bytes={"Work": hub_settings.max_work_bytes, "*": hub_settings.max_document_bytes},
        )
        if errors:
            read.unreadable = True
            read.errors.update(errors)
        return read

    def _owner_elsewhere(self, stored: StoredObject) -> str | None:
        owner = stored.labels.get(GITSOURCE_LABEL)
        if owner is None or owner == self.name:
            return None
        return owner if self.hub.store.get(KIND, owner) is not None else None

    def _apply(self, read: FolderRead, files: dict[str, str]) -> int:
        writes = 0
        for wanted in read.objects:
            stored = self.hub.store.get(wanted.kind, wanted.name)
            if stored is not None:
                owner = self._owner_elsewhere(stored)
                if owner is not None:
                    _add_error(
                        files,
                        wanted.path,
                        f"{wanted.kind} {wanted.name} belongs to GitSource {owner}",
                    )
                    continue
                if _same(stored, wanted):
                    continue
            try:
                self.hub.put(
                    wanted.kind,
                    wanted.name,
                    labels=wanted.labels,
                    annotations=wanted.annotations,
                    spec=wanted.spec,
                    expected_version=stored.resource_version if stored is not None else None,
                    now=time.time(),
                )
            except (FleetStoreError, ValueError) as error:
                _add_error(files, wanted.path, f"{wanted.kind} {wanted.name}: {error}")
                continue
            writes += 1
            log.info("gitsource %s: applied %s %s", self.name, wanted.kind, wanted.name)
        return writes

    def _prune(self, read: FolderRead) -> int:
        if not self.spec.prune or read.unreadable:
            return 0
        declared = {(o.kind, o.name) for o in read.objects} | read.kept
        selector = parse_label_selector(f"{GITSOURCE_LABEL}={self.name}")
        removed = 0
        for kind in sorted(KINDS):
            if kind == KIND:
                continue
            for stored in self.hub.store.list(kind, selector=selector):
                if (kind, stored.name) in declared:
                    continue
                try:
                    self.hub.delete(kind, stored.name, expected_version=stored.resource_version)
                except FleetStoreError as error:  # changed or gone meanwhile: next interval
                    log.info("gitsource %s: not pruned yet: %s", self.name, error)
                    continue
                removed += 1
                log.info("gitsource %s: pruned %s %s", self.name, kind, stored.name)
        return removed

    def _status(self) -> Mapping[str, Any]:
        stored = self.hub.store.get(KIND, self.name)
        return stored.status if stored is not None else {}

    def _write_status(self, outcome: _Outcome) -> None:
        current = self._status()
        now = time.time()
        objects = sorted(
            (
                {"kind": kind, "name": stored.name}
                for kind in sorted(KINDS)
                for stored in self.hub.store.list(
                    kind, selector=parse_label_selector(f"{GITSOURCE_LABEL}={self.name}")
                )
            ),
            key=lambda o: (o["kind"], o["name"]),
        )
        errors = [{"path": p, "error": e} for p, e in sorted(outcome.files.items())]
        message = outcome.message
        if len(errors) > MAX_FILE_ERRORS:
            message += f" ({len(errors) - MAX_FILE_ERRORS} more files with errors not listed)"
        condition = _condition(
            current.get("conditions"),
            status="True" if outcome.synced else "False",
            reason=outcome.reason,
            message=message,
            now=now,
            generation=self.generation,
        )
        status: dict[str, Any] = {
            "commit": outcome.commit,
            "syncedAt": _rfc3339(now) if outcome.applied_now else current.get("syncedAt"),
            "objects": objects,
            "files": errors[:MAX_FILE_ERRORS],
            "conditions": [condition],
        }
        try:
            self.hub.set_status(KIND, self.name, status)
        except FleetStoreError as error:  # deleted meanwhile: its task is being stopped
            log.debug("gitsource %s: status not written: %s", self.name, error)


def _add_error(files: dict[str, str], path: str, error: str) -> None:
    files[path] = f"{files[path]}; {error}" if path in files else error


def _same(stored: StoredObject, wanted: Desired) -> bool:
    labels = dict(wanted.labels)
    if wanted.kind == "Work" and isinstance(wanted.spec.get("clusterName"), str):
        labels[CLUSTER_LABEL] = wanted.spec["clusterName"]  # the hub adds it to every Work
    return (
        dict(stored.labels) == labels
        and dict(stored.annotations) == dict(wanted.annotations)
        and stored.spec == wanted.spec
    )


def _condition(
    conditions: object,
    *,
    status: str,
    reason: str,
    message: str,
    now: float,
    generation: int,
) -> dict[str, Any]:
    since = _rfc3339(now)
    if isinstance(conditions, list):
        for old in conditions:
            if isinstance(old, dict) and old.get("type") == "Synced":
                if old.get("status") == status and isinstance(old.get("lastTransitionTime"), str):
                    since = old["lastTransitionTime"]
                break
    return {
        "type": "Synced",
        "status": status,
        "reason": reason,
        "message": message,
        "lastTransitionTime": since,
        "observedGeneration": generation,
    }


class GitSyncer:
    """Every GitSource's task, started, restarted and stopped as the store's sources change."""

    def __init__(self, *, hub: FleetHub, data_dir: Path, settings: GitSourceSettings) -> None:
        self.hub = hub
        self.root = data_dir / "fleet" / "git"
        self.settings = settings
        self._running: dict[str, tuple[asyncio.Task[None], tuple[str, int]]] = {}

    async def run(self) -> None:
        """Follow the store's GitSources until cancelled; their tasks end with it."""
        async with asyncio.TaskGroup() as group:
            try:
                await self._follow(group)
            finally:
                for task, _ in self._running.values():
                    task.cancel()

    async def _follow(self, group: asyncio.TaskGroup) -> None:
        store = self.hub.store
        revision = store.revision()
        await self._reconcile(group, store.list(KIND), first=True)
        while True:
            await self.hub.events.wait_past(revision, self.settings.follow_timeout)
            try:
                changed = bool(store.changes_since(revision, kind=KIND))
            except ChangesExpiredError:
                changed = True  # missed some: look at every source again
            revision = max(revision, store.revision())
            if changed:
                await self._reconcile(group, store.list(KIND), first=False)

    async def _reconcile(
        self, group: asyncio.TaskGroup, sources: list[StoredObject], *, first: bool
    ) -> None:
        wanted = {s.name: s for s in sources}
        for name in sorted(set(self._running) - set(wanted)):
            await self._stop(name)
            await asyncio.to_thread(shutil.rmtree, self.root / name, ignore_errors=True)
            log.info("gitsource %s: deleted; syncing stopped, its objects are kept", name)
        if first and self.root.is_dir():
            for stale in sorted({p.name for p in self.root.iterdir()} - set(wanted)):
                await asyncio.to_thread(shutil.rmtree, self.root / stale, ignore_errors=True)
        for name, source in sorted(wanted.items()):
            key = (source.uid, source.generation)
            running = self._running.get(name)
            if running is not None and running[1] == key:
                continue
            if running is not None:
                await self._stop(name)
            task = group.create_task(self._source_loop(source), name=f"gitsource.{name}")
            self._running[name] = (task, key)

    async def _stop(self, name: str) -> None:
        task, _ = self._running.pop(name)
        task.cancel()
        await asyncio.wait([task])  # its git process is killed before the mirror is reused

    async def _source_loop(self, source: StoredObject) -> None:
        try:
            spec = parse_spec(dict(source.spec))
        except SpecError as error:  # the API validates; a store written otherwise may not
            log.warning("gitsource %s: invalid spec: %s", source.name, error)
            self._invalid(source, str(error))
            return
        sync = SourceSync(
            hub=self.hub,
            source=source,
            spec=spec,
            mirror=Mirror(self.root / source.name, settings=self.settings.git),
            settings=self.settings,
        )
        log.info(
            "gitsource %s: following %s of %s every %s s",
            source.name,
            spec.ref,
            spec.repository,
            spec.interval_seconds,
        )
        while True:
            try:
                await sync.sync_once()
            except Exception as error:
                # One source's failure must not end the others' (they share the task group):
                # logged with its traceback, and said in its status.
                log.exception("gitsource %s: sync failed", source.name)
                self._invalid(source, f"sync failed: {error}", reason="InternalError")
            await asyncio.sleep(spec.interval_seconds)

    def _invalid(self, source: StoredObject, message: str, *, reason: str = "InvalidSpec") -> None:
        with contextlib.suppress(FleetStoreError):
            current = source.status
            self.hub.set_status(
                KIND,
                source.name,
                {
                    **current,
                    "conditions": [
                        _condition(
                            current.get("conditions"),
                            status="False",
                            reason=reason,
                            message=message,
                            now=time.time(),
                            generation=source.generation,
                        )
                    ],
                },
            )


def setup_gitsource(app: web.Application, *, settings: GitSourceSettings | None = None) -> None:
    """Run the GitSource syncer while ``app`` runs (needs the fleet hub's setup first)."""

    async def background(app: web.Application) -> AsyncIterator[None]:
        syncer = GitSyncer(
            hub=app[FLEET_HUB_KEY],
            data_dir=app[SETTINGS_KEY].data_dir,
            settings=settings or GitSourceSettings(),
        )
        async with asyncio.TaskGroup() as group:
            # On the leader only with the Kubernetes store: one fetch and one write per commit.
            task = group.create_task(
                singleton(app, "gitsource.follow", syncer.run), name="gitsource.follow"
            )
            yield
            task.cancel()

    app.cleanup_ctx.append(background)
