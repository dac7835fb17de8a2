"""Pods of autonomous edge nodes are not evicted by the cloud while their node is cut off.

Two halves, both applying ``autonomy_rules.plan`` (``tunnel-server run --autonomy``, which
needs ``--kube-upstream`` for the cloud cluster's credentials):

* a mutating admission webhook at ``/webhooks/autonomy`` (AdmissionReview v1) for pods created
  already bound (``spec.nodeName`` set: static pods' mirrors are skipped, DaemonSet pods too);
  ``tunnel-server autonomy-webhook`` prints its MutatingWebhookConfiguration;
* a controller that follows the cloud's Nodes (``cloud_nodes``) and every bound Pod, and
  patches live pods of autonomous nodes (the common case: the scheduler binds a pod after it
  was created, which no admission webhook sees), and restores pods whose node lost the label.

The webhook has no side effects and answers only from the request and the cloud's Nodes, so
it needs no authentication of its caller.
"""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import TYPE_CHECKING, Any

import aiohttp
import prometheus_client
from aiohttp import web

from tunnel_server.app_keys import NODES_SYNCED_KEY, REGISTRY_KEY, SETTINGS_KEY, UPSTREAM_KEY
from tunnel_server.fleet import autonomy_rules as rules
from tunnel_server.fleet import nodes_watch
from tunnel_server.fleet.cloud_nodes import CloudNode, CloudNodes, node_from_json
from tunnel_server.fleet.kube_watch import ListWatch
from tunnel_server.replicas.keys import singleton
from tunnel_server.web.bodies import BodyError, read_json_object
from tunnel_server.web.errors import error_response

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from tunnel_server.kube.upstream import KubeUpstream
    from tunnel_server.settings import AutonomySettings, CloudWatchSettings

log = logging.getLogger("tunnel_server.fleet.autonomy")

_NODE_NAME = re.compile(
    r"(?=.{1,253}$)[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
)
"""A Node name: an RFC 1123 DNS subdomain, as the API server validates it."""

PodKey = tuple[str, str]
"""(namespace, name)"""


class AutonomyMetrics:
    def __init__(self, registry: prometheus_client.CollectorRegistry) -> None:
        self.patches = prometheus_client.Counter(
            "tunnel_server_autonomy_pod_patches",
            "Live pods patched by the autonomy controller, by result",
            ["result"],
            registry=registry,
        )
        self.webhook = prometheus_client.Counter(
            "tunnel_server_autonomy_webhook_reviews",
            "Pod creations reviewed by the autonomy webhook, by outcome",
            ["outcome"],
            registry=registry,
        )


def _trim(pod: dict[str, Any]) -> dict[str, Any]:
    """What the rules read of a pod: a fraction of the object, kept for every bound pod."""
    metadata = pod.get("metadata") or {}
    annotations = metadata.get("annotations") or {}
    kept = {
        k: v
        for k, v in annotations.items()
        if k in rules.ORIGINAL_ANNOTATIONS.values() or k == rules.MIRROR_ANNOTATION
    }
    return {
        "metadata": {
            "name": metadata.get("name"),
            "namespace": metadata.get("namespace"),
            "resourceVersion": metadata.get("resourceVersion"),
            "annotations": kept,
            "ownerReferences": [
                {"kind": ref.get("kind")} for ref in metadata.get("ownerReferences") or []
            ],
            "deletionTimestamp": metadata.get("deletionTimestamp"),
        },
        "spec": {
            "nodeName": (pod.get("spec") or {}).get("nodeName"),
            "tolerations": (pod.get("spec") or {}).get("tolerations") or [],
        },
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def _key(pod: dict[str, Any]) -> PodKey:
    metadata = pod.get("metadata") or {}
    return str(metadata.get("namespace")), str(metadata.get("name"))


class AutonomyController:
    """Keeps live pods' tolerations in line with their node's autonomy."""

    def __init__(
        self,
        *,
        upstream: KubeUpstream,
        nodes: CloudNodes,
        settings: AutonomySettings,
        watch_settings: CloudWatchSettings,
        metrics: AutonomyMetrics,
    ) -> None:
        self._upstream = upstream
        self._nodes = nodes
        self._settings = settings
        self._watch_settings = watch_settings
        self._metrics = metrics
        self._pods: dict[PodKey, dict[str, Any]] = {}
        self._by_node: dict[str, set[PodKey]] = {}
        self._queue: asyncio.Queue[PodKey] = asyncio.Queue()
        self._queued: set[PodKey] = set()
        self._warned: set[tuple[str, str]] = set()
        nodes.listen(self._node_changed)

    # ---------------------------------------------------------------- WatchSink of pods

    def replace(self, items: list[dict[str, Any]]) -> None:
        self._pods.clear()
        self._by_node.clear()
        for pod in items:
            self._put(_trim(pod))

    def apply(self, event: str, obj: dict[str, Any]) -> None:
        key = _key(obj)
        self._drop(key)
        if event != "DELETED":
            self._put(_trim(obj))

    def _put(self, pod: dict[str, Any]) -> None:
        key = _key(pod)
        self._pods[key] = pod
        node = pod["spec"]["nodeName"]
        if node:
            self._by_node.setdefault(node, set()).add(key)
        self._enqueue(key)

    def _drop(self, key: PodKey) -> None:
        old = self._pods.pop(key, None)
        if old is not None:
            keys = self._by_node.get(old["spec"]["nodeName"])
            if keys is not None:
                keys.discard(key)
                if not keys:
                    del self._by_node[old["spec"]["nodeName"]]

    def _node_changed(self, name: str) -> None:
        for key in self._by_node.get(name, ()):
            self._enqueue(key)

    def _enqueue(self, key: PodKey) -> None:
        if key not in self._queued:
            self._queued.add(key)
            self._queue.put_nowait(key)

    # ---------------------------------------------------------------- work

    async def run(self, nodes_synced: asyncio.Event) -> None:
        watch = ListWatch(
            upstream=self._upstream,
            path="/api/v1/pods",
            sink=self,
            settings=self._watch_settings,
            params={"fieldSelector": "spec.nodeName!="},
        )
        async with asyncio.TaskGroup() as group:
            group.create_task(watch.run(), name="autonomy.pods-watch")
            # Not before both lists arrived: a pod whose node is not yet known would look
            # like one whose node lost the label, and be restored.
            await nodes_synced.wait()
            await watch.synced.wait()
            log.info("autonomy controller following %d bound pods", len(self._pods))
            for index in range(self._settings.patch_concurrency):
                group.create_task(self._worker(), name=f"autonomy.worker-{index}")

    async def _worker(self) -> None:
        while True:
            key = await self._queue.get()
            self._queued.discard(key)
            pod = self._pods.get(key)
            if pod is None:
                continue
            try:
                await self._reconcile(pod)
            except (aiohttp.ClientError, TimeoutError) as error:
                self._metrics.patches.labels("error").inc()
                log.warning("patching pod %s/%s failed: %s", *key, error)

    def autonomy_for(self, node: CloudNode | None) -> rules.Autonomy | None:
        if node is None:
            return None
        autonomy = rules.autonomy_of(node.labels, node.annotations)
        if (
            autonomy is not None
            and autonomy.problem
            and (node.name, autonomy.problem) not in self._warned
        ):
            self._warned.add((node.name, autonomy.problem))
            log.warning("node %s: %s", node.name, autonomy.problem)
        return autonomy

    async def _reconcile(self, pod: dict[str, Any]) -> None:
        node = self._nodes.by_name.get(pod["spec"]["nodeName"])
        change = rules.plan(pod, self.autonomy_for(node))
        if change is None:
            return
        namespace, name = _key(pod)
        url = f"{self._upstream.base_url}/api/v1/namespaces/{namespace}/pods/{name}"
        timeout = aiohttp.ClientTimeout(total=self._watch_settings.request_timeout)
        async with self._upstream.session.patch(
            url,
            data=json.dumps(rules.merge_patch(pod, change)),
            headers={"Content-Type": "application/merge-patch+json"},
            timeout=timeout,
        ) as answer:
            text = await answer.text()
        if answer.status == 200:
            restored = all(v is None for v in change.annotations.values()) and change.annotations
            result = "restored" if restored else "protected"
            self._metrics.patches.labels(result).inc()
            log.info("pod %s/%s %s", namespace, name, result)
        elif answer.status in (404, 409):
            self._metrics.patches.labels("conflict").inc()
        else:
            self._metrics.patches.labels("refused").inc()
            log.warning("patching pod %s/%s: %s %s", namespace, name, answer.status, text[:300])


# -------------------------------------------------------------------- the webhook

WEBHOOK_NODES_KEY = web.AppKey("autonomy_webhook_nodes", CloudNodes)
METRICS_KEY = web.AppKey("autonomy_metrics", AutonomyMetrics)


class ReviewError(ValueError):
    """The body is not an AdmissionReview we can answer."""


def _request_of(review: object) -> dict[str, Any]:
    if not isinstance(review, dict) or review.get("kind") != "AdmissionReview":
        raise ReviewError("expected an AdmissionReview (admission.k8s.io/v1)")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise ReviewError("the AdmissionReview has no request with a uid")
    return request


async def _node(app: web.Application, name: str) -> CloudNode | None:
    """The pod's node from the watch; a GET when the watch has not seen it (yet)."""
    known = app[WEBHOOK_NODES_KEY].by_name.get(name)
    if known is not None or UPSTREAM_KEY not in app:
        return known
    if not _NODE_NAME.fullmatch(name):
        return None  # no Node can have it; and it must never shape the URL we GET
    upstream = app[UPSTREAM_KEY]
    settings = app[SETTINGS_KEY].autonomy
    timeout = aiohttp.ClientTimeout(total=settings.node_lookup_timeout)
    try:
        async with upstream.session.get(
            f"{upstream.base_url}/api/v1/nodes/{name}", timeout=timeout
        ) as answer:
            if answer.status != 200:
                return None
            return node_from_json(await answer.json())
    except (aiohttp.ClientError, TimeoutError, ValueError, KeyError) as error:
        log.info("webhook: node %s not found (%s)", name, error)
        return None


async def webhook(request: web.Request) -> web.Response:
    metrics = request.app[METRICS_KEY]
    settings = request.app[SETTINGS_KEY].autonomy
    try:
        review = await read_json_object(
            request, limit=settings.max_review_bytes, max_depth=settings.max_review_depth
        )
        admission = _request_of(review)
    except BodyError as bad:
        metrics.webhook.labels("bad_request").inc()
        return bad.response()
    except ReviewError as bad:
        metrics.webhook.labels("bad_request").inc()
        return error_response(400, "bad_request", str(bad))
    uid = admission["uid"]
    pod = admission.get("object")
    kind = (admission.get("kind") or {}).get("kind")
    if kind != "Pod" or admission.get("operation") != "CREATE" or not isinstance(pod, dict):
        metrics.webhook.labels("ignored").inc()
        return web.json_response(rules.admission_response(uid, None))
    node_name = (pod.get("spec") or {}).get("nodeName")
    node = await _node(request.app, node_name) if isinstance(node_name, str) and node_name else None
    autonomy = rules.autonomy_of(node.labels, node.annotations) if node else None
    change = rules.plan(pod, autonomy)
    outcome = "protected" if change else "unchanged"
    metrics.webhook.labels(outcome).inc()
    patch = rules.json_patch(pod, change) if change else None
    return web.json_response(rules.admission_response(uid, patch))


def setup(app: web.Application, *, settings: AutonomySettings) -> None:
    """Serve the webhook and run the controller while ``app`` runs (needs ``kube.setup``)."""
    nodes = nodes_watch.shared_nodes(app)
    metrics = AutonomyMetrics(app[REGISTRY_KEY])
    app[WEBHOOK_NODES_KEY] = nodes
    app[METRICS_KEY] = metrics
    app.router.add_post(rules.WEBHOOK_PATH, webhook)

    async def controller(app: web.Application) -> AsyncIterator[None]:
        if UPSTREAM_KEY not in app:
            log.warning("autonomy needs --kube-upstream: the controller does not run")
            yield
            return
        worker = AutonomyController(
            upstream=app[UPSTREAM_KEY],
            nodes=nodes,
            settings=settings,
            watch_settings=app[SETTINGS_KEY].cloud_watch,
            metrics=metrics,
        )
        async with asyncio.TaskGroup() as group:
            synced = app[NODES_SYNCED_KEY]
            # On the leader only with the Kubernetes store: one replica patches the pods.
            task = group.create_task(
                singleton(app, "autonomy.controller", lambda: worker.run(synced)),
                name="autonomy.controller",
            )
            yield
            task.cancel()

    app.cleanup_ctx.append(controller)
