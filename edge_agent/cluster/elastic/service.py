"""``ElasticPart``: the elastic side of a cluster-mode agent, wired together.

Rules:

* Started only with ``[cluster.elastic] enabled = true``. First the CRDs are installed
  (``crds.install_crds``; retried with a back-off of ``_RETRY_INITIAL`` doubling up to
  ``_RETRY_MAX`` seconds, each failure logged with what to fix), then everything else runs
  in one task group until the agent stops.
* One informer per resource, shared: pods, nodes and ResourcePolicies feed the webhook and
  the policy controller; NodePools (and the same pods and nodes) feed the autoscaler. The
  pods informer holds every pod of the cluster (bounded by ``InformerSettings.max_objects``).
* The webhook fails open (``failurePolicy: Ignore``): while the agent is down or not synced,
  pods are created unchanged and the policy controller catches up when it returns.
* ``status()`` is the ``elastic`` part of the agent's /status: informers synced, the webhook
  ready, the last install error.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

import prometheus_client

from edge_agent.cluster.elastic.autoscaler_driver import NodePoolAutoscaler
from edge_agent.cluster.elastic.crds import CrdInstallError, install_crds
from edge_agent.cluster.elastic.events import EventRecorder
from edge_agent.cluster.elastic.policy_controller import PolicyController
from edge_agent.cluster.elastic.providers import CommandNodes, KwokNodes, PoolProviders
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.elastic.webhook import AdmissionWebhook
from edge_agent.cluster.member_api import MemberApi
from edge_agent.cluster.member_watch import Informer, InformerSettings

__all__ = ["ElasticPart"]

log = logging.getLogger("edge_agent.cluster.elastic")

GROUP_PATH = "/apis/elastic.edgefleet.io/v1alpha1"
_RETRY_INITIAL = 2.0
_RETRY_MAX = 60.0


class ElasticPart:
    """ResourcePolicy webhook and controller, NodePool autoscaler (see the module's rules)."""

    def __init__(
        self,
        *,
        api: MemberApi,
        settings: ElasticSettings,
        state_dir: Path,
        registry: prometheus_client.CollectorRegistry | None = None,
        namespace: str | None = None,
        informer_settings: InformerSettings | None = None,
    ) -> None:
        self._api = api
        self._settings = settings
        watch = informer_settings or InformerSettings()
        self.pods = Informer(api, "/api/v1/pods", settings=watch)
        self.nodes = Informer(api, "/api/v1/nodes", settings=watch)
        self.policies = Informer(api, f"{GROUP_PATH}/resourcepolicies", settings=watch)
        self.pools = Informer(api, f"{GROUP_PATH}/nodepools", settings=watch)
        self.webhook = AdmissionWebhook(
            api=api,
            policies=self.policies,
            settings=settings,
            state_dir=state_dir / "webhook",
            pods=self.pods,
            nodes=self.nodes,
            registry=registry,
            namespace=namespace,
        )
        self.events = EventRecorder(api)
        self.controller = PolicyController(
            api=api, pods=self.pods, nodes=self.nodes, policies=self.policies, registry=registry
        )
        self.autoscaler: NodePoolAutoscaler | None = None
        if settings.autoscaler:
            providers = PoolProviders(kwok=KwokNodes(api), command=CommandNodes())
            self.autoscaler = NodePoolAutoscaler(
                api=api,
                pools=self.pools,
                nodes=self.nodes,
                pods=self.pods,
                providers=providers,
                events=self.events,
                registry=registry,
            )
        self.installed = asyncio.Event()
        self.install_error = ""

    async def run(self) -> None:
        """Install the CRDs, then run informers, webhook, controller and autoscaler."""
        if self._settings.install_crds:
            await self._install()
        self.installed.set()
        async with asyncio.TaskGroup() as group:
            informers = [("pods", self.pods), ("nodes", self.nodes), ("policies", self.policies)]
            if self.autoscaler is not None:
                informers.append(("pools", self.pools))
            for name, informer in informers:
                group.create_task(informer.run(), name=f"elastic.informer-{name}")
            group.create_task(self.webhook.run(), name="elastic.webhook")
            group.create_task(self.controller.run(), name="elastic.policy-controller")
            if self.autoscaler is not None:
                group.create_task(self.autoscaler.run(), name="elastic.autoscaler")

    async def _install(self) -> None:
        delay = _RETRY_INITIAL
        while True:
            try:
                await install_crds(self._api)
            except CrdInstallError as error:
                self.install_error = str(error)
                log.warning("elastic CRDs not installed (retrying in %.0f s): %s", delay, error)
                await asyncio.sleep(delay)
                delay = min(delay * 2, _RETRY_MAX)
                continue
            self.install_error = ""
            log.info("elastic CRDs installed")
            return

    def status(self) -> dict[str, object]:
        """The ``elastic`` section of the agent's /status."""
        informers = {
            "pods": self.pods,
            "nodes": self.nodes,
            "policies": self.policies,
            **({"pools": self.pools} if self.autoscaler is not None else {}),
        }
        return {
            "crdsInstalled": self.installed.is_set(),
            "installError": self.install_error or None,
            "webhookReady": self.webhook.ready.is_set(),
            "webhookListenerPid": self.webhook.listener_pid,
            "autoscaler": self.autoscaler is not None,
            "synced": {name: inf.synced.is_set() for name, inf in informers.items()},
        }
