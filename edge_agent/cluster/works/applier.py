"""``WorkApplier``: the cluster agent keeps the hub's works applied to its member cluster.

The interface the ``fleet`` stream drives (ISSUE14 "Agent-side applier")::

    applier = WorkApplier(api=member_api, state_dir=data / "cluster" / "works", settings=...)
    applier.on_status(lambda name, resource_version, status: ...)   # only on change
    applier.works()                      # {name: resourceVersion} held (for the hello)
    await applier.set_work(document)     # keep on disk, apply now (idempotent)
    await applier.delete_work(name, propagation="Foreground" | "Orphan" | None)
    await applier.run()                  # resync loop: re-apply, scrape feedback, retry deletes

Rules:

* Works live on disk (``state.WorkStore``), loaded in the constructor: after a restart or
  while the hub is unreachable the last works stay applied, and ``works()`` tells the hub
  which versions the agent holds. Re-applying an unchanged work writes nothing in the member
  (server-side apply of the same fields is a no-op), so a restart re-creates nothing.
* One pass over a work applies its manifests in order (Namespaces, then CRDs, then the rest,
  ``manifests.apply_order``), each with its ``manifestConfigs`` strategy (``apply``), reads
  feedback and health from the object the API server returned (``fleet_model.feedback``),
  builds the conditions (``conditions``) and reports the status when it differs from the last
  one reported. A manifest that fails never stops the others.
* What a work applied is recorded with each object's uid. A manifest dropped from a work, or
  the whole work deleted with ``Foreground``, has its objects deleted (uid precondition: an
  object re-created by someone else is not ours); ``Orphan`` leaves them. A delete that could
  not be done (API server unreachable) stays recorded and is retried every resync.
* The member API server not answering stops a pass and keeps the last status: the lease says
  the API server is unhealthy; the works are not reported as failed for it.
* Bounded: works held (``max_works``), manifests per work, bytes per manifest and document,
  works applied at once (``concurrency``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from edge_agent.cluster.member_api import MemberApiError
from edge_agent.cluster.works.apply import Outcome, apply_manifest
from edge_agent.cluster.works.conditions import (
    condition,
    manifest_rows,
    rfc3339,
    work_conditions,
)
from edge_agent.cluster.works.kube import (
    Discovery,
    DiscoveryError,
    Impersonating,
    KubeRequests,
    Resource,
)
from edge_agent.cluster.works.manifests import (
    Manifest,
    ParsedWork,
    Strategy,
    WorkError,
    apply_order,
    parse_work,
    work_name,
)
from edge_agent.cluster.works.settings import WorkSettings
from edge_agent.cluster.works.state import AppliedResource, WorkRecord, WorkStore
from fleet_model.feedback import WORKLOAD_KINDS, feedback, health

log = logging.getLogger("edge_agent.cluster.works")

__all__ = ["StatusCallback", "WorkApplier"]

StatusCallback = Callable[[str, int, dict[str, Any]], None]
_Key = tuple[str, int, str, str, str]
"""A manifest of a work: (work, ordinal, kind, namespace, name)."""
_CRD_POLL = 0.5
"""Seconds between discovery reads while a CRD of the same work becomes served."""


def _declared(applied: AppliedResource, parsed: ParsedWork) -> bool:
    """Whether a manifest of ``parsed`` still names the object ``applied``."""
    return any(
        m.problem is None
        and (m.group, m.kind, m.name) == (applied.group, applied.kind, applied.name)
        and applied.namespace in ("", m.namespace or "default")
        for m in parsed.manifests
    )


class _UnreachableError(Exception):
    """The member API server did not answer: stop this pass, keep the last status."""


class WorkApplier:
    """Applies the works of one member cluster; see the module's rules."""

    def __init__(
        self,
        *,
        api: KubeRequests,
        state_dir: Path,
        settings: WorkSettings,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if settings.impersonate:
            api = Impersonating(api, settings.impersonate)
        self._api = api
        self._settings = settings
        self._clock = clock
        self._store = WorkStore(state_dir, max_file_bytes=2 * settings.max_work_bytes)
        self._records = self._store.load()
        self._discovery = Discovery(api, refresh_seconds=settings.discovery_refresh_seconds)
        self._callbacks: list[StatusCallback] = []
        self._locks: dict[str, tuple[asyncio.Lock, list[int]]] = {}
        """Per work name: its lock and how many hold or wait for it (freed at zero, so works
        that come and go over months leave nothing behind)."""
        self._slots = asyncio.Semaphore(settings.concurrency)
        self._not_ready_since: dict[_Key, float] = {}
        # The resourceVersion each work's status was last reported with: a new version of a
        # work is reported even when its status came out the same.
        self._reported = {
            name: record.resource_version
            for name, record in self._records.items()
            if record.status is not None
        }
        self._unreachable = False

    # -- the interface of the stream

    def works(self) -> dict[str, int]:
        """Name -> resourceVersion of every work held (not those being deleted)."""
        return {
            name: record.resource_version
            for name, record in sorted(self._records.items())
            if record.document is not None
        }

    def generations(self) -> dict[str, int]:
        """Name -> metadata.generation of every work held whose copy says one."""
        out: dict[str, int] = {}
        for name, record in sorted(self._records.items()):
            metadata = record.document.get("metadata") if record.document is not None else None
            generation = metadata.get("generation") if isinstance(metadata, Mapping) else None
            if isinstance(generation, int) and not isinstance(generation, bool) and generation > 0:
                out[name] = generation
        return out

    def status(self, name: str) -> dict[str, Any] | None:
        """The last status of a held work (to send again after a reconnect)."""
        record = self._records.get(name)
        return None if record is None or record.document is None else record.status

    def on_status(self, callback: StatusCallback) -> None:
        """Call ``callback(name, resourceVersion, status)`` whenever a work's status changes."""
        self._callbacks.append(callback)

    async def set_work(self, document: dict[str, Any]) -> None:
        """Hold ``document`` (on disk first) and apply it now. WorkError when it cannot be held."""
        if not isinstance(document, dict):
            raise WorkError("a work is a JSON object")
        size = len(json.dumps(document, separators=(",", ":")))
        if size > self._settings.max_work_bytes:
            raise WorkError(f"a work of {size} bytes; at most {self._settings.max_work_bytes}")
        if document.get("kind", "Work") != "Work":
            raise WorkError(f"a work has kind Work, not {str(document.get('kind'))[:60]!r}")
        parsed = parse_work(document, settings=self._settings)
        name = parsed.name
        async with self._lock(name):
            record = self._records.get(name)
            if record is None:
                held = sum(1 for r in self._records.values() if r.document is not None)
                if held >= self._settings.max_works:
                    raise WorkError(f"{held} works held; at most {self._settings.max_works}")
                record = WorkRecord(document=None)
            record.document = document
            record.resource_version = parsed.resource_version
            record.deleting = None
            try:
                self._store.save(name, record)
            except OSError as error:
                raise WorkError(f"cannot keep work {name} on disk: {error}") from None
            self._records[name] = record
            await self._pass(name, record)

    async def delete_work(self, name: str, *, propagation: str | None = None) -> None:
        """Forget work ``name``; with Foreground also delete what it applied (Orphan: keep it).

        ``None``: the work's own ``deleteOption`` from the copy this agent holds (the hub says
        no policy for a work deleted while the agent was away: it no longer has the work).
        """
        if propagation not in ("Foreground", "Orphan", None):
            raise WorkError("propagation is Foreground or Orphan")
        name = work_name(name)
        async with self._lock(name):
            record = self._records.get(name)
            if record is None:
                return
            if propagation is None:
                propagation = record.deleting or _own_propagation(record.document)
            record.document = None
            record.deleting = propagation
            record.status = None
            self._store.save(name, record)
            await self._pass(name, record)

    async def run(self) -> None:
        """Every ``resync_seconds``: apply every work again, retry pending deletes."""
        while True:
            await self.resync()
            await asyncio.sleep(self._settings.resync_seconds)

    async def resync(self) -> None:
        """One pass over every work (the resync loop's body; tests call it to step)."""
        for name in sorted(self._records):
            async with self._lock(name):
                record = self._records.get(name)
                if record is None:
                    continue
                try:
                    await self._pass(name, record)
                except OSError as error:  # the state folder (disk full): next resync again
                    log.warning("works: cannot keep the state of work %s: %s", name, error)

    # -- one pass

    @contextlib.asynccontextmanager
    async def _lock(self, name: str) -> AsyncIterator[None]:
        lock, users = self._locks.setdefault(name, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                yield
        finally:
            users[0] -= 1
            if users[0] == 0:
                del self._locks[name]

    async def _pass(self, name: str, record: WorkRecord) -> None:
        async with self._slots:
            try:
                if record.document is None:
                    await self._remove(name, record)
                else:
                    await self._apply(name, record, record.document)
            except _UnreachableError as error:
                if not self._unreachable:
                    log.warning("works: member API server unreachable: %s", error)
                self._unreachable = True
                return
        if self._unreachable:
            log.info("works: member API server reachable again")
            self._unreachable = False

    async def _request(self, method: str, path: str, body: object = None) -> tuple[int, Any]:
        try:
            return await self._api.request(method, path, body=body)
        except MemberApiError as error:
            raise _UnreachableError(str(error)) from None

    async def _remove(self, name: str, record: WorkRecord) -> None:
        if record.deleting == "Foreground":
            record.applied = await self._delete(record.applied)
            if record.applied:
                self._store.save(name, record)
                return
        self._records.pop(name, None)
        self._store.remove(name)
        self._forget_timers(name)
        log.info("works: work %s removed (%s)", name, record.deleting)

    async def _delete(self, resources: list[AppliedResource]) -> list[AppliedResource]:
        """Delete ``resources``; those that could not be deleted (to retry)."""
        left: list[AppliedResource] = []
        # Reverse apply order: custom resources before their CRDs, objects before namespaces.
        for applied in reversed(resources):
            resource = Resource(
                applied.group, applied.version, applied.kind, applied.resource, applied.namespaced
            )
            options = {
                "apiVersion": "v1",
                "kind": "DeleteOptions",
                "propagationPolicy": "Background",
                "preconditions": {"uid": applied.uid},
            }
            status, answer = await self._request(
                "DELETE", resource.path(applied.namespace, applied.name), options
            )
            # 404: gone already; 409: the uid differs, someone else's object now.
            if 200 <= status < 300 or status in (404, 409):
                log.info(
                    "works: deleted %s %s/%s", applied.resource, applied.namespace, applied.name
                )
            else:
                log.warning(
                    "works: cannot delete %s %s/%s: HTTP %s %s",
                    applied.resource,
                    applied.namespace,
                    applied.name,
                    status,
                    answer.get("message") if isinstance(answer, dict) else "",
                )
                left.insert(0, applied)
        return left

    async def _apply(self, name: str, record: WorkRecord, document: dict[str, Any]) -> None:
        parsed = parse_work(document, settings=self._settings)
        previous = record.status or {}
        old_manifests = {
            m.get("resourceMeta", {}).get("ordinal"): m
            for m in previous.get("resourceStatus", {}).get("manifests", [])
            if isinstance(m, dict)
        }
        now = self._clock()
        statuses: dict[int, dict[str, Any]] = {}
        applied: list[AppliedResource] = []
        crd_groups: set[str] = set()
        for manifest in apply_order(parsed.manifests):
            old = old_manifests.get(manifest.ordinal, {}).get("conditions", [])
            entry, created = await self._manifest(parsed, manifest, crd_groups, old, now)
            statuses[manifest.ordinal] = entry
            if created is not None:
                applied.append(created)
        manifests = [statuses[o] for o in sorted(statuses)]
        # What the work applied before: still declared (even if it failed this time) it stays
        # recorded; no longer declared it is deleted (Foreground) or forgotten (Orphan), as
        # OCM's AppliedManifestWork does.
        done = {a.identity for a in applied}
        earlier = [a for a in record.applied if a.identity not in done]
        carried = [a for a in earlier if _declared(a, parsed)]
        dropped = [a for a in earlier if not _declared(a, parsed)]
        if dropped and parsed.propagation == "Foreground":
            carried += await self._delete(dropped)
        record.applied = applied + carried
        status = self._work_status(parsed, manifests, previous, now)
        changed = status != record.status or self._reported.get(name) != parsed.resource_version
        record.status = status
        self._store.save(name, record)
        if changed:
            self._reported[name] = parsed.resource_version
            self._report(name, parsed.resource_version, status)

    def _work_status(
        self,
        parsed: ParsedWork,
        manifests: list[dict[str, Any]],
        previous: Mapping[str, Any],
        now: float,
    ) -> dict[str, Any]:
        conditions = work_conditions(
            manifests,
            parsed.problems,
            previous=previous.get("conditions", []),
            now=now,
            generation=parsed.generation,
        )
        applied_at = previous.get("appliedAt")
        if previous.get("observedGeneration") != parsed.generation or applied_at is None:
            applied_at = rfc3339(now)
        status = {
            "conditions": conditions,
            "resourceStatus": {"manifests": manifests},
            "observedGeneration": parsed.generation,
            "appliedAt": applied_at,
        }
        size = len(json.dumps(status, separators=(",", ":")))
        if size > self._settings.max_status_bytes:
            note = (
                f"statusFeedback left out: the status would be {size} bytes, "
                f"more than {self._settings.max_status_bytes}"
            )
            for entry in manifests:
                if "statusFeedback" in entry:
                    entry["statusFeedback"] = {"values": []}
                    for item in entry["conditions"]:
                        if item["type"] == "StatusFeedbackSynced":
                            item.update(status="False", reason="StatusTooLarge", message=note)
        return status

    def _report(self, name: str, resource_version: int, status: dict[str, Any]) -> None:
        for callback in self._callbacks:
            try:
                callback(name, resource_version, status)
            except Exception:
                log.exception("works: a status callback failed for %s", name)

    def _forget_timers(self, name: str) -> None:
        for key in [k for k in self._not_ready_since if k[0] == name]:
            del self._not_ready_since[key]
        self._reported.pop(name, None)

    # -- one manifest

    async def _manifest(
        self,
        parsed: ParsedWork,
        manifest: Manifest,
        crd_groups: set[str],
        previous: list[Any],
        now: float,
    ) -> tuple[dict[str, Any], AppliedResource | None]:
        meta: dict[str, Any] = {
            "ordinal": manifest.ordinal,
            "group": manifest.group,
            "version": manifest.version,
            "kind": manifest.kind,
            "resource": "",
            "namespace": manifest.namespace,
            "name": manifest.name,
        }
        config = None
        if manifest.problem is not None:
            outcome = Outcome(ok=False, reason="InvalidManifest", message=manifest.problem)
        else:
            resource = await self._resolve(manifest, crd_groups)
            if resource is None:
                outcome = Outcome(
                    ok=False,
                    reason="UnknownKind",
                    message=(
                        f"the member API server serves no kind {manifest.kind} in "
                        f"{'/'.join(filter(None, (manifest.group, manifest.version)))}"
                    ),
                )
            else:
                namespace = (manifest.namespace or "default") if resource.namespaced else ""
                meta["resource"], meta["namespace"] = resource.resource, namespace
                config = parsed.config_for(resource, namespace, manifest.name)
                strategy = config.strategy if config is not None else Strategy()
                outcome = await self._apply_one(manifest, resource, strategy)
                if outcome.ok and manifest.kind == "CustomResourceDefinition":
                    crd_groups.add(str(manifest.body.get("spec", {}).get("group", "")))
        entry: dict[str, Any] = {"resourceMeta": meta}
        key = (parsed.name, manifest.ordinal, manifest.kind, manifest.namespace, manifest.name)
        entry["conditions"] = self._manifest_conditions(
            outcome, manifest.kind, key, previous=previous, now=now, generation=parsed.generation
        )
        if config is not None and config.feedback_rules and outcome.live is not None:
            values, problems = feedback(outcome.live, manifest.kind, config.feedback_rules)
            entry["statusFeedback"] = {"values": values}
            entry["conditions"].append(
                condition(
                    "StatusFeedbackSynced",
                    status=not problems,
                    reason="StatusFeedbackSynced" if not problems else "StatusFeedbackSyncFailed",
                    message="; ".join(problems)[:2048],
                    previous=previous,
                    now=now,
                    generation=parsed.generation,
                )
            )
        created = None
        uid = (outcome.live or {}).get("metadata", {}).get("uid")
        strategy_type = config.strategy.type if config is not None else "ServerSideApply"
        if outcome.ok and isinstance(uid, str) and strategy_type != "ReadOnly":
            created = AppliedResource(
                group=manifest.group,
                version=manifest.version,
                resource=str(meta["resource"]),
                namespaced=bool(meta["namespace"]),
                namespace=str(meta["namespace"]),
                name=manifest.name,
                uid=uid,
                kind=manifest.kind,
            )
        return entry, created

    async def _apply_one(
        self, manifest: Manifest, resource: Resource, strategy: Strategy
    ) -> Outcome:
        try:
            outcome = await apply_manifest(self._api, manifest, resource, strategy)
        except MemberApiError as error:
            raise _UnreachableError(str(error)) from None
        if outcome.http_status == 404 and strategy.type != "ReadOnly":
            # The resource itself is not served (a CRD removed): read discovery again.
            self._discovery.forget(resource.group)
        return outcome

    async def _resolve(self, manifest: Manifest, crd_groups: set[str]) -> Resource | None:
        """The manifest's resource; waits a little when a CRD of this work just made its group."""
        waiting = manifest.group in crd_groups
        if waiting:
            self._discovery.forget(manifest.group)
        deadline = time.monotonic() + self._settings.crd_wait_seconds
        while True:
            try:
                found = await self._discovery.resolve(
                    manifest.group, manifest.version, manifest.kind
                )
            except MemberApiError as error:
                raise _UnreachableError(str(error)) from None
            except DiscoveryError as error:
                log.warning("works: discovery failed: %s", error)
                return None
            if found is not None or not waiting or time.monotonic() >= deadline:
                return found
            await asyncio.sleep(_CRD_POLL)
            self._discovery.forget(manifest.group)

    def _manifest_conditions(
        self,
        outcome: Outcome,
        kind: str,
        key: _Key,
        *,
        previous: list[Any],
        now: float,
        generation: int,
    ) -> list[dict[str, Any]]:
        rows = self._condition_rows(outcome, kind, key, now)
        return [
            condition(
                kind_of,
                status=value,
                reason=reason,
                message=message,
                previous=previous,
                now=now,
                generation=generation,
            )
            for kind_of, value, reason, message in rows
        ]

    def _condition_rows(
        self, outcome: Outcome, kind: str, key: _Key, now: float
    ) -> list[tuple[str, bool, str, str]]:
        """The manifest's rows (``conditions.manifest_rows``), timing its progress for Degraded."""
        verdict = health(outcome.live, kind) if outcome.ok and outcome.live is not None else None
        late = False
        if verdict is not None and verdict.state == "Progressing" and kind in WORKLOAD_KINDS:
            since = self._not_ready_since.setdefault(key, now)
            late = now - since >= self._settings.degraded_after_seconds
        else:
            self._not_ready_since.pop(key, None)
        return manifest_rows(outcome, verdict, late=late)


def _own_propagation(document: Mapping[str, Any] | None) -> str:
    """The work's ``spec.deleteOption.propagationPolicy``: Orphan if it says so, else Foreground."""
    spec = document.get("spec") if document is not None else None
    option = spec.get("deleteOption") if isinstance(spec, Mapping) else None
    policy = option.get("propagationPolicy") if isinstance(option, Mapping) else None
    return "Orphan" if policy == "Orphan" else "Foreground"
