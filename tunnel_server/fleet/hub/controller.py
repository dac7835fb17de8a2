"""The hub controller: registration, health, placement and worksets, one coalesced pass at a time.

What wakes it (never a timer loop doing work for nothing):

* the fleet store moved (``FleetEvents``; the ``Mirror`` applies ``changes_since`` and knows
  what others changed, so its own writes do not wake it again);
* the node store's revision moved (a cluster joined, was approved or revoked, from this
  process or the CLI of another: checked every ``node_poll_seconds``, one SQL read);
* an agent's lease changed (``FleetHub.leases``, noticed at the same check);
* a deadline came: a lease running out (5 x N), a ``tolerationSeconds`` running out, a
  rollout's soak or deadline (each result's ``wake_at``).

After a trigger it waits ``coalesce_seconds`` so a burst of changes is one pass. A pass
(``pass_once``) runs the steps in order, each only for what its inputs changed:

1. registration and health, per cluster (``registration``, ``health``): ManagedClusters for
   new records, approve/revoke from ``hubAcceptsClient``, revoke on delete; the
   ``Available`` condition, built-in taints, claims and resources from the lease;
2. placement (``scheduling``): every placement when a cluster's view or a set changed, else
   the changed ones and those whose ``wake_at`` came; a status is written only when it differs;
3. worksets (``worksets``): those whose spec, placements, Works or clusters changed or whose
   ``wake_at`` came: Works written and deleted as ``plan_rollout`` says, status written on
   change; Works of deleted WorkSets are deleted.

Writes are conditional (``expected_version``): a conflict with an admin's write, or any
other failed write, marks the pass to be retried after ``retry_seconds``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable, Generator, Iterable, Mapping
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from aiohttp import web

from fleet_model.cluster import (
    ClusterView,
    cluster_set_view,
    cluster_view,
    evaluate_health,
    put_condition,
    taint_json,
)
from fleet_model.cluster import (
    parse_spec as parse_cluster_spec,
)
from fleet_model.problems import SpecError
from tunnel_server.app_keys import FLEET_HUB_KEY, SESSIONS_KEY, STORE_KEY
from tunnel_server.fleet.clusters_api import cut_off
from tunnel_server.fleet.hub import health, registration, remote_leases, scheduling, worksets
from tunnel_server.fleet.hub.mirror import Mirror
from tunnel_server.fleet.hub.setup import FleetHub
from tunnel_server.fleet.hub.store import FleetStoreError, StoredObject
from tunnel_server.replicas.keys import HOLDER_KEY, singleton
from tunnel_server.store import NodeRecord, NotFoundError, Store, WrongStateError

__all__ = ["ControllerSettings", "HubController", "setup_controller"]

log = logging.getLogger("tunnel_server.fleet.controller")

MIN_WAKE_SECONDS = 0.1
"""The soonest a deadline brings the controller back (a guard against a spin, not a delay)."""


@dataclass(frozen=True, kw_only=True)
class ControllerSettings:
    coalesce_seconds: float = 0.05
    """Wait after the first trigger before a pass, so a burst of writes (an ``apply -f`` of
    fifty documents, a hundred lease renewals) is one pass, not fifty."""
    node_poll_seconds: float = 0.5
    """How often the node store's revision and the leases are looked at: one SQL read and a
    dict scan; the node store has no in-process notification (the CLI writes from another
    process), and the store's own session watcher polls at the same pace."""
    renew_write_seconds: float = 30.0
    """A renewal alone rewrites ``lease.renewTime`` at most every max(this, N) seconds."""
    retry_seconds: float = 1.0
    """After a failed or conflicting write, the pass is done again after this long."""
    slice_seconds: float = 0.02
    """A pass lets the event loop run at least this often (API requests, the tunnel), so a
    long pass (a hub start over 1,000 clusters) never stalls the server."""
    max_wait_seconds: float = 300.0
    """A full pass at least this often, even with nothing seen to change (belt and braces
    against a lost notification; cheap, since an unchanged pass writes nothing)."""


@dataclass(kw_only=True)
class HubController:
    hub: FleetHub
    node_store: Store
    cut_off: Callable[[str], bool]
    settings: ControllerSettings = field(default_factory=ControllerSettings)
    clock: Callable[[], float] = time.time
    started_at: float = 0.0
    mirror: Mirror = field(init=False)
    passes: int = 0
    _node_revision: int = -1
    _records: dict[str, NodeRecord] = field(default_factory=dict)
    _changed_records: set[str] = field(default_factory=set)
    _leases: dict[str, object] = field(default_factory=dict)
    _changed_leases: set[str] = field(default_factory=set)
    _known_clusters: set[str] = field(default_factory=set)
    _views: dict[str, ClusterView] = field(default_factory=dict)
    _renewed: dict[str, float] = field(default_factory=dict)
    """The last renewal seen per cluster (should a lease leave ``hub.leases``)."""
    _view_versions: dict[str, tuple[str, int]] = field(default_factory=dict)
    _wakes: dict[tuple[str, str], float] = field(default_factory=dict)
    _retry_at: float | None = None
    _full: bool = True
    _full_at: float = float("-inf")

    def __post_init__(self) -> None:
        self.mirror = Mirror(store=self.hub.store)
        if not self.started_at:
            self.started_at = self.clock()

    # ------------------------------------------------------------------ waiting

    def _next_deadline(self) -> float | None:
        deadlines = list(self._wakes.values())
        if self._retry_at is not None:
            deadlines.append(self._retry_at)
        return min(deadlines, default=None)

    def _outside_changed(self) -> bool:
        """Did the node store or a lease move (cheap; fills the changed sets)?"""
        revision = self.node_store.revision()
        moved = False
        if revision != self._node_revision:
            records = registration.records_by_name(self.node_store.list_nodes())
            self._changed_records |= {
                name
                for name in set(records) | set(self._records)
                if records.get(name) != self._records.get(name)
            }
            self._records, self._node_revision = records, revision
            moved = bool(self._changed_records)
        leases = self.hub.leases
        for name, lease in leases.items():
            if self._leases.get(name) is not lease:
                self._changed_leases.add(name)
        for name in set(self._leases) - set(leases):
            self._changed_leases.add(name)
        if self._changed_leases:
            self._leases = dict(leases)
            moved = True
        return moved

    async def _wait(self) -> None:
        """Until something to do: a fleet write, a node record or lease change, a deadline."""
        waited_since = self.clock()
        while True:
            now = self.clock()
            deadline = self._next_deadline()
            if deadline is not None and deadline <= now:
                return
            if self.hub.store.revision() != self.mirror.revision or self._outside_changed():
                return
            if now - waited_since >= self.settings.max_wait_seconds:
                return
            timeout = self.settings.node_poll_seconds
            if deadline is not None:
                timeout = max(0.0, min(timeout, deadline - now))
            await self.hub.events.wait_past(self.mirror.revision, timeout)

    async def run(self) -> None:
        while True:
            await self._wait()
            await asyncio.sleep(self.settings.coalesce_seconds)
            try:
                await self._pass_breathing()
            except Exception:  # one bad pass must not end the hub's controller
                log.exception("controller pass failed; retrying")
                self._full = True
                self._retry_at = self.clock() + self.settings.retry_seconds

    # ------------------------------------------------------------------ one pass

    def pass_once(self) -> None:
        """One whole pass at once (tests, benchmarks)."""
        for _ in self._pass():
            pass

    async def _pass_breathing(self) -> None:
        """One pass that lets the event loop run every ``slice_seconds``.

        The API stays live while 1,000 clusters and 100 placements are worked through.
        """
        until = time.monotonic() + self.settings.slice_seconds
        for _ in self._pass():
            if time.monotonic() >= until:
                await asyncio.sleep(0)
                until = time.monotonic() + self.settings.slice_seconds

    def _pass(self) -> Generator[None, None, None]:
        """The pass's steps; it yields between units of work (a cluster, a placement...)."""
        now = self.clock()
        self._outside_changed()
        self.mirror.follow()
        dirty = self.mirror.take_dirty()
        full = self._full or now - self._full_at >= self.settings.max_wait_seconds
        self._full = False
        if full:
            self._full_at = now
        self._retry_at = None
        due = {key for key, at in self._wakes.items() if at <= now}
        for key in due:
            del self._wakes[key]
        views_changed = yield from self._clusters(dirty, due, full=full, now=now)
        changed_placements = yield from self._placements(
            dirty, due, full=full or views_changed or bool(dirty["ManagedClusterSet"]), now=now
        )
        yield from self._worksets(
            dirty, due, changed_placements, full=full or views_changed, now=now
        )
        self.passes += 1

    def _wake(self, key: tuple[str, str], at: float, now: float) -> None:
        """Come back to ``key`` at ``at``, but never sooner than ``MIN_WAKE_SECONDS`` from now.

        A deadline that a rule keeps giving in the past cannot make the controller spin.
        """
        self._wakes[key] = max(at, now + MIN_WAKE_SECONDS)

    # ------------------------------------------------------------------ writes

    def _failed(self, what: str, kind: str, name: str, error: Exception) -> None:
        log.info(
            "controller write refused; retrying",
            extra={"kv": {"what": what, "kind": kind, "name": name, "error": str(error)[:200]}},
        )
        self._retry_at = self.clock() + self.settings.retry_seconds
        self._full = True

    def _put(
        self,
        kind: str,
        name: str,
        *,
        labels: Mapping[str, str],
        annotations: Mapping[str, str],
        spec: Mapping[str, Any],
        expected_version: int | None,
        now: float,
    ) -> StoredObject | None:
        try:
            stored, _ = self.hub.put(
                kind,
                name,
                labels=labels,
                annotations=annotations,
                spec=spec,
                expected_version=expected_version,
                now=now,
            )
        except FleetStoreError as error:
            self._failed("put", kind, name, error)
            return None
        self.mirror.wrote(stored)
        return stored

    def _set_status(self, obj: StoredObject, status: Mapping[str, Any]) -> StoredObject | None:
        try:
            stored = self.hub.set_status(
                obj.kind, obj.name, status, expected_version=obj.resource_version
            )
        except FleetStoreError as error:
            self._failed("status", obj.kind, obj.name, error)
            return None
        self.mirror.wrote(stored)
        return stored

    def _delete(self, obj: StoredObject) -> None:
        try:
            self.hub.delete(obj.kind, obj.name, expected_version=obj.resource_version)
        except FleetStoreError as error:
            self._failed("delete", obj.kind, obj.name, error)
            return
        self.mirror.deleted(obj.kind, obj.name)

    # ------------------------------------------------------------------ 1. clusters

    def _clusters(
        self, dirty: Mapping[str, set[str]], due: set[tuple[str, str]], *, full: bool, now: float
    ) -> Generator[None, None, bool]:
        """Registration and health; True if any cluster's placement view changed."""
        names = set(self.mirror.objects["ManagedCluster"])
        gone = (self._known_clusters | dirty["ManagedCluster"]) - names
        records, changed_records = self._records, self._changed_records
        self._changed_records = set()
        for name, record in records.items():
            if name in names or record.state == "revoked":
                continue
            if name in gone:
                self._revoke(record, why="its ManagedCluster was deleted")
            else:
                self._create_cluster(record, now)
        todo = (
            set(self.mirror.objects["ManagedCluster"])
            if full
            else (
                (dirty["ManagedCluster"] | changed_records | self._changed_leases)
                | {name for kind, name in due if kind == "ManagedCluster"}
            )
        )
        self._changed_leases = set()
        for name in sorted(todo):
            obj = self.mirror.get("ManagedCluster", name)
            if obj is not None:
                self._cluster(obj, now)
                yield
        current = set(self.mirror.objects["ManagedCluster"])
        self._known_clusters = current
        changed = False
        for name in set(self._views) - current:
            del self._views[name]
            self._view_versions.pop(name, None)
            self._renewed.pop(name, None)
            changed = True
        for name in current:
            obj = self.mirror.objects["ManagedCluster"][name]
            if self._view_versions.get(name) == (obj.uid, obj.resource_version):
                continue  # the view of an unchanged object is the same
            view = cluster_view(obj.document())
            self._view_versions[name] = (obj.uid, obj.resource_version)
            if self._views.get(name) != view:
                self._views[name] = view
                changed = True
        return changed

    def _create_cluster(self, record: NodeRecord, now: float) -> None:
        spec = registration.new_cluster_spec(
            record, lease_seconds=self.hub.settings.default_lease_seconds
        )
        made = self._put(
            "ManagedCluster",
            record.name,
            labels={},
            annotations={},
            spec=spec,
            expected_version=None,
            now=now,
        )
        if made is not None:
            log.info(
                "cluster registered",
                extra={"kv": {"cluster": record.name, "state": record.state}},
            )
            self._cluster(made, now)

    def _revoke(self, record: NodeRecord, *, why: str) -> NodeRecord:
        """The registered-clusters API's revoke: the record revoked, its session closed now."""
        try:
            updated = self.node_store.change_node_state(
                record.name, "revoked", only_from=("pending", "approved", "revoked")
            )
        except (NotFoundError, WrongStateError) as error:
            log.info(
                "cluster revoke skipped",
                extra={"kv": {"cluster": record.name, "error": str(error)}},
            )
            return record
        cut = self.cut_off(record.name)
        log.info(
            "cluster revoked", extra={"kv": {"cluster": record.name, "why": why, "cut_off": cut}}
        )
        self._records[record.name] = updated
        return updated

    def _approve(self, record: NodeRecord) -> NodeRecord:
        try:
            updated = self.node_store.change_node_state(
                record.name, "approved", only_from=("pending",)
            )
        except (NotFoundError, WrongStateError) as error:
            log.info(
                "cluster approve skipped",
                extra={"kv": {"cluster": record.name, "error": str(error)}},
            )
            return record
        log.info("cluster accepted", extra={"kv": {"cluster": record.name}})
        self._records[record.name] = updated
        return updated

    def _lease_facts(self, name: str, status: Mapping[str, Any]) -> health.LeaseFacts:
        lease = self.hub.leases.get(name)
        if lease is not None:
            self._renewed[name] = lease.renewed_at
        return health.lease_facts(
            lease,
            status=status,
            started_at=self.started_at,
            last_renewed=self._renewed.get(name),
        )

    def _cluster(self, obj: StoredObject, now: float) -> None:
        try:
            spec = parse_cluster_spec(dict(obj.spec))
        except SpecError as error:  # the API checked it; a stored spec that fails is left alone
            log.warning(
                "ManagedCluster spec unreadable",
                extra={"kv": {"cluster": obj.name, "error": str(error)[:200]}},
            )
            return
        status = dict(obj.status)
        raw_conditions = status.get("conditions")
        conditions: list[dict[str, Any]] = (
            [dict(c) for c in raw_conditions if isinstance(c, Mapping)]
            if isinstance(raw_conditions, list)
            else []
        )
        record = self._records.get(obj.name)
        decision = registration.decide(
            record,
            accepts=spec.hub_accepts_client,
            was=registration.was_accepted(conditions),
        )
        if record is not None and decision.action == "approve":
            record = self._approve(record)
        elif record is not None and decision.action == "revoke":
            record = self._revoke(record, why="hubAcceptsClient was set false")
        facts = self._lease_facts(obj.name, status)
        verdict = evaluate_health(
            lease_renewed_at=facts.renewed_at,
            lease_seconds=spec.lease_duration_seconds,
            apiserver_healthy=facts.apiserver_healthy,
            now=now,
            conditions=conditions,
            taints=spec.taints,
        )
        if verdict.wake_at is not None:
            self._wake(("ManagedCluster", obj.name), verdict.wake_at, now)
        if verdict.taints_changed or decision.accepts != spec.hub_accepts_client:
            new_spec = {
                **dict(obj.spec),
                "hubAcceptsClient": decision.accepts,
                "taints": [taint_json(t) for t in verdict.taints],
            }
            written = self._put(
                "ManagedCluster",
                obj.name,
                labels=obj.labels,
                annotations=obj.annotations,
                spec=new_spec,
                expected_version=obj.resource_version,
                now=now,
            )
            if written is None:
                return
            obj = written
        accepted = registration.accepted_condition(
            record, accepts=decision.accepts, conditions=conditions, now=now
        )
        joined = registration.joined_condition(record, conditions=conditions, now=now)
        merged = put_condition(
            put_condition(put_condition(conditions, accepted), joined), verdict.available
        )
        stored_lease = status.get("lease") if isinstance(status.get("lease"), Mapping) else {}
        wanted: dict[str, Any] = {
            **health.agent_fields(facts, status),
            "conditions": merged,
        }
        lease_seconds = spec.lease_duration_seconds
        stored_renew = stored_lease.get("renewTime") if isinstance(stored_lease, Mapping) else None
        throttled = health.renew_time(
            facts,
            stored=stored_renew,
            min_interval=max(lease_seconds, self.settings.renew_write_seconds),
            now=now,
        )
        fresh = health.renew_time(facts, stored=stored_renew, min_interval=0.0, now=now)
        candidates = [dict(wanted), dict(wanted)]  # the stored renewTime unless more changed
        for candidate, renew in zip(candidates, (throttled, fresh), strict=True):
            if renew is not None:
                candidate["lease"] = {"renewTime": renew, "durationSeconds": lease_seconds}
        if status not in candidates:
            self._set_status(obj, candidates[1])

    # ------------------------------------------------------------------ 2. placements

    def _placements(
        self, dirty: Mapping[str, set[str]], due: set[tuple[str, str]], *, full: bool, now: float
    ) -> Generator[None, None, set[str]]:
        placements = self.mirror.objects["Placement"]
        for key in list(self._wakes):
            if key[0] == "Placement" and key[1] not in placements:
                del self._wakes[key]
        todo = (
            set(placements)
            if full
            else (dirty["Placement"] | {name for kind, name in due if kind == "Placement"})
        )
        changed = set(dirty["Placement"])
        if not todo:
            return changed
        views = sorted(self._views.values(), key=lambda v: v.name)
        sets = [cluster_set_view(s.document()) for s in self.mirror.all("ManagedClusterSet")]
        counts: Counter[str] = Counter()
        for name in sorted(placements):  # Balance counts the placements before, by name
            obj = placements[name]
            if name not in todo:
                counts.update(scheduling.decisions_of(obj.status))
                continue
            yield
            result = scheduling.schedule_placement(
                obj, clusters=views, sets=sets, counts=counts, now=now
            )
            self._wakes.pop(("Placement", name), None)
            if result.wake_at is not None:
                self._wake(("Placement", name), result.wake_at, now)
            counts.update(scheduling.decisions_of(result.status))
            if result.status != dict(obj.status):
                before = scheduling.decisions_of(obj.status)
                if self._set_status(obj, result.status) is not None:
                    after = scheduling.decisions_of(result.status)
                    if before != after or obj.status.get("decisionGroups") != result.status.get(
                        "decisionGroups"
                    ):
                        changed.add(name)
        return changed

    # ------------------------------------------------------------------ 3. worksets

    def _worksets(
        self,
        dirty: Mapping[str, set[str]],
        due: set[tuple[str, str]],
        placements_changed: set[str],
        *,
        full: bool,
        now: float,
    ) -> Generator[None, None, None]:
        sets = self.mirror.objects["WorkSet"]
        works_by_set: dict[str, list[StoredObject]] = {}
        for work in self.mirror.all("Work"):
            owner = work.labels.get(worksets.WORKSET_LABEL)
            if owner:
                works_by_set.setdefault(owner, []).append(work)
        dirty_works = {
            owner for name in dirty["Work"] for owner in self._owners(name, works_by_set)
        }
        if full or dirty["WorkSet"] or dirty_works:
            self._delete_orphans(works_by_set, sets)
        if full:
            todo = set(sets)
        else:
            todo = (
                dirty["WorkSet"] | dirty_works | {name for kind, name in due if kind == "WorkSet"}
            )
            if placements_changed:
                todo |= {name for name, obj in sets.items() if _refs(obj) & placements_changed}
        for name in sorted(todo):
            self._wakes.pop(("WorkSet", name), None)
            obj = sets.get(name)
            if obj is not None:
                self._workset(obj, works_by_set.get(name, []), now)
                yield

    def _workset(self, obj: StoredObject, works: list[StoredObject], now: float) -> None:
        plan = worksets.plan_workset(
            obj,
            placements=self.mirror.objects["Placement"],
            works=works,
            clusters=self._views,
            max_work_bytes=self.hub.settings.max_work_bytes,
            now=now,
            taken=lambda name: self.mirror.get("Work", name) is not None,
        )
        for write in plan.writes:
            self._put(
                "Work",
                write.name,
                labels=write.labels,
                annotations=write.annotations,
                spec=write.spec,
                expected_version=write.expected_version,
                now=now,
            )
        for work in plan.deletes:
            log.info(
                "deleting a Work the rollout no longer needs", extra={"kv": {"work": work.name}}
            )
            self._delete(work)
        if plan.status != dict(obj.status):
            self._set_status(obj, plan.status)
        if plan.wake_at is not None:
            self._wake(("WorkSet", obj.name), plan.wake_at, now)

    def _delete_orphans(
        self, works_by_set: Mapping[str, list[StoredObject]], sets: Mapping[str, StoredObject]
    ) -> None:
        for orphan in worksets.orphans([w for ws in works_by_set.values() for w in ws], sets):
            log.info("deleting the Work of a deleted WorkSet", extra={"kv": {"work": orphan.name}})
            self._delete(orphan)

    def _owners(self, name: str, works_by_set: Mapping[str, Iterable[StoredObject]]) -> set[str]:
        """The WorkSets a changed Work may belong to (by its label, or its name if deleted)."""
        held = self.mirror.get("Work", name)
        if held is not None:
            owner = held.labels.get(worksets.WORKSET_LABEL)
            return {owner} if owner else set()
        candidates = set(works_by_set) | set(self.mirror.objects["WorkSet"])
        return {ws for ws in candidates if name.startswith(ws + ".")}


def _refs(workset: StoredObject) -> set[str]:
    refs = workset.spec.get("placementRefs")
    return (
        {r["name"] for r in refs if isinstance(r, Mapping) and isinstance(r.get("name"), str)}
        if isinstance(refs, list)
        else set()
    )


async def run_leading(app: web.Application, controller: HubController) -> None:
    """The controller, and with replicas the leases of agents another replica holds."""
    holder = app.get(HOLDER_KEY)
    if holder is None:
        await controller.run()
        return
    hub = controller.hub
    async with asyncio.TaskGroup() as group:
        group.create_task(
            remote_leases.follow(
                hub,
                holder,
                interval=float(hub.settings.default_lease_seconds),
                here=lambda name: app[SESSIONS_KEY].get(name) is not None,
            ),
            name="fleet.remote-leases",
        )
        group.create_task(controller.run(), name="fleet.hub-controller-run")


def setup_controller(app: web.Application, *, settings: ControllerSettings | None = None) -> None:
    """Run the hub controller while ``app`` runs (needs the fleet hub's ``setup`` first)."""

    async def lifecycle(app: web.Application) -> AsyncIterator[None]:
        controller = HubController(
            hub=app[FLEET_HUB_KEY],
            node_store=app[STORE_KEY],
            cut_off=lambda name: cut_off(app, name),
            settings=settings or ControllerSettings(),
        )
        async with asyncio.TaskGroup() as group:
            # On the leader only with the Kubernetes store: two controllers would fight.
            task = group.create_task(
                singleton(app, "fleet.hub-controller", partial(run_leading, app, controller)),
                name="fleet.hub-controller",
            )
            yield
            task.cancel()

    app.cleanup_ctx.append(lifecycle)
