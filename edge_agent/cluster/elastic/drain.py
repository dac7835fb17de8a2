"""Cordon, drain and uncordon a node, as ``kubectl drain`` does, for the NodePool autoscaler.

The autoscaler decides ``CordonAndDrain(node)`` and later, if the drain failed, ``Uncordon``;
``Drainer.drain`` does the first and returns the ``DrainResult`` the autoscaler's next step
reads, ``Drainer.uncordon`` the second.

Rules:

* Cordon is a merge PATCH of the Node: ``spec.unschedulable: true`` plus the annotation
  ``elastic.edgefleet.io/cordoned-by: edgefleet-elastic``, sent with the resourceVersion just
  read (a 409 reads again, at most ``write_attempts`` times). A node that is unschedulable
  already (an operator cordoned it) is left as it is and not marked. Uncordon clears
  ``spec.unschedulable`` and the annotation only on a node that carries the annotation, so an
  operator's own cordon is never undone by a failed drain. A node that is gone is no error.
* Drain evicts every pod bound to the node (``spec.nodeName``), listed from the API server
  after the cordon (not from the informer, which may not have a pod bound a moment before
  yet), except DaemonSet-owned pods and mirror (static) pods, which live and die with their
  node.
  Pods already terminating are not evicted but waited for. Each eviction is a ``policy/v1``
  Eviction POSTed to ``/api/v1/namespaces/NS/pods/NAME/eviction`` with the pod's ``uid`` as a
  precondition (a pod re-created under the same name is not evicted in its place); 200/201
  is evicted, 404 and 409 (the pod is gone or replaced) count as gone. At most
  ``max_parallel_evictions`` evictions run at once.
* 429 is a PodDisruptionBudget refusing (its message and its ``causes`` name the budget and
  its numbers). The eviction is tried again every ``eviction_retry_seconds`` while the
  budget's refusal is younger than ``pdb_wait_seconds`` (a budget that allows one disruption
  at a time lets the next pod go once the first one's replacement is Ready); after that the
  drain ends with ``drained=False`` and the API server's message. Any other answer ends it at
  once the same way. No new eviction starts after the drain has failed.
* After the evictions, the drain waits for every evicted pod (by uid) to be gone from the
  informer: a pod in its grace period still runs on the node.
* The whole drain, cordon included, is bounded by ``timeout_seconds``; past it the result
  says what was left. ``drain`` never raises for the API server's failures; only
  cancellation propagates.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from edge_agent.cluster.member_api import MemberApi, MemberApiError
from edge_agent.cluster.member_watch import Informer
from fleet_model.elastic.autoscaler import MAX_MESSAGE, DrainResult

__all__ = [
    "CORDONED_BY",
    "CORDON_ANNOTATION",
    "DrainSettings",
    "Drainer",
    "cordoned_by_us",
    "evictable",
    "eviction_body",
    "refusal_message",
]

log = logging.getLogger("edge_agent.cluster.elastic.drain")

CORDON_ANNOTATION = "elastic.edgefleet.io/cordoned-by"
"""Marks a node the autoscaler cordoned (so only its own cordons are undone)."""
CORDONED_BY = "edgefleet-elastic"
_MERGE = "application/merge-patch+json"
_PAGE = 500
"""Pods per page when listing a node's pods (kubectl's page size)."""
_MAX_PAGES = 21
"""Pages read at most: a node takes at most 10,000 pods (the NodePool shape's bound)."""


@dataclass(frozen=True, kw_only=True)
class DrainSettings:
    """Bounds of one drain; each field says its unit and why its default."""

    timeout_seconds: float = 300.0
    """Seconds one drain may take in all (cordon, evictions, pods gone): pods get 30 s of grace
    by default, so five minutes is ample; must stay below the autoscaler's
    ``drain_timeout_seconds`` (600), so the result always comes before it gives up."""

    pdb_wait_seconds: float = 60.0
    """Seconds a PodDisruptionBudget may keep refusing one pod's eviction before the drain gives
    up (the node is then uncordoned and tried again after a cool-down). kubectl waits for ever;
    a scale-down is not worth a node that stays cordoned."""

    eviction_retry_seconds: float = 5.0
    """Seconds between two tries of an eviction a budget refused: kubectl drain's interval."""

    max_parallel_evictions: int = 8
    """Evictions in flight at once per drain: kubectl sends them all at once; eight keeps a
    node of 110 pods quick without a burst of writes at the API server."""

    write_attempts: int = 3
    """Tries of a cordon or uncordon whose resourceVersion another writer moved (409): the
    node's heartbeat writes it every few seconds."""

    def __post_init__(self) -> None:
        for name, seconds in (
            ("timeout_seconds", self.timeout_seconds),
            ("eviction_retry_seconds", self.eviction_retry_seconds),
        ):
            if not 0 < seconds < math.inf:
                raise ValueError(f"{name} must be a positive number of seconds, not {seconds}")
        if not 0 <= self.pdb_wait_seconds < math.inf:
            raise ValueError(f"pdb_wait_seconds must be >= 0, not {self.pdb_wait_seconds}")
        for name, count in (
            ("max_parallel_evictions", self.max_parallel_evictions),
            ("write_attempts", self.write_attempts),
        ):
            if count < 1:
                raise ValueError(f"{name} must be at least 1, not {count}")


# ---------------------------------------------------------------- pure parts


def _dict(value: object) -> Mapping[str, Any]:
    return value if isinstance(value, dict) else {}


def _meta(obj: Mapping[str, Any]) -> Mapping[str, Any]:
    return _dict(obj.get("metadata"))


def _pod_name(pod: Mapping[str, Any]) -> str:
    meta = _meta(pod)
    return f"{meta.get('namespace', '')}/{meta.get('name', '')}"


def _node_bound(pod: Mapping[str, Any]) -> bool:
    """A DaemonSet or mirror (static) pod: the autoscaler's own rule (it lives with its node)."""
    if "kubernetes.io/config.mirror" in _dict(_meta(pod).get("annotations")):
        return True
    owners = _meta(pod).get("ownerReferences")
    return any(
        _dict(owner).get("controller") is True and _dict(owner).get("kind") == "DaemonSet"
        for owner in (owners if isinstance(owners, list) else [])
    )


def evictable(pods: Iterable[Mapping[str, Any]], node: str) -> list[Mapping[str, Any]]:
    """The pods a drain of ``node`` removes (bound to it, not node-bound), by namespace/name."""
    chosen = [
        pod
        for pod in pods
        if _dict(pod.get("spec")).get("nodeName") == node
        and isinstance(_meta(pod).get("name"), str)
        and not _node_bound(pod)
    ]
    return sorted(chosen, key=_pod_name)


def eviction_body(pod: Mapping[str, Any]) -> dict[str, Any]:
    """The policy/v1 Eviction of ``pod``, only for this very pod (uid precondition)."""
    meta = _meta(pod)
    body: dict[str, Any] = {
        "apiVersion": "policy/v1",
        "kind": "Eviction",
        "metadata": {"name": meta.get("name"), "namespace": meta.get("namespace")},
    }
    if isinstance(meta.get("uid"), str):
        body["deleteOptions"] = {"preconditions": {"uid": meta["uid"]}}
    return body


def refusal_message(answer: object) -> str:
    """What a refused eviction's Status says: its message and its causes' (the budget's name)."""
    status = _dict(answer)
    parts = [str(status["message"])[:300]] if isinstance(status.get("message"), str) else []
    causes = _dict(status.get("details")).get("causes")
    for cause in (causes if isinstance(causes, list) else [])[:4]:
        text = _dict(cause).get("message")
        if isinstance(text, str) and text:
            parts.append(text[:300])
    return " ".join(parts) or "no Status message"


def cordoned_by_us(node: Mapping[str, Any]) -> bool:
    """``node`` carries the autoscaler's cordon mark."""
    return _dict(_meta(node).get("annotations")).get(CORDON_ANNOTATION) == CORDONED_BY


# ---------------------------------------------------------------- the drainer


class _DrainFailedError(Exception):
    """A pod could not be evicted: the message says which and why."""


class Drainer:
    """Cordons, drains and uncordons nodes of the member cluster (see the module's rules)."""

    def __init__(
        self, *, api: MemberApi, pods: Informer, settings: DrainSettings | None = None
    ) -> None:
        self._api = api
        self._pods = pods
        self.settings = settings or DrainSettings()

    # ------------------------------------------------------------ cordon

    async def cordon(self, node: str) -> str:
        """Mark ``node`` unschedulable; "" when done, else why not."""
        return await self._write_node(node, cordon=True)

    async def uncordon(self, node: str) -> str:
        """Undo the autoscaler's own cordon of ``node``; "" when done or not needed."""
        return await self._write_node(node, cordon=False)

    async def _write_node(self, node: str, *, cordon: bool) -> str:
        what = "cordon" if cordon else "uncordon"
        for _ in range(self.settings.write_attempts):
            try:
                status, answer = await self._patch_node(node, cordon=cordon)
            except MemberApiError as error:
                return f"{what} of {node}: {error}"
            if status == 200:
                log.info("node %s: %s", node, "cordoned" if cordon else "uncordoned")
                return ""
            if status is None or status == 404:
                return ""  # nothing to do, or the node is gone (nothing lands on it any more)
            if status != 409:
                return f"{what} of {node}: HTTP {status}: {refusal_message(answer)}"
        return f"{what} of {node}: the node kept changing ({self.settings.write_attempts} tries)"

    async def _patch_node(self, node: str, *, cordon: bool) -> tuple[int | None, object]:
        """Read the node and PATCH it if needed: the answer, or (None, None) if not needed."""
        path = f"/api/v1/nodes/{quote(node, safe='')}"
        status, answer = await self._api.request("GET", path)
        if status != 200:
            return status, answer
        current = _dict(answer)
        if cordon and _dict(current.get("spec")).get("unschedulable") is True:
            return None, None  # cordoned already (by an operator, or by us before a restart)
        if not cordon and not cordoned_by_us(current):
            return None, None  # not our cordon: an operator's stays
        patch = {
            "metadata": {
                # Another writer in between makes this a 409 and the caller reads again.
                "resourceVersion": _meta(current).get("resourceVersion"),
                "annotations": {CORDON_ANNOTATION: CORDONED_BY if cordon else None},
            },
            "spec": {"unschedulable": True if cordon else None},
        }
        return await self._api.request("PATCH", path, body=patch, content_type=_MERGE)

    # ------------------------------------------------------------ drain

    async def drain(self, node: str) -> DrainResult:
        """Cordon ``node`` and evict its pods; the result for the autoscaler's next step."""
        evicted: dict[tuple[str, str], str] = {}
        try:
            async with asyncio.timeout(self.settings.timeout_seconds):
                why = await self.cordon(node)
                if why:
                    return _result(node, drained=False, message=why)
                await self._evict_all(node, evicted)
                await self._wait_gone(evicted)
        except _DrainFailedError as error:
            log.warning("node %s: drain stopped: %s", node, error)
            return _result(node, drained=False, message=str(error))
        except TimeoutError:
            left = len(self._still_there(evicted))
            why = f"drain of {node} did not finish within {self.settings.timeout_seconds:g} s"
            log.warning("%s (%d evicted pods still there)", why, left)
            return _result(
                node, drained=False, message=f"{why}; {left} evicted pods still on the node"
            )
        log.info("node %s drained: %d pods evicted", node, len(evicted))
        return _result(node, drained=True, message=f"{len(evicted)} pods evicted")

    async def _listed(self, node: str) -> list[Mapping[str, Any]]:
        """The pods bound to ``node`` as the API server lists them now (paged, bounded)."""
        selector = quote(f"spec.nodeName={node}", safe="")
        items: list[Mapping[str, Any]] = []
        token = ""
        for _ in range(_MAX_PAGES):
            path = f"/api/v1/pods?fieldSelector={selector}&limit={_PAGE}"
            if token:
                path += "&continue=" + quote(token, safe="")
            try:
                listing = await self._api.get_json(path)
            except MemberApiError as error:
                raise _DrainFailedError(f"cannot list the pods of {node}: {error}") from None
            page = _dict(listing).get("items")
            if not isinstance(page, list):
                raise _DrainFailedError(f"cannot list the pods of {node}: not a list")
            items.extend(item for item in page if isinstance(item, dict))
            token = str(_dict(_dict(listing).get("metadata")).get("continue") or "")
            if not token:
                return items
        raise _DrainFailedError(f"node {node} has more than {_MAX_PAGES * _PAGE} pods")

    async def _evict_all(self, node: str, evicted: dict[tuple[str, str], str]) -> None:
        # Listed after the cordon, not taken from the informer: a pod bound a moment before
        # the cordon may not be in the cache yet, and a node is deleted after this.
        pods = evictable(await self._listed(node), node)
        slots = asyncio.Semaphore(self.settings.max_parallel_evictions)
        failed: list[str] = []
        # The evictions never raise (they note failures in ``failed``), so the group ends
        # when the last one has.
        async with asyncio.TaskGroup() as group:
            for pod in pods:
                meta = _meta(pod)
                key = (str(meta.get("namespace", "")), str(meta["name"]))
                evicted[key] = str(meta.get("uid", ""))
                if meta.get("deletionTimestamp"):
                    continue  # terminating already: only waited for
                group.create_task(
                    self._evict(pod, slots, failed), name=f"elastic.drain.evict.{node}"
                )
        if failed:
            more = f" (and {len(failed) - 1} more pods refused)" if len(failed) > 1 else ""
            raise _DrainFailedError(failed[0] + more)

    async def _evict(
        self, pod: Mapping[str, Any], slots: asyncio.Semaphore, failed: list[str]
    ) -> None:
        meta = _meta(pod)
        namespace, name = str(meta.get("namespace", "")), str(meta["name"])
        path = (
            f"/api/v1/namespaces/{quote(namespace, safe='')}/pods/{quote(name, safe='')}/eviction"
        )
        body = eviction_body(pod)
        refused_since: float | None = None
        async with slots:
            while not failed:
                try:
                    status, answer = await self._api.request("POST", path, body=body)
                except MemberApiError as error:
                    failed.append(f"eviction of {namespace}/{name}: {error}")
                    return
                if status in (200, 201, 404, 409):
                    return
                message = refusal_message(answer)
                if status != 429:
                    failed.append(f"eviction of {namespace}/{name}: HTTP {status}: {message}")
                    return
                now = time.monotonic()
                refused_since = now if refused_since is None else refused_since
                if now + self.settings.eviction_retry_seconds - refused_since > (
                    self.settings.pdb_wait_seconds
                ):
                    failed.append(f"eviction of {namespace}/{name} refused: {message}")
                    return
                log.info("eviction of %s/%s refused, trying again: %s", namespace, name, message)
                await asyncio.sleep(self.settings.eviction_retry_seconds)

    def _still_there(self, evicted: Mapping[tuple[str, str], str]) -> list[str]:
        left: list[str] = []
        for (namespace, name), uid in evicted.items():
            pod = self._pods.get(namespace, name)
            if pod is not None and str(_meta(pod).get("uid", "")) == uid:
                left.append(f"{namespace}/{name}")
        return left

    async def _wait_gone(self, evicted: Mapping[tuple[str, str], str]) -> None:
        """Until no evicted pod is in the informer (the caller's timeout bounds it)."""
        while True:
            revision = self._pods.revision
            if not self._still_there(evicted):
                return
            await self._pods.wait_changed(revision, self.settings.timeout_seconds)


def _result(node: str, *, drained: bool, message: str) -> DrainResult:
    text = message if len(message) <= MAX_MESSAGE else message[: MAX_MESSAGE - 3] + "..."
    return DrainResult(node=node, drained=drained, message=text)
