"""The NodePool autoscaler's driver: runs ``fleet_model.elastic.autoscaler`` against the member.

The decisions are the sans-IO ``Autoscaler``'s; this module feeds it the informers' caches
and the outcomes of what it asked for, carries out its actions, and reports.

Rules:

* ``run()`` waits until the three informers (NodePools, Nodes, Pods, run by the caller) have
  listed once, uncordons the nodes a previous run left cordoned (the autoscaler's cordon mark,
  ``drain.CORDON_ANNOTATION``: a restart mid-drain must not keep a node cordoned for ever),
  then steps: at once, and again on any informer change, on a provider's or drain's outcome,
  at the step's ``wake_at``, and at least every ``resync_seconds``. Two steps are at least
  ``min_step_interval_seconds`` apart, so a burst of changes is one step. A change of the pods
  alone starts no step when it changes nothing the autoscaler reads of them
  (``_pods_seen``): no pod is pending-unschedulable now or at the last step, and the pods
  running on nodes (name, uid, node, generation) are the same; with no node in any pool, only
  pending pods count. The step would decide the same; the wake-up time and the resync stand.
  (Pod status updates, and pods bound while the pools have no nodes, made most steps: each a
  synchronous pass over every pod on the agent's loop.)
* The nodes are handed to the autoscaler as the informer has them (the informer's objects are
  shared: never changed). A Ready node still carrying a not-ready taint is the core's to judge
  (``autoscaler.NOT_READY_TAINTS``).
* Each NodePool is parsed on its own (``parse_node_pool``). A pool the parser refuses gets
  condition ``Accepted=False`` (reason InvalidSpec, the problems as message) and one Warning
  Event per generation, and is left out of the step: its nodes are not touched, every other
  pool goes on. A valid pool gets ``Accepted=True``.
* Actions run concurrently in named tasks of the TaskGroup ``run()`` owns: ``CreateNodes`` and
  ``DeleteNode`` through the pool's provider (at most ``max_provider_calls`` at once),
  ``CordonAndDrain`` through ``drain.Drainer`` (at most ``max_drains`` at once), ``Uncordon``
  with a few tries. Each outcome (``CreateResult``, ``DeleteResult``, ``DrainResult``) goes to
  the next step's ``events=``. Every action reports before the autoscaler's own deadline for
  it: a provider call and its wait for a slot get the pool's provider timeout plus half of
  ``outcome_grace_seconds``; a drain waits for a slot at most the difference between the
  autoscaler's ``drain_timeout_seconds`` and the drain's own ``timeout_seconds``. A provider
  that raises (which the protocol says it does not) costs one FAILED outcome, logged with its
  traceback, not the loop.
* Each ``Reason`` of a step becomes an Event on its Pod, Node or NodePool (Warning when the
  reason is a warning) through the ``EventRecorder``, from a queue of at most
  ``max_queued_events`` (oldest dropped) written by its own task, so a slow API server never
  holds a step. A deleted node also gets a ``NodeDeleted`` Event on its pool.
* A pool's status (``pool_status_document`` plus ``Accepted``) is written to the NodePool's
  status subresource (merge PATCH, the pool's uid as precondition) only when it differs from
  what the informer holds and from what was last written, by its own task, at most one round
  of writes per ``status_interval_seconds``. What was written is trusted for
  ``resync_seconds``; after that a status someone else changed is written again.
* Metrics (``edge_agent_elastic_autoscaler_*``, into ``registry`` when one is given):
  steps and their duration, nodes created and deleted by pool, provider failures by pool,
  operation and outcome, drains blocked by pool, invalid pools.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import math
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import prometheus_client

from edge_agent.cluster.elastic.drain import Drainer, DrainSettings, cordoned_by_us
from edge_agent.cluster.elastic.events import EventRecorder
from edge_agent.cluster.elastic.providers import NodeProvider
from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.member_watch import Informer
from fleet_model.cluster import next_condition, put_condition
from fleet_model.elastic.autoscaler import (
    MAX_MESSAGE,
    Action,
    Autoscaler,
    AutoscalerSettings,
    CordonAndDrain,
    CreateNodes,
    CreateResult,
    DeleteNode,
    DeleteResult,
    DrainResult,
    Event,
    Outcome,
    PoolStatus,
    Reason,
    pool_status_document,
)
from fleet_model.elastic.nodepool import (
    API_VERSION,
    KIND,
    POOL_LABEL,
    CommandProvider,
    NodePool,
    parse_node_pool,
)
from fleet_model.problems import SpecError

__all__ = ["DriverSettings", "NodePoolAutoscaler"]

log = logging.getLogger("edge_agent.cluster.elastic.autoscaler")

_METRIC = "edge_agent_elastic_autoscaler"
_NODEPOOLS = f"/apis/{API_VERSION}/nodepools"
_MERGE = "application/merge-patch+json"
_T = TypeVar("_T")
_IDLE_WATCH_SECONDS = 3600.0
"""Seconds one ``wait_changed`` of a watcher task lasts before it is simply made again."""


@dataclass(frozen=True, kw_only=True)
class DriverSettings:
    """How the driver carries out the autoscaler's decisions; unit and reason per field."""

    max_provider_calls: int = 4
    """Provider creates and deletes in flight at once over all pools: a command provider is a
    process each and clouds rate-limit their APIs; four lets two pools grow while two nodes
    are deleted."""

    max_drains: int = 4
    """Nodes drained at once (each with up to ``drain.max_parallel_evictions`` evictions):
    the autoscaler starts at most ten removals per step."""

    drain: DrainSettings = field(default_factory=DrainSettings)
    """Bounds of one drain (its ``timeout_seconds`` must be below the autoscaler's
    ``drain_timeout_seconds``, so a drain always reports before the autoscaler gives up)."""

    min_step_interval_seconds: float = 0.2
    """Seconds between the starts of two steps at least: 500 pods created at once are 1,500
    informer changes (created, scheduled-false, ...); one step a fifth of a second sees them
    all and costs one pass."""

    resync_seconds: float = 60.0
    """Seconds between steps when nothing changed and the autoscaler asked for no wake-up:
    catches a clock jump; also how long a written status is trusted (a status someone else
    changed is written again after it)."""

    status_interval_seconds: float = 1.0
    """Seconds between two rounds of status writes: a pool whose figures flap writes at most
    once a second, and a burst of changes to many pools is one round."""

    max_queued_events: int = 1000
    """Events waiting to be written; beyond, the oldest is dropped (and logged). The
    autoscaler gives at most 100 pod reasons per step plus its pool and node reasons."""

    uncordon_attempts: int = 5
    """Tries of an uncordon that fails (the API server unreachable) before it is given up
    (logged; the node stays cordoned until a restart's recovery)."""

    uncordon_retry_seconds: float = 2.0
    """Seconds before the second try of an uncordon, doubling per try (2+4+8+16 s)."""

    def __post_init__(self) -> None:
        for name, count in (
            ("max_provider_calls", self.max_provider_calls),
            ("max_drains", self.max_drains),
            ("max_queued_events", self.max_queued_events),
            ("uncordon_attempts", self.uncordon_attempts),
        ):
            if count < 1:
                raise ValueError(f"{name} must be at least 1, not {count}")
        for name, seconds in (
            ("resync_seconds", self.resync_seconds),
            ("status_interval_seconds", self.status_interval_seconds),
            ("uncordon_retry_seconds", self.uncordon_retry_seconds),
        ):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds}")
        if not 0 <= self.min_step_interval_seconds < math.inf:
            raise ValueError(
                f"min_step_interval_seconds must be >= 0, not {self.min_step_interval_seconds}"
            )


_PodSeen = tuple[str, str, str, str, object]
"""A pod running on a node as a step sees it: namespace, name, uid, node, generation."""


def _pending_unschedulable(pod: Mapping[str, Any]) -> bool:
    """The core's own test (``autoscaler`` rules): unbound, not deleting, Unschedulable."""
    if _dict(pod.get("spec")).get("nodeName") or _meta(pod).get("deletionTimestamp"):
        return False
    conditions = _dict(pod.get("status")).get("conditions")
    return any(
        _dict(c).get("type") == "PodScheduled"
        and _dict(c).get("status") == "False"
        and _dict(c).get("reason") == "Unschedulable"
        for c in (conditions if isinstance(conditions, list) else [])
    )


def _pods_seen(
    pods: Mapping[tuple[str, str], Mapping[str, Any]], *, any_pool_node: bool
) -> frozenset[_PodSeen] | None:
    """What a step reads of the pods, or None when a pod is pending-unschedulable (step).

    Running pods count with what a step uses of them (their node; their requests, which only
    a spec change, so a new generation, changes); without pool nodes there is nothing to
    scale down, so only pending pods matter.
    """
    seen: set[_PodSeen] = set()
    for (namespace, name), pod in pods.items():
        node = _dict(pod.get("spec")).get("nodeName")
        if not node:
            if _pending_unschedulable(pod):
                return None
            continue
        if any_pool_node and _dict(pod.get("status")).get("phase") not in {"Succeeded", "Failed"}:
            meta = _meta(pod)
            seen.add((namespace, name, str(meta.get("uid", "")), str(node), meta.get("generation")))
    return frozenset(seen)


class _Metrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.steps = prometheus_client.Counter(
            f"{_METRIC}_steps", "Autoscaler steps taken", registry=registry
        )
        self.step_seconds = prometheus_client.Histogram(
            f"{_METRIC}_step_seconds",
            "Seconds one autoscaler step took (parsing pools and deciding)",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0),
            registry=registry,
        )
        self.nodes_created = prometheus_client.Counter(
            f"{_METRIC}_nodes_created",
            "Nodes providers reported created",
            ["pool"],
            registry=registry,
        )
        self.nodes_deleted = prometheus_client.Counter(
            f"{_METRIC}_nodes_deleted",
            "Nodes providers reported deleted",
            ["pool"],
            registry=registry,
        )
        self.provider_failures = prometheus_client.Counter(
            f"{_METRIC}_provider_failures",
            "Provider creates and deletes that failed or timed out",
            ["pool", "operation", "outcome"],
            registry=registry,
        )
        self.drains_blocked = prometheus_client.Counter(
            f"{_METRIC}_drains_blocked",
            "Drains that did not finish (a PodDisruptionBudget, a timeout); the node was kept",
            ["pool"],
            registry=registry,
        )
        self.invalid_pools = prometheus_client.Gauge(
            f"{_METRIC}_invalid_pools", "NodePools whose spec was refused", registry=registry
        )


@dataclass(kw_only=True, slots=True)
class _Written:
    uid: str
    status: dict[str, Any]
    at: float
    """Monotonic time of the write."""


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(obj.get("metadata"))


def _conditions(status: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The stored conditions that look like conditions (at most the CRD's 16)."""
    found = status.get("conditions")
    return [dict(c) for c in (found if isinstance(found, list) else [])[:16] if isinstance(c, dict)]


def _generation(obj: Mapping[str, Any]) -> int | None:
    generation = _meta(obj).get("generation")
    return generation if isinstance(generation, int) else None


def _reference(
    api_version: str, kind: str, obj: Mapping[str, Any] | None, name: str, namespace: str = ""
) -> dict[str, Any]:
    """What the recorder needs of an object (informers' LIST items carry no kind)."""
    meta = _meta(obj or {})
    metadata = {"name": name, "namespace": namespace, "uid": meta.get("uid", "")}
    return {"apiVersion": api_version, "kind": kind, "metadata": metadata}


class NodePoolAutoscaler:
    """The NodePool autoscaler of one member cluster (see the module's rules)."""

    def __init__(
        self,
        *,
        api: MemberApi,
        pools: Informer,
        nodes: Informer,
        pods: Informer,
        providers: NodeProvider,
        events: EventRecorder,
        settings: DriverSettings | None = None,
        core: AutoscalerSettings | None = None,
        registry: prometheus_client.CollectorRegistry | None = None,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.settings = settings or DriverSettings()
        self._core_settings = core or AutoscalerSettings()
        if self.settings.drain.timeout_seconds >= self._core_settings.drain_timeout_seconds:
            raise ValueError(
                f"the drain's timeout_seconds ({self.settings.drain.timeout_seconds:g}) must be "
                f"below the autoscaler's drain_timeout_seconds "
                f"({self._core_settings.drain_timeout_seconds:g})"
            )
        self._api = api
        self._pools = pools
        self._nodes = nodes
        self._pods = pods
        self._providers = providers
        self._recorder = events
        self._clock = clock
        self._core = Autoscaler(self._core_settings)
        self._drainer = Drainer(api=api, pods=pods, settings=self.settings.drain)
        self._metrics = _Metrics(registry or prometheus_client.CollectorRegistry())
        self._wake = asyncio.Event()
        self._changed: set[str] = set()
        """Which informers changed since the last step (``pools``, ``nodes``, ``pods``)."""
        self._seen: frozenset[_PodSeen] | None = None
        """``_pods_seen`` at the last step (None: a pod was pending, or no step yet)."""
        self.skipped = 0
        """Wake-ups on a change of the pods alone that needed no step (for tests, the bench)."""
        self._outcomes: list[Event] = []
        self._parsed: dict[str, NodePool] = {}
        self._invalid: dict[str, tuple[str, int | None]] = {}
        """Pool name -> (uid, generation) of the refused spec already reported."""
        self._queue: collections.deque[tuple[dict[str, Any], str, str, str]] = collections.deque(
            maxlen=self.settings.max_queued_events
        )
        self._queued = asyncio.Event()
        self._dropping = False
        self.events_dropped = 0
        """Events dropped because ``max_queued_events`` were waiting already."""
        self._pending_status: dict[str, tuple[str, dict[str, Any]]] = {}
        self._written: dict[str, _Written] = {}
        self._status_due = asyncio.Event()
        self._provider_slots = asyncio.Semaphore(self.settings.max_provider_calls)
        self._drain_slots = asyncio.Semaphore(self.settings.max_drains)
        self._group: asyncio.TaskGroup | None = None
        self.steps = 0
        """Steps taken so far (for tests and status)."""

    # ------------------------------------------------------------ the loop

    async def run(self) -> None:
        """Step until cancelled (see the module's rules)."""
        for informer in (self._pools, self._nodes, self._pods):
            await informer.synced.wait()
        log.info("informers synced; the NodePool autoscaler starts")
        async with asyncio.TaskGroup() as group:
            self._group = group
            for what, informer in (
                ("pools", self._pools),
                ("nodes", self._nodes),
                ("pods", self._pods),
            ):
                group.create_task(
                    self._watch(what, informer), name=f"elastic.autoscaler.watch.{what}"
                )
            group.create_task(self._write_events(), name="elastic.autoscaler.events")
            group.create_task(self._write_statuses(), name="elastic.autoscaler.status")
            await self._recover_cordons()
            await self._loop()

    async def _loop(self) -> None:
        settings = self.settings
        last = -math.inf
        while True:
            gap = last + settings.min_step_interval_seconds - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            self._wake.clear()  # a change from here on wakes the next step
            self._changed.clear()
            last = time.monotonic()
            wake_at = self._step()
            delay = settings.resync_seconds
            if wake_at is not None:
                delay = min(delay, max(0.0, wake_at - self._clock()))
            await self._until_step_needed(time.monotonic() + delay, last)

    async def _until_step_needed(self, deadline: float, last: float) -> None:
        """Until ``deadline`` (monotonic), or a change that may change the step's decision.

        ``last``: when the last step started (monotonic): a change of the pods alone is
        compared no earlier than a step would start, and comparisons (a pass over the pods,
        cheaper than a step) are as far apart, so a burst is compared once.
        """
        while (left := deadline - time.monotonic()) > 0:
            if not self._wake.is_set():
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(left):
                        await self._wake.wait()
            if not self._wake.is_set():
                return  # the deadline
            if self._outcomes or self._changed != {"pods"} or self._seen is None:
                return
            # Pods alone changed: throttled like steps, then compared with the last step's.
            gap = last + self.settings.min_step_interval_seconds - time.monotonic()
            if gap > 0:
                await asyncio.sleep(gap)
            if self._outcomes or self._changed != {"pods"}:
                return
            self._wake.clear()
            self._changed.clear()
            last = time.monotonic()  # comparisons too are one per interval at most
            if self._pods_now() != self._seen:
                return
            self.skipped += 1

    def _pods_now(self) -> frozenset[_PodSeen] | None:
        nodes = self._nodes.items().values()
        any_pool_node = any(POOL_LABEL in _dict(_meta(node).get("labels")) for node in nodes)
        return _pods_seen(self._pods.items(), any_pool_node=any_pool_node)

    async def _watch(self, what: str, informer: Informer) -> None:
        revision = informer.revision
        while True:
            seen = await informer.wait_changed(revision, _IDLE_WATCH_SECONDS)
            if seen > revision:
                revision = seen
                self._changed.add(what)
                self._wake.set()

    def _step(self) -> float | None:
        started = time.monotonic()
        now = self._clock()
        outcomes, self._outcomes = self._outcomes, []
        self._seen = self._pods_now()  # what this step reads (no await until it has)
        pools = self._read_pools(now)
        decision = self._core.step(
            now=now,
            pools=pools,
            nodes=self._nodes.items().values(),
            pods=self._pods.items().values(),
            events=outcomes,
        )
        self.steps += 1
        self._metrics.steps.inc()
        for action in decision.actions:
            self._start(action)
        for reason in decision.reasons:
            self._queue_reason(reason)
        self._want_statuses(decision.pools, now)
        self._metrics.step_seconds.observe(time.monotonic() - started)
        if decision.actions:
            log.info(
                "step %d: %s",
                self.steps,
                ", ".join(type(action).__name__ for action in decision.actions),
            )
        return decision.wake_at

    # ------------------------------------------------------------ pools

    def _read_pools(self, now: float) -> Sequence[NodePool]:
        parsed: dict[str, NodePool] = {}
        invalid: dict[str, tuple[str, int | None]] = {}
        for (_, name), doc in sorted(self._pools.items().items()):
            try:
                pool = parse_node_pool(doc)
            except SpecError as error:
                invalid[name] = self._refuse(name, doc, error, now)
                continue
            parsed[pool.name] = pool
        self._invalid = invalid
        self._parsed = parsed
        self._metrics.invalid_pools.set(len(invalid))
        for name in [n for n in self._written if n not in parsed and n not in invalid]:
            del self._written[name]  # a deleted pool
        return list(parsed.values())

    def _refuse(
        self, name: str, doc: Mapping[str, Any], error: SpecError, now: float
    ) -> tuple[str, int | None]:
        """Report a refused spec (once per generation); the pool's (uid, generation)."""
        meta = _meta(doc)
        uid, generation = str(meta.get("uid", "")), _generation(doc)
        message = str(error)[:MAX_MESSAGE]
        if self._invalid.get(name) != (uid, generation):
            log.warning("NodePool %s refused: %s", name, message)
            self._enqueue(
                _reference(API_VERSION, KIND, doc, name), "Warning", "InvalidSpec", message
            )
        current = _dict(doc.get("status"))
        accepted = next_condition(
            _conditions(current),
            type_="Accepted",
            status="False",
            reason="InvalidSpec",
            message=message,
            now=now,
            observed_generation=generation,
        )
        mine = sum(
            1
            for node in self._nodes.items().values()
            if _dict(_meta(node).get("labels")).get(POOL_LABEL) == name
        )
        wanted = {
            "nodes": mine,
            "creating": 0,
            "removing": 0,
            "conditions": put_condition(_conditions(current), accepted),
        }
        self._want(name, uid, wanted, current)
        return uid, generation

    def _want_statuses(self, statuses: Sequence[PoolStatus], now: float) -> None:
        for status in statuses:
            doc = self._pools.get("", status.name)
            pool = self._parsed.get(status.name)
            if doc is None or pool is None:
                continue
            current = _dict(doc.get("status"))
            accepted = next_condition(
                _conditions(current),
                type_="Accepted",
                status="True",
                reason="Valid",
                message="the spec is valid",
                now=now,
                observed_generation=_generation(doc),
            )
            wanted = pool_status_document(
                pool,
                status,
                conditions=put_condition(_conditions(current), accepted),
                now=now,
            )
            self._want(status.name, str(_meta(doc).get("uid", "")), wanted, current)

    def _want(
        self, name: str, uid: str, wanted: dict[str, Any], current: Mapping[str, Any]
    ) -> None:
        if wanted == current:
            self._pending_status.pop(name, None)
            return
        written = self._written.get(name)
        if (
            written is not None
            and written.uid == uid
            and written.status == wanted
            and time.monotonic() - written.at < self.settings.resync_seconds
        ):
            return  # written already; the informer has not shown it yet
        self._pending_status[name] = (uid, wanted)
        self._status_due.set()

    async def _write_statuses(self) -> None:
        while True:
            await self._status_due.wait()
            self._status_due.clear()
            pending, self._pending_status = self._pending_status, {}
            for name, (uid, wanted) in sorted(pending.items()):
                await self._write_status(name, uid, wanted)
            await asyncio.sleep(self.settings.status_interval_seconds)

    async def _write_status(self, name: str, uid: str, wanted: dict[str, Any]) -> None:
        path = f"{_NODEPOOLS}/{quote(name, safe='')}/status"
        # The uid makes the API server refuse (409) a write to a pool re-created meanwhile.
        body = {"metadata": {"uid": uid}, "status": wanted} if uid else {"status": wanted}
        try:
            status, answer = await self._api.request("PATCH", path, body=body, content_type=_MERGE)
        except MemberApiError as error:
            log.warning("status of NodePool %s not written: %s", name, error)
            return
        if status == 200:
            self._written[name] = _Written(uid=uid, status=wanted, at=time.monotonic())
        elif status not in (404, 409):
            message = str(_dict(answer).get("message", ""))[:300]
            log.warning("status of NodePool %s not written: HTTP %s: %s", name, status, message)

    # ------------------------------------------------------------ events

    def _enqueue(self, obj: dict[str, Any], type_: str, reason: str, message: str) -> None:
        if len(self._queue) == self._queue.maxlen:
            self.events_dropped += 1
            if not self._dropping:  # once per backlog, not once per event
                self._dropping = True
                log.warning("more than %d events waiting; dropping the oldest", self._queue.maxlen)
        self._queue.append((obj, type_, reason, message))
        self._queued.set()

    def _queue_reason(self, reason: Reason) -> None:
        if reason.kind == "NodePool":
            obj = self._pools.get("", reason.name)
            ref = _reference(API_VERSION, KIND, obj, reason.name)
        elif reason.kind == "Node":
            ref = _reference("v1", "Node", self._nodes.get("", reason.name), reason.name)
        else:
            pod = self._pods.get(reason.namespace, reason.name)
            ref = _reference("v1", reason.kind, pod, reason.name, reason.namespace)
        type_ = "Warning" if reason.warning else "Normal"
        self._enqueue(ref, type_, reason.reason, reason.message)

    async def _write_events(self) -> None:
        while True:
            await self._queued.wait()
            self._queued.clear()
            while self._queue:
                obj, type_, reason, message = self._queue.popleft()
                self._dropping = self._dropping and bool(self._queue)
                try:
                    await self._recorder.emit(obj, type=type_, reason=reason, message=message)
                except ValueError:
                    log.exception("event %s not written", reason)

    # ------------------------------------------------------------ actions

    def _start(self, action: Action) -> None:
        group = self._group
        assert group is not None  # noqa: S101 - steps run only inside run()'s group
        if isinstance(action, CreateNodes):
            pool = self._parsed[action.pool]
            group.create_task(
                self._create(pool, action.count), name=f"elastic.autoscaler.create.{pool.name}"
            )
        elif isinstance(action, DeleteNode):
            group.create_task(
                self._delete(action.pool, action.node),
                name=f"elastic.autoscaler.delete.{action.node}",
            )
        elif isinstance(action, CordonAndDrain):
            group.create_task(
                self._drain(action.pool, action.node),
                name=f"elastic.autoscaler.drain.{action.node}",
            )
        else:  # Uncordon
            group.create_task(
                self._uncordon(action.node), name=f"elastic.autoscaler.uncordon.{action.node}"
            )

    def _report(self, outcome: Event) -> None:
        self._outcomes.append(outcome)
        self._wake.set()

    def _provider_seconds(self, pool: NodePool) -> float:
        """How long a provider call may take with its wait for a slot (see the rules)."""
        settings = self._core_settings
        if isinstance(pool.provider, CommandProvider):
            timeout = float(pool.provider.timeout_seconds)
        else:
            timeout = settings.kwok_timeout_seconds
        return timeout + settings.outcome_grace_seconds / 2

    async def _call(
        self, pool: NodePool, what: str, call: Callable[[], Awaitable[_T]], failed: _T, late: _T
    ) -> _T:
        """``call()`` in a provider slot, bounded in time; ``failed``/``late`` if it raised/hung."""
        seconds = self._provider_seconds(pool)
        try:
            async with asyncio.timeout(seconds):
                async with self._provider_slots:
                    return await call()
        except TimeoutError:
            log.warning("pool %s: %s gave no answer within %g s", pool.name, what, seconds)
            return late
        except Exception:  # a provider's bug must cost one call, not the loop
            log.exception("pool %s: %s raised", pool.name, what)
            return failed

    async def _create(self, pool: NodePool, count: int) -> None:
        seconds = self._provider_seconds(pool)
        result = await self._call(
            pool,
            f"create of {count} nodes",
            lambda: self._providers.create(pool, count),
            CreateResult(pool=pool.name, outcome=Outcome.FAILED, message="the provider raised"),
            CreateResult(
                pool=pool.name,
                outcome=Outcome.TIMED_OUT,
                message=f"the provider gave no answer within {seconds:g} s",
            ),
        )
        if result.outcome is Outcome.CREATED:
            self._metrics.nodes_created.labels(pool.name).inc(len(result.nodes))
        else:
            self._metrics.provider_failures.labels(pool.name, "create", result.outcome.value).inc()
        self._report(result)

    async def _delete(self, name: str, node: str) -> None:
        pool = self._parsed.get(name)
        if pool is None:
            # The pool was deleted between the step and now: its nodes are no longer ours.
            message = f"pool {name} is gone"
            self._report(DeleteResult(node=node, outcome=Outcome.FAILED, message=message))
            return
        seconds = self._provider_seconds(pool)
        result = await self._call(
            pool,
            f"delete of {node}",
            lambda: self._providers.delete(pool, node),
            DeleteResult(node=node, outcome=Outcome.FAILED, message="the provider raised"),
            DeleteResult(
                node=node,
                outcome=Outcome.TIMED_OUT,
                message=f"the provider gave no answer within {seconds:g} s",
            ),
        )
        if result.outcome is Outcome.DELETED:
            self._metrics.nodes_deleted.labels(name).inc()
            self._enqueue(
                _reference(API_VERSION, KIND, self._pools.get("", name), name),
                "Normal",
                "NodeDeleted",
                f"node {node} drained and deleted",
            )
        else:
            self._metrics.provider_failures.labels(name, "delete", result.outcome.value).inc()
        self._report(result)

    async def _drain(self, pool: str, node: str) -> None:
        wait = self._core_settings.drain_timeout_seconds - self.settings.drain.timeout_seconds
        try:
            async with asyncio.timeout(wait):
                await self._drain_slots.acquire()
        except TimeoutError:
            message = f"no drain slot within {wait:g} s ({self.settings.max_drains} drains busy)"
            result = DrainResult(node=node, drained=False, message=message)
        else:
            try:
                result = await self._drainer.drain(node)
            finally:
                self._drain_slots.release()
        if not result.drained:
            self._metrics.drains_blocked.labels(pool).inc()
        self._report(result)

    async def _uncordon(self, node: str) -> None:
        delay = self.settings.uncordon_retry_seconds
        for attempt in range(1, self.settings.uncordon_attempts + 1):
            why = await self._drainer.uncordon(node)
            if not why:
                return
            if attempt == self.settings.uncordon_attempts:
                log.error("node %s stays cordoned: %s", node, why)
                return
            log.warning("%s; trying again in %g s", why, delay)
            await asyncio.sleep(delay)
            delay *= 2

    async def _recover_cordons(self) -> None:
        """Uncordon what a previous run cordoned and did not finish (see the rules)."""
        for (_, name), node in sorted(self._nodes.items().items()):
            if cordoned_by_us(node) and _dict(node.get("spec")).get("unschedulable") is True:
                log.info("node %s was left cordoned by an earlier run; uncordoning it", name)
                why = await self._drainer.uncordon(name)
                if why:
                    log.warning("%s", why)
