"""``PolicyController``: keeps the member cluster's pods in their ResourcePolicy units.

The webhook (hold mode) admits every pod a policy governs at the scheduling gate
``elastic.edgefleet.io/waiting-for-room`` with the annotation ``elastic.edgefleet.io/policy``.
This controller does the rest, from three informers (pods, nodes, ResourcePolicies) the caller
runs. The decisions are ``fleet_model.elastic.units``'s; ``plan_pass`` (pure, no I/O) turns the
caches into the writes of one pass and ``PolicyController`` performs them.

Rules:

* A pass starts once the three informers are synced, then whenever one of them changed, when a
  TimeoutOrExceedMax timeout or a retry falls due (``wake_at``), and at least every
  ``resync_seconds``; never more often than every ``min_pass_interval`` (a burst of pod events
  makes one pass, not a thousand). Passes never overlap: changes during a pass are seen by the
  informers' revisions and make the next one. A change of the pods alone makes no pass when
  no pod a pass reads changed (``_pods_read``: pods of namespaces with a ResourcePolicy, and
  pods at our gate or with our policy annotation anywhere): a pass is synchronous over every
  pod on the agent's loop, and pods of other namespaces were most of the changes.
* Per policy, in this order: a policy ``parse_resource_policy`` refuses gets the status
  ``invalid_status`` (``Accepted=False`` saying why) and nothing else is done for it: its pods
  stay at the gate until it is fixed. A valid one: ``try_next`` (stuck pods deleted, see
  below), ``release_plan`` (gated pods released with the core's JSON patch, after a ``test`` of
  the pod's uid), ``deletion_costs`` (merge patch of the annotation, bound pods only: the
  ReplicaSet controller removes unscheduled pods before any cost, and costs of pending pods
  would move every time one of them binds), then ``policy_status``.
* A status is written (merge patch of the ``status`` subresource, keys it no longer has set to
  null) only when it differs from the object's, and at most every ``status_min_interval`` per
  policy (the last state is always written: the pass wakes for it).
* Writes the cache has not shown yet are remembered, so a pass never acts twice on a stale
  cache: a released pod counts as released (in flight, not waiting) until the cache shows it
  past the gate; a cost, a deletion or a status just written is not written again until the
  cache shows it, or ``settle_seconds`` passed (then the cache is believed again). The server
  refuses a second release anyway: its patch ``test``s that the gate is still there.
* A stuck pod (``try_next``) is deleted (uid precondition) only when it has a controlling
  owner that recreates it. The core only calls a pod stuck when its group's opening is now
  beyond the units it was let try (the annotation ``elastic.edgefleet.io/units-through`` the
  release wrote): deleting it must widen its choice, else a full cluster would see its pods
  recreated every timeout.
* A pod at our gate that no valid policy of its namespace governs (its policy was deleted, or
  its labels changed) is released without affinity after ``orphan_grace_seconds`` (a policy
  just created may not be in the cache yet); one whose annotated policy is invalid keeps
  waiting for it to be fixed (its status says why).
* Bounded work per pass: ``max_releases``, ``max_cost_patches``, ``max_deletions``,
  ``max_status_writes``; a pass that hit a bound is followed by another at once. At most
  ``write_concurrency`` writes run at once. Remembered writes are tied to cached objects and
  dropped with them, so memory is bounded by the informers' own bounds.
* Events (``EventRecorder``, on the ResourcePolicy, so ``kubectl describe resourcepolicy`` and
  ``kubectl get events`` say what was done and why), each bounded:

  - ``Released`` (Normal), once per pod released, with a message that names only the units it
    may go to, in order: the recorder aggregates them into one Event per choice of units whose
    ``count`` is the pods (500 releases are one POST and a PATCH per ``repeat_write_seconds``);
  - ``UnitAtMax`` (Normal) when a unit of a group reaches its ``max``, saying where new pods go
    now (or that they wait at the gate); again only after the unit had room in between;
  - ``UnitOpened`` (Normal) when a TimeoutOrExceedMax timeout opens the next unit for a group;
  - ``StuckPodDeleted`` (Normal), once per deleted pod, aggregated like ``Released``;
  - ``InvalidSpec`` and ``Overlapping`` (Warning) once per change of the refusal's message or
    of the set of older policies that govern pods this one selects (not every pass).

  What a pass noted is remembered per policy (its uid; the full units of at most
  ``MAX_STATUS_GROUPS`` groups), so a change is one Event. Events go through a queue of at most
  ``max_queued_events`` (oldest dropped) written by their own task, so a slow API server never
  holds a pass; the recorder's token bucket bounds the writes.
* Failures never end ``run``: an API server that does not answer (or 5xx / 429) ends the pass
  and the next waits a back-off (``backoff_initial`` doubling to ``backoff_max``); an object's
  write refused (409, 422, ...) is retried for that object after its own back-off. Each kind of
  failure is logged once as a warning until that kind succeeds again (then one info line);
  repeats go to debug. A bug in a pass is logged with its traceback and backed off too.
"""

from __future__ import annotations

import asyncio
import collections
import logging
import time
import urllib.parse
from collections import defaultdict
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import prometheus_client

from edge_agent.cluster.elastic.events import EventRecorder
from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.member_watch import Informer, Key
from fleet_model.elastic.policy import (
    API_VERSION,
    GroupKey,
    ResourcePolicy,
    governing_policy,
    group_key,
    parse_resource_policy,
)
from fleet_model.elastic.units import (
    ANNOTATION_POLICY,
    DELETION_COST,
    MAX_RELEASES,
    MAX_STATUS_GROUPS,
    WAITING_GATE,
    allowed_units,
    count_usage,
    deletion_costs,
    invalid_status,
    opened_from_status,
    overlapping,
    policy_status,
    releases,
    try_next,
)
from fleet_model.problems import SpecError
from fleet_model.times import parse_time

__all__ = [
    "CostPatch",
    "Deletion",
    "Memory",
    "Note",
    "Noted",
    "Opened",
    "PassPlan",
    "PolicyController",
    "PolicyControllerSettings",
    "Release",
    "StatusWrite",
    "plan_pass",
]

log = logging.getLogger("edge_agent.cluster.elastic.policy")

T = TypeVar("T")

POLICIES = f"/apis/{API_VERSION}"
_STATUS_KEYS = ("units", "groups", "groupsOmitted", "conditions", "observedGeneration")
"""Every key ``policy_status`` / ``invalid_status`` may write: nulled when a status drops one."""
_MESSAGE = 300
"""Characters of an API server's refusal quoted in a log line."""


@dataclass(frozen=True, kw_only=True)
class PolicyControllerSettings:
    """Timing and bounds of the controller; each field says its unit and why its default."""

    resync_seconds: float = 60.0
    """Seconds after which a pass runs even if no informer changed: catches a status someone
    else overwrote and a remembered write whose settle time ran out."""

    min_pass_interval: float = 0.1
    """Seconds between the starts of two passes: every pod event would else make a pass over
    all pods; 0.1 s coalesces a burst and costs a release at most that much latency."""

    max_releases: int = MAX_RELEASES
    """Gated pods released per pass (one PATCH each): the core's own bound."""

    max_cost_patches: int = 512
    """pod-deletion-cost annotations patched per pass: a scale-out of a few hundred pods in one
    pass, then the rest in the next."""

    max_deletions: int = 64
    """Stuck pods deleted per pass (TimeoutOrExceedMax): each is recreated by its owner, so a
    mass deletion would be a mass re-creation; the rest wait for the next pass."""

    max_status_writes: int = 128
    """Policy statuses written per pass."""

    status_min_interval: float = 1.0
    """Seconds between two status writes of one policy: the status is for people and the
    cloud view; during a burst it would else be rewritten for every pod."""

    write_concurrency: int = 4
    """Writes in flight at once: the member API client pools 8 connections and the three
    informers' watches hold three of them."""

    settle_seconds: float = 30.0
    """Seconds a write the cache has not shown yet keeps the controller from repeating it;
    afterwards the cache is believed again (a watch lagging that long is broken anyway)."""

    orphan_grace_seconds: float = 60.0
    """Seconds a pod waits at our gate, governed by no policy whose annotated policy does not
    exist, before it is released without affinity: longer than the policy informer takes to
    see a policy just created (the webhook may have admitted the pod for it)."""

    backoff_initial: float = 0.5
    """Seconds before the first retry after a failure (API server down, a write refused)."""

    backoff_max: float = 30.0
    """Seconds the doubling back-off stops at."""

    max_queued_events: int = 1000
    """Events waiting for the recorder: a release of 256 pods per pass queues 256 (aggregated
    by the recorder, mostly without a write); beyond, the oldest are dropped, never a pass."""

    def __post_init__(self) -> None:
        for name in (
            "max_queued_events",
            "max_releases",
            "max_cost_patches",
            "max_deletions",
            "max_status_writes",
            "write_concurrency",
        ):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in (
            "resync_seconds",
            "settle_seconds",
            "backoff_initial",
            "backoff_max",
        ):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        for name in ("min_pass_interval", "status_min_interval", "orphan_grace_seconds"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must not be negative, got {getattr(self, name)}")
        if self.backoff_initial > self.backoff_max:
            raise ValueError("backoff_initial must be at most backoff_max")


# ---------------------------------------------------------------- the plan (pure)


@dataclass(frozen=True, kw_only=True, slots=True)
class Note:
    """An Event about a ResourcePolicy, for ``EventRecorder.emit``."""

    namespace: str
    name: str
    uid: str
    type: str
    """Normal or Warning."""
    reason: str
    message: str

    def involved(self) -> dict[str, Any]:
        """The policy as ``EventRecorder.emit`` takes it."""
        return {
            "apiVersion": API_VERSION,
            "kind": "ResourcePolicy",
            "metadata": {"name": self.name, "namespace": self.namespace, "uid": self.uid},
        }


@dataclass(frozen=True, kw_only=True, slots=True)
class Release:
    namespace: str
    name: str
    uid: str
    policy: str
    """The policy releasing it ("" for an orphan released without affinity)."""
    patch: list[dict[str, Any]]
    """RFC 6902 operations (``application/json-patch+json``)."""
    opened: int
    """The group's opening (TimeoutOrExceedMax) it is released under."""
    unit: str = ""
    """The first unit it may go to ("" for an orphan)."""
    note: Note | None = None
    """The Event once it is released (None for an orphan)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class CostPatch:
    namespace: str
    name: str
    uid: str
    cost: int


@dataclass(frozen=True, kw_only=True, slots=True)
class Deletion:
    namespace: str
    name: str
    uid: str
    policy: str
    note: Note | None = None
    """The Event once it is deleted."""


@dataclass(frozen=True, kw_only=True, slots=True)
class StatusWrite:
    namespace: str
    name: str
    uid: str
    status: dict[str, Any]
    """The status it should have (remembered once written)."""
    patch: dict[str, Any]
    """The merge patch of the status subresource (``{"status": ...}``, dropped keys null)."""
    valid: bool


@dataclass(frozen=True, kw_only=True, slots=True)
class _Sent:
    uid: str
    value: object
    at: float


@dataclass(frozen=True, kw_only=True, slots=True)
class Opened:
    """A policy's openings (TimeoutOrExceedMax) as the controller last computed them."""

    uid: str
    groups: dict[GroupKey, int]
    """Group -> the last unit index opened (only groups with an opening)."""
    vanished: dict[GroupKey, float] = field(default_factory=dict)
    """Group -> since when it has no pods while its opening is kept (``settle_seconds``)."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Noted:
    """What Events a policy's state was last told with (see the module's rules)."""

    uid: str
    full: frozenset[tuple[GroupKey, int]] = frozenset()
    """(group, unit index) at its max."""
    warned: tuple[tuple[str, str], ...] = ()
    """(reason, message) of each Warning in force."""


@dataclass(kw_only=True)
class Memory:
    """What the controller wrote that its caches may not show yet (see the module's rules)."""

    released: dict[Key, dict[str, Any]] = field(default_factory=dict)
    """Pods released, as the PATCH answered them: used in place of the cached pod while the
    cache still shows it at the gate."""
    costs: dict[Key, _Sent] = field(default_factory=dict)
    deletions: dict[Key, _Sent] = field(default_factory=dict)
    statuses: dict[Key, _Sent] = field(default_factory=dict)
    """Policy -> the status last written."""
    status_at: dict[Key, float] = field(default_factory=dict)
    """Policy -> when its status was last written (``status_min_interval``)."""
    opened: dict[Key, Opened] = field(default_factory=dict)
    """Policy -> its openings: newer than its status until that is written."""
    noted: dict[Key, Noted] = field(default_factory=dict)
    """Policy -> what its Events last said (edge-triggered Events)."""
    refused: dict[tuple[str, str, str], tuple[int, float]] = field(default_factory=dict)
    """(kind, namespace, name) -> (refusals in a row, not before): per-object back-off."""

    def prune(
        self,
        *,
        pods: Mapping[Key, Mapping[str, Any]],
        policies: Mapping[Key, Mapping[str, Any]],
        now: float,
        settle: float,
    ) -> None:
        """Forget what the caches now show, what is gone, and what is older than ``settle``."""

        def pod_moved_on(key: Key, answered: Mapping[str, Any]) -> bool:
            pod = pods.get(key)
            return pod is None or _uid(pod) != _uid(answered) or _gate(pod) is None

        def cost_settled(key: Key, sent: _Sent) -> bool:
            pod = pods.get(key)
            return (
                pod is None
                or _uid(pod) != sent.uid
                or _annotations(pod).get(DELETION_COST) == str(sent.value)
                or now - sent.at > settle
            )

        def deletion_settled(key: Key, sent: _Sent) -> bool:
            pod = pods.get(key)
            return pod is None or _uid(pod) != sent.uid or now - sent.at > settle

        def status_settled(key: Key, sent: _Sent) -> bool:
            policy = policies.get(key)
            return (
                policy is None
                or _uid(policy) != sent.uid
                or policy.get("status") == sent.value
                or now - sent.at > settle
            )

        def policy_gone(key: Key, remembered: Opened) -> bool:
            policy = policies.get(key)
            return policy is None or _uid(policy) != remembered.uid

        _drop(self.released, pod_moved_on)
        _drop(self.costs, cost_settled)
        _drop(self.deletions, deletion_settled)
        _drop(self.statuses, status_settled)
        _drop(self.status_at, lambda key, _: key not in policies)
        _drop(self.opened, policy_gone)
        _drop(self.noted, lambda key, noted: _uid(policies.get(key) or {}) != noted.uid)
        _drop(
            self.refused,
            lambda what, _: what[1:] not in (policies if what[0] == "status" else pods),
        )

    def backing_off(self, kind: str, namespace: str, name: str, now: float) -> float | None:
        """When the object's write may be tried again, if that is still to come."""
        found = self.refused.get((kind, namespace, name))
        return found[1] if found is not None and found[1] > now else None


@dataclass(frozen=True, kw_only=True, slots=True)
class PassPlan:
    """The writes of one pass, in the order they are made (deletions first)."""

    deletions: tuple[Deletion, ...] = ()
    releases: tuple[Release, ...] = ()
    costs: tuple[CostPatch, ...] = ()
    statuses: tuple[StatusWrite, ...] = ()
    opened: dict[Key, Opened] = field(default_factory=dict)
    """Per valid policy: its openings, to remember."""
    noted: dict[Key, Noted] = field(default_factory=dict)
    """Per policy: what its Events now say, to remember."""
    notes: tuple[Note, ...] = ()
    """Events of state changes (releases and deletions carry their own)."""
    wake_at: float | None = None
    """When a pass is due even if nothing changes (a timeout, a retry, a status held back)."""
    truncated: bool = False
    """A bound of the pass was reached: pass again at once."""
    invalid: int = 0
    """Policies whose spec is refused."""


K = TypeVar("K")
V = TypeVar("V")


_PodRead = tuple[Key, str]
"""A pod a pass reads: its key and resourceVersion."""


def _pods_read(
    pods: Mapping[Key, Mapping[str, Any]], policies: Iterable[Key]
) -> frozenset[_PodRead]:
    """The pods a pass reads (see the module's rules), each with its resourceVersion."""
    namespaces = {namespace for namespace, _ in policies}
    return frozenset(
        (key, str(_metadata(pod).get("resourceVersion", "")))
        for key, pod in pods.items()
        if key[0] in namespaces or ANNOTATION_POLICY in _annotations(pod) or _gate(pod) is not None
    )


def _drop(records: dict[K, V], done: Callable[[K, V], bool]) -> None:
    for key in [key for key, value in records.items() if done(key, value)]:
        del records[key]


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _metadata(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(obj.get("metadata"))


def _uid(obj: Mapping[str, Any]) -> str:
    uid = _metadata(obj).get("uid")
    return uid if isinstance(uid, str) else ""


def _name(obj: Mapping[str, Any]) -> str:
    name = _metadata(obj).get("name")
    return name if isinstance(name, str) else ""


def _annotations(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(_metadata(obj).get("annotations"))


def _gate(pod: Mapping[str, Any]) -> int | None:
    gates = _dict(pod.get("spec")).get("schedulingGates")
    for index, gate in enumerate(gates if isinstance(gates, list) else []):
        if _dict(gate).get("name") == WAITING_GATE:
            return index
    return None


def _bound(pod: Mapping[str, Any]) -> bool:
    return bool(_dict(pod.get("spec")).get("nodeName"))


def _terminating(pod: Mapping[str, Any]) -> bool:
    return _metadata(pod).get("deletionTimestamp") is not None


def _has_controller(pod: Mapping[str, Any]) -> bool:
    owners = _metadata(pod).get("ownerReferences")
    return any(
        _dict(owner).get("controller") is True
        for owner in (owners if isinstance(owners, list) else [])
    )


def _earliest(*times: float | None) -> float | None:
    found = [t for t in times if t is not None]
    return min(found) if found else None


def _uid_test(uid: str) -> list[dict[str, Any]]:
    # A pod re-created under the same name (a StatefulSet's) is another pod: not ours to patch.
    return [{"op": "test", "path": "/metadata/uid", "value": uid}] if uid else []


def _seniority(policy: ResourcePolicy) -> tuple[float, str]:
    return (policy.created if policy.created > 0 else float("inf"), policy.name)


@dataclass(kw_only=True)
class _Budget:
    releases: int
    costs: int
    deletions: int
    statuses: int
    truncated: bool = False


@dataclass(kw_only=True)
class _Planner:
    """One pass's state while ``plan_pass`` walks the policies."""

    memory: Memory
    nodes: Mapping[str, Mapping[str, str]]
    now: float
    settings: PolicyControllerSettings
    budget: _Budget
    deletions: list[Deletion] = field(default_factory=list)
    releases: list[Release] = field(default_factory=list)
    costs: list[CostPatch] = field(default_factory=list)
    statuses: list[StatusWrite] = field(default_factory=list)
    opened: dict[Key, Opened] = field(default_factory=dict)
    noted: dict[Key, Noted] = field(default_factory=dict)
    notes: list[Note] = field(default_factory=list)
    wake_at: float | None = None

    def wake(self, at: float | None) -> None:
        self.wake_at = _earliest(self.wake_at, at)

    def held_back(self, kind: str, namespace: str, name: str) -> bool:
        until = self.memory.backing_off(kind, namespace, name, self.now)
        self.wake(until)
        return until is not None

    # -- status

    def status(
        self, obj: Mapping[str, Any], key: Key, make: Callable[[Mapping[str, Any]], dict[str, Any]]
    ) -> None:
        """Queue the status ``make(previous)`` if it differs from the object's and ours."""
        uid = _uid(obj)
        current = obj.get("status")
        sent = self.memory.statuses.get(key)
        # What we wrote last is newer than a cache that does not show it yet.
        previous = sent.value if sent is not None and sent.uid == uid else current
        desired = make(_dict(previous))
        if desired == current or (sent is not None and sent.uid == uid and desired == sent.value):
            return
        last = self.memory.status_at.get(key)
        if last is not None and self.now < last + self.settings.status_min_interval:
            self.wake(last + self.settings.status_min_interval)
            return
        if self.held_back("status", *key):
            return
        if self.budget.statuses <= 0:
            self.budget.truncated = True
            return
        self.budget.statuses -= 1
        dropped = set(_dict(current)) | set(_dict(previous)) | set(_STATUS_KEYS)
        patch = {"status": {**dict.fromkeys(dropped - desired.keys()), **desired}}
        valid = not any(
            c.get("type") == "Accepted" and c.get("status") == "False"
            for c in desired.get("conditions") or ()
            if isinstance(c, dict)
        )
        self.statuses.append(
            StatusWrite(
                namespace=key[0], name=key[1], uid=uid, status=desired, patch=patch, valid=valid
            )
        )

    # -- events

    def note(self, key: Key, uid: str, type_: str, reason: str, message: str) -> Note:
        return Note(
            namespace=key[0], name=key[1], uid=uid, type=type_, reason=reason, message=message
        )

    def _noted(self, key: Key, uid: str) -> Noted:
        known = self.noted.get(key) or self.memory.noted.get(key)
        return known if known is not None and known.uid == uid else Noted(uid=uid)

    def warn(self, key: Key, uid: str, warnings: Mapping[str, str]) -> None:
        """Warnings in force now (reason -> message): a new or changed one becomes an Event."""
        noted = self._noted(key, uid)
        before = dict(noted.warned)
        for reason, message in sorted(warnings.items()):
            if before.get(reason) != message:
                self.notes.append(self.note(key, uid, "Warning", reason, message))
        self.noted[key] = Noted(uid=uid, full=noted.full, warned=tuple(sorted(warnings.items())))

    def invalid(self, obj: Mapping[str, Any], key: Key, error: SpecError) -> None:
        self.warn(key, _uid(obj), {"InvalidSpec": f"policy refused: {error}"})
        generation = _metadata(obj).get("generation")
        self.status(
            obj,
            key,
            lambda previous: invalid_status(
                str(error),
                generation=generation if isinstance(generation, int) else None,
                previous=previous,
                now=self.now,
            ),
        )

    # -- a valid policy

    def policy(
        self,
        policy: ResourcePolicy,
        obj: Mapping[str, Any],
        pods: Sequence[Mapping[str, Any]],
        others: Sequence[ResourcePolicy],
    ) -> None:
        key = (policy.namespace, policy.name)
        uid = _uid(obj)
        remembered = self.memory.opened.get(key)
        if remembered is not None and remembered.uid == uid:
            before, vanished = remembered.groups, remembered.vanished
        else:
            before, vanished = opened_from_status(policy, obj.get("status")), {}
        step = try_next(policy, pods, opened=before, now=self.now)
        self.wake(step.wake_at)
        opened = dict(step.opened)
        # try_next drops the opening of a group without pods; but a stuck pod's group has none
        # between its deletion and its replacement's creation: keep it for settle_seconds.
        kept: dict[GroupKey, float] = {}
        settle = self.settings.settle_seconds
        for group, through in before.items():
            since = vanished.get(group, self.now)
            if group not in opened and self.now - since < settle:
                opened[group] = through
                kept[group] = since
                self.wake(since + settle)
        self.opened[key] = Opened(uid=uid, groups=opened, vanished=kept)
        self._opened_notes(policy, uid, before, opened)
        going = self._stuck(policy, uid, pods, step.stuck, opened)
        left = [pod for pod in pods if _name(pod) not in going]
        self._policy_notes(policy, uid, left, others, opened)
        self._release(policy, uid, left, others, opened)
        self._costs(policy, left, others)
        self.status(
            obj,
            key,
            lambda previous: policy_status(
                policy,
                left,
                self.nodes,
                policies=others,
                opened=opened,
                previous=previous,
                now=self.now,
            ),
        )

    def _opened_notes(
        self,
        policy: ResourcePolicy,
        uid: str,
        before: Mapping[GroupKey, int],
        after: Mapping[GroupKey, int],
    ) -> None:
        timeout = policy.when_try_next.timeout_seconds
        for group in sorted(after, key=_group_order)[:MAX_STATUS_GROUPS]:
            through = after[group]
            if through <= before.get(group, 0) or through >= len(policy.units):
                continue
            message = (
                f"pods{_group_text(policy, group)} stayed unschedulable for {timeout}s on the "
                f"units through {policy.units[through - 1].name}: unit "
                f"{policy.units[through].name} opened"
            )
            key = (policy.namespace, policy.name)
            self.notes.append(self.note(key, uid, "Normal", "UnitOpened", message))

    def _policy_notes(
        self,
        policy: ResourcePolicy,
        uid: str,
        pods: Sequence[Mapping[str, Any]],
        others: Sequence[ResourcePolicy],
        opened: Mapping[GroupKey, int],
    ) -> None:
        """UnitAtMax for units that reached their max; Overlapping while older policies win."""
        key = (policy.namespace, policy.name)
        winners = overlapping(policy, pods, others)
        self.warn(
            key,
            uid,
            {
                "Overlapping": "pods this policy selects are governed by older policies of the "
                f"namespace: {', '.join(winners)}; it leaves those pods to them"
            }
            if winners
            else {},
        )
        noted = self._noted(key, uid)
        if not any(unit.max is not None for unit in policy.units):
            return
        usage = count_usage(policy, pods, self.nodes, policies=others)
        full: set[tuple[GroupKey, int]] = set()
        for group in sorted(usage.units, key=_group_order)[:MAX_STATUS_GROUPS]:
            counts = usage.units[group]
            for index, unit in enumerate(policy.units):
                if unit.max is None or counts[index] < unit.max:
                    continue
                full.add((group, index))
                if (group, index) in noted.full:
                    continue
                allowed = allowed_units(policy, counts, opened=opened.get(group, 0))
                where = (
                    "new pods go to " + ", ".join(policy.units[i].name for i in allowed)
                    if allowed
                    else "every unit is at its max: new pods wait at the gate"
                )
                message = (
                    f"unit {unit.name} holds {counts[index]} pods{_group_text(policy, group)}, "
                    f"its max is {unit.max}: {where}"
                )
                self.notes.append(self.note(key, uid, "Normal", "UnitAtMax", message))
        self.noted[key] = Noted(uid=uid, full=frozenset(full), warned=noted.warned)

    def _stuck(
        self,
        policy: ResourcePolicy,
        uid: str,
        pods: Sequence[Mapping[str, Any]],
        stuck: Iterable[str],
        opened: Mapping[GroupKey, int],
    ) -> set[str]:
        policy_uid = uid
        by_name = {_name(pod): pod for pod in pods}
        going: set[str] = set()
        for name in stuck:
            pod = by_name.get(name)
            if pod is None or not _has_controller(pod):
                continue  # nobody would recreate a bare pod: deleting it would lose it
            uid = _uid(pod)
            if self.held_back("delete", policy.namespace, name):
                continue
            if self.budget.deletions <= 0:
                self.budget.truncated = True
                break
            self.budget.deletions -= 1
            group = group_key(policy, pod)
            through = min(opened.get(group, 0), len(policy.units) - 1)
            message = (
                f"deleted pods{_group_text(policy, group)} unschedulable for more than "
                f"{policy.when_try_next.timeout_seconds}s, so their owners recreate them with "
                f"the units through {policy.units[through].name} open"
            )
            note = self.note(
                (policy.namespace, policy.name), policy_uid, "Normal", "StuckPodDeleted", message
            )
            self.deletions.append(
                Deletion(
                    namespace=policy.namespace, name=name, uid=uid, policy=policy.name, note=note
                )
            )
            going.add(name)
        return going

    def _release(
        self,
        policy: ResourcePolicy,
        policy_uid: str,
        pods: Sequence[Mapping[str, Any]],
        others: Sequence[ResourcePolicy],
        opened: Mapping[GroupKey, int],
    ) -> None:
        if self.budget.releases <= 0:
            self.budget.truncated = True
            return
        by_name = {_name(pod): pod for pod in pods}
        plan = releases(
            policy, pods, self.nodes, policies=others, opened=opened, limit=self.budget.releases
        )
        for item in plan:
            name = item.name
            pod = by_name[name]
            if self.held_back("release", policy.namespace, name):
                continue
            self.budget.releases -= 1
            self.releases.append(
                Release(
                    namespace=policy.namespace,
                    name=name,
                    uid=_uid(pod),
                    policy=policy.name,
                    patch=[*_uid_test(_uid(pod)), *item.patch],
                    opened=opened.get(group_key(policy, pod), 0),
                    unit=item.unit,
                    note=self.note(
                        (policy.namespace, policy.name),
                        policy_uid,
                        "Normal",
                        "Released",
                        f"pods released from the gate to units {', '.join(item.allowed)} "
                        "(preferred in that order)",
                    ),
                )
            )
        if self.budget.releases <= 0:
            self.budget.truncated = True  # more may be due: the next pass comes at once

    def _costs(
        self,
        policy: ResourcePolicy,
        pods: Sequence[Mapping[str, Any]],
        others: Sequence[ResourcePolicy],
    ) -> None:
        by_name = {_name(pod): pod for pod in pods}
        wanted = deletion_costs(policy, pods, self.nodes, policies=others)
        for name, cost in sorted(wanted.items()):
            pod = by_name[name]
            if not _bound(pod):
                continue  # see the module's rules: pending pods go first whatever their cost
            uid = _uid(pod)
            sent = self.memory.costs.get((policy.namespace, name))
            if sent is not None and sent.uid == uid and sent.value == cost:
                continue
            if self.held_back("cost", policy.namespace, name):
                continue
            if self.budget.costs <= 0:
                self.budget.truncated = True
                return
            self.budget.costs -= 1
            self.costs.append(CostPatch(namespace=policy.namespace, name=name, uid=uid, cost=cost))

    # -- pods of no policy

    def orphans(
        self,
        namespace: str,
        pods: Sequence[Mapping[str, Any]],
        valid: Sequence[ResourcePolicy],
        invalid: set[str],
    ) -> None:
        """Release pods at our gate that no valid policy governs (see the rules)."""
        for pod in pods:
            index = _gate(pod)
            if index is None or _terminating(pod):
                continue
            wanted = _annotations(pod).get(ANNOTATION_POLICY)
            if wanted in invalid or governing_policy(pod, valid) is not None:
                continue
            created = parse_time(_metadata(pod).get("creationTimestamp")) or self.now
            due = created + self.settings.orphan_grace_seconds
            if due > self.now:
                self.wake(due)
                continue
            name = _name(pod)
            if self.held_back("release", namespace, name):
                continue
            if self.budget.releases <= 0:
                self.budget.truncated = True
                return
            self.budget.releases -= 1
            path = f"/spec/schedulingGates/{index}"
            patch = [
                *_uid_test(_uid(pod)),
                {"op": "test", "path": path, "value": {"name": WAITING_GATE}},
                {"op": "remove", "path": path},
            ]
            self.releases.append(
                Release(
                    namespace=namespace, name=name, uid=_uid(pod), policy="", patch=patch, opened=0
                )
            )


def _group_order(group: GroupKey) -> tuple[tuple[int, str], ...]:
    return tuple((0, "") if value is None else (1, value) for value in group)


def _group_text(policy: ResourcePolicy, group: GroupKey) -> str:
    """`` with k=v, ...`` for a group of ``matchLabelKeys`` ("" without them)."""
    pairs = [f"{k}={v}" for k, v in zip(policy.match_label_keys, group, strict=True) if v]
    return f" with {', '.join(pairs)}" if pairs else ""


def _pod_view(
    pods: Mapping[Key, Mapping[str, Any]], memory: Memory
) -> dict[str, list[Mapping[str, Any]]]:
    """Pods by namespace as the controller knows them: its own writes the cache lacks applied."""
    view: defaultdict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for key, pod in pods.items():
        uid = _uid(pod)
        deleting = memory.deletions.get(key)
        if deleting is not None and deleting.uid == uid:
            continue
        answered = memory.released.get(key)
        if answered is not None and _uid(answered) == uid and _gate(pod) is not None:
            view[key[0]].append(answered)
        else:
            view[key[0]].append(pod)
    return view


def _node_labels(nodes: Mapping[Key, Mapping[str, Any]]) -> dict[str, Mapping[str, str]]:
    out: dict[str, Mapping[str, str]] = {}
    for (_, name), node in nodes.items():
        labels = _metadata(node).get("labels")
        out[name] = (
            {k: v for k, v in labels.items() if isinstance(k, str) and isinstance(v, str)}
            if isinstance(labels, dict)
            else {}
        )
    return out


def plan_pass(
    *,
    policies: Mapping[Key, Mapping[str, Any]],
    pods: Mapping[Key, Mapping[str, Any]],
    nodes: Mapping[Key, Mapping[str, Any]],
    memory: Memory,
    now: float,
    settings: PolicyControllerSettings,
) -> PassPlan:
    """The writes of one pass over the informers' caches (``Informer.items()``); no I/O.

    ``memory`` is read, not changed: the caller prunes it before (``Memory.prune``) and records
    the writes that succeeded after.
    """
    planner = _Planner(
        memory=memory,
        nodes=_node_labels(nodes),
        now=now,
        settings=settings,
        budget=_Budget(
            releases=settings.max_releases,
            costs=settings.max_cost_patches,
            deletions=settings.max_deletions,
            statuses=settings.max_status_writes,
        ),
    )
    valid: defaultdict[str, list[tuple[ResourcePolicy, Mapping[str, Any]]]] = defaultdict(list)
    refused: defaultdict[str, set[str]] = defaultdict(set)
    for key in sorted(policies):
        obj = policies[key]
        try:
            parsed = parse_resource_policy(obj)
        except SpecError as error:
            refused[key[0]].add(key[1])
            planner.invalid(obj, key, error)
            continue
        valid[key[0]].append((parsed, obj))
    view = _pod_view(pods, memory)
    for namespace in sorted(view.keys() | valid.keys()):
        found = sorted(valid.get(namespace, []), key=lambda pair: _seniority(pair[0]))
        in_namespace = view.get(namespace, [])
        parsed_ones = [policy for policy, _ in found]
        for policy, obj in found:
            planner.policy(policy, obj, in_namespace, parsed_ones)
        planner.orphans(namespace, in_namespace, parsed_ones, refused.get(namespace, set()))
    for _, not_before in memory.refused.values():
        if not_before > now:
            planner.wake(not_before)
    return PassPlan(
        deletions=tuple(planner.deletions),
        releases=tuple(planner.releases),
        costs=tuple(planner.costs),
        statuses=tuple(planner.statuses),
        opened=planner.opened,
        noted=planner.noted,
        notes=tuple(planner.notes),
        wake_at=planner.wake_at,
        truncated=planner.budget.truncated,
        invalid=sum(len(names) for names in refused.values()),
    )


# ---------------------------------------------------------------- the controller (I/O)


class _Metrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        prefix = "edge_agent_elastic_policy"
        self.passes = prometheus_client.Counter(
            f"{prefix}_passes", "Passes of the ResourcePolicy controller", registry=registry
        )
        self.releases = prometheus_client.Counter(
            f"{prefix}_releases",
            "Pods released from the waiting-for-room scheduling gate",
            registry=registry,
        )
        self.cost_patches = prometheus_client.Counter(
            f"{prefix}_cost_patches",
            "pod-deletion-cost annotations written",
            registry=registry,
        )
        self.deletions = prometheus_client.Counter(
            f"{prefix}_stuck_deletions",
            "Pods deleted after a TimeoutOrExceedMax timeout (their owner recreates them)",
            registry=registry,
        )
        self.status_writes = prometheus_client.Counter(
            f"{prefix}_status_writes", "ResourcePolicy statuses written", registry=registry
        )
        self.errors = prometheus_client.Counter(
            f"{prefix}_errors",
            "Failures by kind (unreachable, release, cost, delete, status, pass)",
            ["kind"],
            registry=registry,
        )
        self.invalid = prometheus_client.Gauge(
            f"{prefix}_invalid", "ResourcePolicies whose spec is refused", registry=registry
        )


class _Unreachable(Exception):  # noqa: N818 - names the state, not an error class hierarchy
    """The API server did not answer (or 5xx / 429): stop the pass and back off."""


def _quote(value: str) -> str:
    return urllib.parse.quote(value, safe="")


def _refusal(status: int, answer: object) -> str:
    message = _dict(answer).get("message")
    text = message if isinstance(message, str) else "no Status message"
    return f"HTTP {status}: {text[:_MESSAGE]}"


class PolicyController:
    """Releases held pods, keeps pod-deletion-cost and the policies' status (module rules)."""

    def __init__(
        self,
        *,
        api: MemberApi,
        pods: Informer,
        nodes: Informer,
        policies: Informer,
        settings: PolicyControllerSettings | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
        events: EventRecorder | None = None,
    ) -> None:
        """``events``: the recorder to write Events with (default: one of its own)."""
        self._api = api
        self._pods = pods
        self._nodes = nodes
        self._policies = policies
        self.settings = settings or PolicyControllerSettings()
        self._metrics = _Metrics(registry) if registry is not None else None
        self._clock = clock
        self.memory = Memory()
        self.passes = 0
        """Passes completed (for tests and status)."""
        self.skipped = 0
        """Wake-ups on a change of the pods alone that changed no pod a pass reads."""
        self._read: frozenset[_PodRead] = frozenset()
        """``_pods_read`` at the start of the last pass."""
        self._failing: dict[str, str] = {}
        """Kind -> the failure logged as a warning, until that kind succeeds again."""
        self._backoff = 0.0
        self._not_before = 0.0
        """Monotonic time before which no pass starts (after the API server failed)."""
        self._recorder = events if events is not None else EventRecorder(api)
        self._events: collections.deque[Note] = collections.deque(
            maxlen=self.settings.max_queued_events
        )
        self._queued = asyncio.Event()
        self.events_dropped = 0
        """Events dropped because ``max_queued_events`` were waiting already."""

    async def run(self) -> None:
        """Pass after pass until cancelled (see the module's rules)."""
        async with asyncio.TaskGroup() as group:
            group.create_task(self._write_events(), name="elastic.policy.events")
            await self._passes()

    def _note(self, note: Note) -> None:
        if len(self._events) == self._events.maxlen:
            self.events_dropped += 1
            if self.events_dropped == 1:
                log.warning("more than %d events waiting; dropping the oldest", len(self._events))
        self._events.append(note)
        self._queued.set()

    async def _write_events(self) -> None:
        """Hand queued Events to the recorder, one at a time (it never raises for the API)."""
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._events:
                note = self._events.popleft()
                await self._recorder.emit(
                    note.involved(), type=note.type, reason=note.reason, message=note.message
                )

    async def _passes(self) -> None:
        informers = (self._pods, self._nodes, self._policies)
        for informer in informers:
            await informer.synced.wait()
        log.info("resource policy controller started")
        settings = self.settings
        while True:
            started = time.monotonic()
            revisions = [informer.revision for informer in informers]
            # Taken with the caches the pass reads (no await between this and its reads).
            self._read = _pods_read(self._pods.items(), self._policies.items())
            plan = await self._guarded_pass()
            if plan is None or plan.truncated:
                delay = 0.0  # at once, or after the back-off (below)
            else:
                delay = settings.resync_seconds
                if plan.wake_at is not None:
                    delay = min(delay, max(0.0, plan.wake_at - self._clock()))
            if delay > 0:
                await self._wait_needed(informers, revisions, time.monotonic() + delay, started)
            # Coalesce a burst of events, and honour the back-off after a failure.
            pause = max(
                started + settings.min_pass_interval - time.monotonic(),
                self._not_before - time.monotonic(),
            )
            if pause > 0:
                await asyncio.sleep(pause)

    async def _wait_needed(
        self,
        informers: Sequence[Informer],
        revisions: Sequence[int],
        deadline: float,
        started: float,
    ) -> None:
        """Until ``deadline`` (monotonic) or a change a pass would read (module rules).

        ``started``: when the last pass started (monotonic): a change of the pods alone is
        compared no earlier than the next pass could start, so a burst is compared once.
        """
        revisions = list(revisions)
        while (left := deadline - time.monotonic()) > 0:
            await self._wait_changed(informers, revisions, left)
            now = [informer.revision for informer in informers]
            if now == revisions:
                return  # the deadline
            if now[1:] != revisions[1:]:
                return  # nodes or policies changed
            # The pods alone: wait as a pass would, so a burst is compared once, then compare.
            pause = started + self.settings.min_pass_interval - time.monotonic()
            if pause > 0:
                await asyncio.sleep(pause)
            revisions = [informer.revision for informer in informers]
            if revisions[1:] != now[1:]:
                return
            started = time.monotonic()  # comparisons too are one per interval at most
            if _pods_read(self._pods.items(), self._policies.items()) != self._read:
                return
            self.skipped += 1

    async def _wait_changed(
        self, informers: Sequence[Informer], revisions: Sequence[int], seconds: float
    ) -> None:
        """Until any informer's revision passed the one the pass saw, or ``seconds`` passed."""
        changed = asyncio.Event()

        async def watch(informer: Informer, past: int) -> None:
            await informer.wait_changed(past, seconds)
            changed.set()

        async with asyncio.TaskGroup() as group:
            tasks = [
                group.create_task(watch(informer, past), name="elastic.policy.wait")
                for informer, past in zip(informers, revisions, strict=True)
            ]
            await changed.wait()
            for task in tasks:
                task.cancel()

    async def _guarded_pass(self) -> PassPlan | None:
        try:
            plan = await self._pass()
        except _Unreachable as error:
            self._fail("unreachable", str(error))
            self._back_off()
            return None
        except Exception as error:  # a bug must not end the controller: log it, back off
            if self._fail("pass", repr(error), warn=False):
                log.exception("resource policy controller: a pass failed")
            self._back_off()
            return None
        self._succeeded("unreachable")
        self._succeeded("pass")
        self._backoff = 0.0
        return plan

    def _back_off(self) -> None:
        settings = self.settings
        delay = self._backoff or settings.backoff_initial
        self._backoff = min(delay * 2, settings.backoff_max)
        self._not_before = time.monotonic() + delay

    def _fail(self, kind: str, message: str, *, warn: bool = True) -> bool:
        """Count a failure; True (and a warning when ``warn``) the first time in a row."""
        if self._metrics is not None:
            self._metrics.errors.labels(kind).inc()
        if kind in self._failing:
            log.debug("resource policy controller: %s: %s", kind, message)
            return False
        self._failing[kind] = message
        if warn:
            log.warning(
                "resource policy controller: %s: %s (repeats are logged at debug level until "
                "it works again)",
                kind,
                message,
            )
        return True

    def _succeeded(self, kind: str) -> None:
        if self._failing.pop(kind, None) is not None:
            log.info("resource policy controller: %s works again", kind)

    async def _pass(self) -> PassPlan:
        """One pass: plan from the caches, then write (raises ``_Unreachable``)."""
        now = self._clock()
        policies = self._policies.items()
        pods = self._pods.items()
        self.memory.prune(
            pods=pods, policies=policies, now=now, settle=self.settings.settle_seconds
        )
        plan = plan_pass(
            policies=policies,
            pods=pods,
            nodes=self._nodes.items(),
            memory=self.memory,
            now=now,
            settings=self.settings,
        )
        self.memory.opened.update(plan.opened)
        self.memory.noted.update(plan.noted)
        for note in plan.notes:
            self._note(note)
        await self._all(plan.deletions, self._delete)
        await self._all(plan.releases, self._release)
        await self._all(plan.costs, self._cost)
        await self._all(plan.statuses, self._status)
        self.passes += 1
        if self._metrics is not None:
            self._metrics.passes.inc()
            self._metrics.invalid.set(plan.invalid)
        if plan.releases or plan.deletions:
            log.debug(
                "pass: %d released, %d deleted, %d costs, %d statuses",
                len(plan.releases),
                len(plan.deletions),
                len(plan.costs),
                len(plan.statuses),
            )
        return plan

    async def _all(self, items: Sequence[T], write: Callable[[T], Awaitable[None]]) -> None:
        """``write`` every item, ``write_concurrency`` at once; stops all if one is unreachable."""
        if not items:
            return
        gate = asyncio.Semaphore(self.settings.write_concurrency)

        async def one(item: T) -> None:
            async with gate:
                await write(item)

        try:
            async with asyncio.TaskGroup() as group:
                for item in items:
                    group.create_task(one(item), name="elastic.policy.write")
        except* _Unreachable as errors:
            raise errors.exceptions[0] from None

    async def _request(
        self, method: str, path: str, *, body: object = None, content_type: str
    ) -> tuple[int, Any]:
        try:
            status, answer = await self._api.request(
                method, path, body=body, content_type=content_type
            )
        except MemberApiError as error:
            raise _Unreachable(str(error)) from None
        if status >= 500 or status == 429:
            raise _Unreachable(f"{method} {path}: {_refusal(status, answer)}")
        return status, answer

    def _refused(self, kind: str, namespace: str, name: str, message: str) -> None:
        failures, _ = self.memory.refused.get((kind, namespace, name), (0, 0.0))
        delay = min(self.settings.backoff_initial * 2**failures, self.settings.backoff_max)
        self.memory.refused[(kind, namespace, name)] = (
            min(failures + 1, 32),
            self._clock() + delay,
        )
        self._fail(kind, f"{namespace}/{name}: {message}; retried in {delay:g} s")

    def _done(self, kind: str, namespace: str, name: str) -> None:
        self.memory.refused.pop((kind, namespace, name), None)
        self._succeeded(kind)

    async def _release(self, release: Release) -> None:
        namespace, name = release.namespace, release.name
        status, answer = await self._request(
            "PATCH",
            f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}",
            body=release.patch,
            content_type="application/json-patch+json",
        )
        if 200 <= status < 300 and isinstance(answer, dict):
            self.memory.released[(namespace, name)] = answer
            self._done("release", namespace, name)
            if release.note is not None:
                self._note(release.note)
            if self._metrics is not None:
                self._metrics.releases.inc()
            log.debug("released pod %s/%s (%s)", namespace, name, release.policy or "orphan")
        elif status == 404:
            log.debug("pod %s/%s is gone before its release", namespace, name)
        else:
            self._refused("release", namespace, name, _refusal(status, answer))

    async def _cost(self, cost: CostPatch) -> None:
        namespace, name = cost.namespace, cost.name
        body = {"metadata": {"uid": cost.uid, "annotations": {DELETION_COST: str(cost.cost)}}}
        status, answer = await self._request(
            "PATCH",
            f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}",
            body=body,
            content_type="application/merge-patch+json",
        )
        if 200 <= status < 300:
            self.memory.costs[(namespace, name)] = _Sent(
                uid=cost.uid, value=cost.cost, at=self._clock()
            )
            self._done("cost", namespace, name)
            if self._metrics is not None:
                self._metrics.cost_patches.inc()
        elif status == 404:
            log.debug("pod %s/%s is gone before its deletion cost", namespace, name)
        else:
            self._refused("cost", namespace, name, _refusal(status, answer))

    async def _delete(self, deletion: Deletion) -> None:
        namespace, name = deletion.namespace, deletion.name
        body = {
            "apiVersion": "v1",
            "kind": "DeleteOptions",
            "preconditions": {"uid": deletion.uid},
        }
        status, answer = await self._request(
            "DELETE",
            f"/api/v1/namespaces/{_quote(namespace)}/pods/{_quote(name)}",
            body=body,
            content_type="application/json",
        )
        if 200 <= status < 300 or status in {404, 409}:
            # 404: gone already; 409: the uid differs, another pod took the name: not ours.
            self.memory.deletions[(namespace, name)] = _Sent(
                uid=deletion.uid, value=None, at=self._clock()
            )
            self._done("delete", namespace, name)
            if 200 <= status < 300:
                if deletion.note is not None:
                    self._note(deletion.note)
                if self._metrics is not None:
                    self._metrics.deletions.inc()
                log.info(
                    "pod %s/%s of policy %s stayed unschedulable past its timeout: deleted, "
                    "so its owner recreates it with the next unit open",
                    namespace,
                    name,
                    deletion.policy,
                )
        else:
            self._refused("delete", namespace, name, _refusal(status, answer))

    async def _status(self, write: StatusWrite) -> None:
        namespace, name = write.namespace, write.name
        status, answer = await self._request(
            "PATCH",
            f"{POLICIES}/namespaces/{_quote(namespace)}/resourcepolicies/{_quote(name)}/status",
            body=write.patch,
            content_type="application/merge-patch+json",
        )
        if 200 <= status < 300:
            key = (namespace, name)
            now = self._clock()
            self.memory.statuses[key] = _Sent(uid=write.uid, value=write.status, at=now)
            self.memory.status_at[key] = now
            self._done("status", namespace, name)
            if self._metrics is not None:
                self._metrics.status_writes.inc()
            if not write.valid:
                message = next(
                    (
                        c.get("message")
                        for c in write.status.get("conditions") or ()
                        if isinstance(c, dict) and c.get("type") == "Accepted"
                    ),
                    "",
                )
                log.warning("resource policy %s/%s is refused: %s", namespace, name, message)
        elif status == 404:
            log.debug("resource policy %s/%s is gone before its status", namespace, name)
        else:
            self._refused("status", namespace, name, _refusal(status, answer))
