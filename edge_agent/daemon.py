"""``edge-agent run``: the agent's parts wired together, from settings to a running daemon.

The parts and who owns them:

* the tunnel client (``tunnel_client``): the one outbound session, and the ``session_tasks``
  the other parts hang on it;
* the local API (``local_api``): health, metrics and ``/status``, with one section per part;
* the node status reporter (``node_status``): vitals over the tunnel, plus each part's numbers;
* the kube proxy (``kubecache``, ``[kube]``): with a kubeconfig upstream it starts first,
  before the other parts load, so node components get their API server as early as possible;
  with the tunnel upstream inside the task group, since it waits for the first session;
* device twins (``twins``, ``twin_link``, ``[twins]``): the MQTT service on the broker and its
  sync link to the cloud over the tunnel;
* cluster mode (``cluster``, ``[cluster]``): the built-in tunnel target ``kube-apiserver``,
  the agent's own reads of the member API server (``GetJson``) and the ``cluster.*`` status
  source that uses them; the hub's works (``cluster.works``, kept under
  ``<data>/cluster/works``) and the ``fleet`` stream that brings them and renews the lease;
  with ``[cluster.gateway]``, the built-in targets ``service/...`` of the cloud's gateway.

Each part's modules are imported only when its feature is on (issue 18). All run as named
tasks of one task group until SIGTERM or SIGINT stops the tunnel client,
which drains its session first. :func:`check_startable` refuses, before anything starts,
settings that cannot run (exit 2); :class:`StartError` is a daemon that could not start (exit 1).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import importlib
import logging
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import TYPE_CHECKING

import prometheus_client
from aiohttp import web

from daemon_support import kubeconfig, systemd
from edge_agent import config
from edge_agent.identity import Identity, NotJoinedError
from edge_agent.settings import AgentSettings, NodeStatusSettings

if TYPE_CHECKING:
    # Each part's modules load only when its feature is on (issue 18: a part switched off
    # costs neither import time nor memory); see the imports inside the parts below. The
    # tunnel client, the local API and the node status reporter load after a kubeconfig
    # kube proxy serves (``_LATE_MODULES``); tests/unit/agent/test_lazy_parts.py
    # keeps it so.
    from edge_agent.cluster import ApiServerTarget, MemberApi
    from edge_agent.cluster.elastic.service import ElasticPart
    from edge_agent.cluster.elastic.settings import ElasticSettings
    from edge_agent.cluster.fleet_link import FleetLink
    from edge_agent.cluster.gateway.service import GatewayPart
    from edge_agent.cluster.gateway.settings import GatewaySettings
    from edge_agent.cluster.settings import ClusterSettings
    from edge_agent.cluster.status import ClusterStatusSource
    from edge_agent.cluster.works import WorkApplier, WorkSettings
    from edge_agent.kubecache import KubeProxy
    from edge_agent.kubecache.upstream import Upstream
    from edge_agent.node_status import NodeStatusReporter
    from edge_agent.tunnel_client import TunnelClient
    from edge_agent.twin_link import CloudTwinLink
    from edge_agent.twins import TwinMqttService

log = logging.getLogger("edge_agent.daemon")

_LATE_MODULES = ("edge_agent.tunnel_client", "edge_agent.node_status", "edge_agent.local_api")
"""What every agent runs but a kube proxy does not need: imported after the proxy serves."""


class StartError(Exception):
    """The agent cannot start (exit 1); the message says why and what to do."""


LocalApiHook = Callable[[web.Application, "TwinMqttService | None"], None]
"""Adds routes to the local API before it starts (test launchers only; nothing in the daemon
itself uses it)."""


def check_startable(settings: AgentSettings) -> None:
    """Refuse settings the daemon cannot run with; ConfigError says what is unusable.

    Checked before anything starts, so a bad data dir, kubeconfig or ``[twins]`` password
    file is one line and exit 2, not a daemon that fails later.
    """
    if settings.data_dir.exists() and not settings.data_dir.is_dir():
        raise config.ConfigError(
            f"the data dir {settings.data_dir} is not a folder: give the agent's data folder"
            " (--data-dir, or data_dir in the config)"
        )
    if settings.kube.enabled and settings.kube.upstream == "kubeconfig":
        try:
            kubeconfig.load_kubeconfig(
                settings.kube.kubeconfig, context=settings.kube.context or None, allow_insecure=True
            )
        except kubeconfig.KubeconfigError as error:
            raise config.ConfigError(
                f"[kube] kubeconfig {settings.kube.kubeconfig} is unusable: {error}"
            ) from None
    if settings.twins.enabled:
        try:
            settings.twins.secrets()
            # OpenSSL reads the certificate and key (a corrupt file is ssl.SSLError, an
            # OSError) without loading cryptography, which the identity parses lazily.
            Identity.load(settings.data_dir).client_ssl_context()
        except (OSError, ValueError, NotJoinedError) as error:
            raise config.ConfigError(f"[twins] cannot start: {error}") from None
    if settings.cluster is not None:
        _check_cluster_startable(settings.cluster, settings)


def _check_cluster_startable(cluster: ClusterSettings, settings: AgentSettings) -> None:
    from edge_agent.cluster import credentials as cluster_credentials  # noqa: PLC0415 - lazy

    try:
        cluster_credentials.load(cluster)
    except cluster_credentials.CredentialsError as error:
        raise config.ConfigError(f"[cluster] cannot start: {error}") from None
    try:
        identity = Identity.load(settings.data_dir)
    except (NotJoinedError, OSError, ValueError):
        return  # not joined yet: the tunnel client says so and waits for a join
    if identity.kind != "cluster":
        raise config.ConfigError(
            f"[cluster] cannot start: this agent joined as {identity.kind} {identity.name!r}; "
            "a cluster agent joins with a token made by `tunnel-server token create --kind "
            "cluster --name NAME` (or remove [cluster] to run as a node)"
        )


@dataclasses.dataclass
class _KubeSection:
    """The ``kube`` section of /status, whether or not the proxy is serving yet."""

    enabled: bool
    proxy: KubeProxy | None = None

    def status(self) -> dict[str, object]:
        if self.proxy is None:
            return {"enabled": self.enabled, "serving": False}
        return {"enabled": True, "serving": True, **self.proxy.status()}


@dataclasses.dataclass
class _TwinsPart:
    """Device twins (``[twins]``): the service on the broker and its sync over the tunnel."""

    service: TwinMqttService
    sync: CloudTwinLink

    @classmethod
    def start(
        cls,
        settings: AgentSettings,
        client: TunnelClient,
        registry: prometheus_client.CollectorRegistry,
    ) -> _TwinsPart:
        """Wire the service and its sync; the sync runs as the tunnel's ``twins`` task."""
        # Here, not at the top: an agent without [twins] never loads MQTT or the twin store.
        from edge_agent.model_link import CloudModelLink  # noqa: PLC0415
        from edge_agent.twin_link import CloudTwinLink  # noqa: PLC0415
        from edge_agent.twins import TwinMqttService  # noqa: PLC0415
        from edge_agent.twins.models import ReceivedModels  # noqa: PLC0415
        from edge_agent.twins.mqtt_service import MqttVersionCollector  # noqa: PLC0415
        from edge_agent.twins.outbox import OutboxCollector  # noqa: PLC0415

        service_settings = config.twins_settings(
            settings.twins,
            data_dir=settings.data_dir,
            node_name=Identity.load(settings.data_dir).name,
        )
        service_settings.data_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        sync = CloudTwinLink()
        service = TwinMqttService(settings=service_settings, sender=sync)
        sync.attach(service)
        client.session_tasks["twins"] = sync.run_session
        # Device models from the cloud (docs/device-models.md §5): loaded before the service
        # runs, so onboarding after a restart knows them; updated live over the tunnel.
        received = ReceivedModels(
            folder=service_settings.data_dir / "models", registry=service.twins.models
        )
        received.load()
        client.session_tasks["models"] = CloudModelLink(received).run_session
        registry.register(OutboxCollector(service.outbox))
        registry.register(MqttVersionCollector(service))
        return cls(service=service, sync=sync)

    def status(self) -> dict[str, object]:
        """The ``twins`` section of /status."""
        return {
            "enabled": True,
            "ready": self.service.ready.is_set(),
            "mqtt_version": self.service.mqtt_version,
            "origin": self.service.origin,
            "devices": len(self.service.twins.device_ids()),
            "outbox": self.service.outbox.size,
            "sync": self.sync.status(),
        }

    def report(self) -> dict[str, object]:
        """``twins.*`` in node status reports (a few numbers that change rarely)."""
        return {
            "devices": len(self.service.twins.device_ids()),
            "outbox": self.service.outbox.size,
            "synced": self.sync.connected,
        }

    def device_ids(self) -> list[str]:
        return self.service.twins.device_ids()

    def twin(self, device_id: str) -> dict[str, object] | None:
        """The edge replica of one twin and its delta, for the local API."""
        record = self.service.twins.device(device_id)
        if record is None:
            return None
        twin = record.replica.twin
        return {"device": device_id, **twin.to_json(), "delta": twin.delta()}

    async def mark_ready(self, ready: dict[str, bool]) -> None:
        await self.service.ready.wait()
        ready["twins"] = True


@dataclasses.dataclass
class _ClusterPart:
    """Cluster mode (``[cluster]``): the ``kube-apiserver`` target, ``GetJson``, the status."""

    target: ApiServerTarget
    api: MemberApi
    source: ClusterStatusSource
    applier: WorkApplier
    fleet: FleetLink
    elastic: ElasticPart | None = None
    gateway: GatewayPart | None = None
    version: str | None = None

    @classmethod
    def start(
        cls,
        settings: ClusterSettings,
        client: TunnelClient,
        registry: prometheus_client.CollectorRegistry,
        *,
        data_dir: Path,
        works: WorkSettings,
        elastic: ElasticSettings,
        gateway: GatewaySettings,
    ) -> _ClusterPart:
        """Wire the target and the ``fleet`` stream into the tunnel client (API client: ``run``)."""
        # Here, not at the top: a node agent never loads cluster mode (issue 18).
        from edge_agent.cluster import TARGET, ApiServerMetrics, ApiServerTarget, MemberApi  # noqa: PLC0415
        from edge_agent.cluster import credentials as cluster_credentials  # noqa: PLC0415
        from edge_agent.cluster.fleet_link import FleetLink  # noqa: PLC0415
        from edge_agent.cluster.status import ClusterStatusSource  # noqa: PLC0415
        from edge_agent.cluster.works import WorkApplier  # noqa: PLC0415

        credentials = cluster_credentials.load(settings)
        target = ApiServerTarget(
            settings=settings, credentials=credentials, metrics=ApiServerMetrics(registry)
        )
        client.builtin_targets[TARGET] = target.serve
        api = MemberApi(credentials=credentials, settings=settings)
        source = ClusterStatusSource(get_json=api.get_json, interval=settings.interval)
        # The works live on disk and are applied whether or not the cloud is reachable; the
        # fleet stream only brings changes (and renews the lease) while a session lives.
        applier = WorkApplier(api=api, state_dir=data_dir / "cluster" / "works", settings=works)
        fleet = FleetLink(applier, inventory=source.inventory, healthy=lambda: source.healthy)
        client.session_tasks["fleet"] = fleet.run_session
        part = cls(target=target, api=api, source=source, applier=applier, fleet=fleet)
        if elastic.enabled:
            from edge_agent.cluster.elastic.service import ElasticPart  # noqa: PLC0415

            part.elastic = ElasticPart(
                api=api,
                settings=elastic,
                state_dir=data_dir / "cluster" / "elastic",
                registry=registry,
                namespace=cluster_credentials.own_namespace(settings),
            )
        if gateway.enabled:
            from edge_agent.cluster.gateway.service import GatewayPart  # noqa: PLC0415
            from edge_agent.cluster.gateway.target import PREFIX as GATEWAY_PREFIX  # noqa: PLC0415

            # Its own member API client (opened by its task): two more long watches.
            part.gateway = GatewayPart(
                credentials=credentials, cluster=settings, settings=gateway, registry=registry
            )
            client.builtin_prefixes[GATEWAY_PREFIX] = part.gateway.serve
            fleet.ready = part.gateway  # its ready-endpoint counts go with the fleet lease
        return part

    def status(self) -> dict[str, object]:
        """The ``cluster`` section of /status."""
        return {
            **self.target.status(),
            "version": self.version,
            "fleet": self.fleet.status(),
            **({"elastic": self.elastic.status()} if self.elastic is not None else {}),
            **({"gateway": self.gateway.status()} if self.gateway is not None else {}),
        }

    def start_tasks(
        self, group: asyncio.TaskGroup, ready: dict[str, bool], status: NodeStatusSettings
    ) -> list[asyncio.Task[None]]:
        """The readiness probe, the status collector and the work applier, as named tasks."""
        probe = self.mark_ready(ready, retry=status.retry_delay)
        tasks = [
            group.create_task(probe, name="agent.cluster-ready"),
            group.create_task(self.source.run(), name="agent.cluster-status"),
            group.create_task(self.applier.run(), name="agent.cluster-works"),
        ]
        if self.elastic is not None:
            tasks.append(group.create_task(self.elastic.run(), name="agent.cluster-elastic"))
        if self.gateway is not None:
            tasks.append(group.create_task(self.gateway.run(), name="agent.cluster-gateway"))
        return tasks

    async def mark_ready(self, ready: dict[str, bool], *, retry: float) -> None:
        """Ready once the member API server answered ``/version`` with our credentials."""
        from edge_agent.cluster import MemberApiError  # noqa: PLC0415 - cluster mode only

        while True:
            try:
                answer = await self.api.get_json("/version")
            except MemberApiError as error:
                log.warning("member API server not usable yet: %s", error)
                await asyncio.sleep(retry)
                continue
            if isinstance(answer, dict):
                self.version = str(answer.get("gitVersion", ""))[:64] or None
            log.info("member API server %s reached (%s)", self.api.server, self.version)
            ready["cluster"] = True
            return


@contextlib.asynccontextmanager
async def _kube_proxy(
    settings: AgentSettings,
    registry: prometheus_client.CollectorRegistry,
    client: TunnelClient | None,
) -> AsyncIterator[KubeProxy | None]:
    """The kube proxy of ``[kube]`` (None when disabled), until the block exits.

    ``client`` is the tunnel client the tunnel upstream rides (None for a kubeconfig one).
    """
    kube = settings.kube
    if not kube.enabled:
        yield None
        return
    # Here, not at the top: an agent without [kube] never loads the proxy and its cache.
    from edge_agent.kubecache import open_direct_upstream, serve_kube_proxy  # noqa: PLC0415
    from edge_agent.tunnel_upstream import open_tunnel_upstream  # noqa: PLC0415

    proxy_settings = kube.proxy_settings(settings.data_dir)
    upstream: contextlib.AbstractAsyncContextManager[Upstream]
    if kube.upstream == "tunnel":
        if client is None:
            raise ValueError("the tunnel upstream needs the tunnel client")
        upstream = open_tunnel_upstream(client, open_timeout=proxy_settings.connect_timeout)
    else:
        upstream = open_direct_upstream(
            kube.kubeconfig,
            context=kube.context or None,
            server=kube.server or None,
            connect_timeout=proxy_settings.connect_timeout,
        )
    async with (
        upstream as reached,
        serve_kube_proxy(proxy_settings, reached, registry=registry) as proxy,
    ):
        yield proxy


def _extra_sources(
    kube: _KubeSection, twins: _TwinsPart | None, cluster: _ClusterPart | None
) -> dict[str, Callable[[], dict[str, object]]]:
    """What each part adds to the node status reports (``cache.*``, ``twins.*``...)."""
    sources: dict[str, Callable[[], dict[str, object]]] = {}
    if kube.enabled:
        sources["cache"] = kube.status
    if twins is not None:
        sources["twins"] = twins.report
    if cluster is not None:
        from edge_agent.cluster.status import SOURCE_NAME  # noqa: PLC0415 - cluster mode only

        sources[SOURCE_NAME] = cluster.source.metrics
    return sources


def _local_api(
    registry: prometheus_client.CollectorRegistry,
    *,
    client: TunnelClient,
    kube: _KubeSection,
    reporter: NodeStatusReporter,
    twins: _TwinsPart | None,
    cluster: _ClusterPart | None,
) -> web.Application:
    from edge_agent.local_api import READY_KEY, create_app  # noqa: PLC0415 - _LATE_MODULES

    sources = {"tunnel": client.status, "kube": kube.status, "node_status": reporter.status}
    if twins is not None:
        sources["twins"] = twins.status
    if cluster is not None:
        sources["cluster"] = cluster.status
    app = create_app(registry=registry, sources=sources, twins=twins)
    if kube.enabled:
        app[READY_KEY]["kube_proxy"] = False
    if twins is not None:
        app[READY_KEY]["twins"] = False
    if cluster is not None:
        app[READY_KEY]["cluster"] = False
    return app


async def _serve_local_api(app: web.Application, settings: AgentSettings) -> web.AppRunner:
    """Start the local API; StartError when its port is taken (another agent, most likely)."""
    runner = web.AppRunner(app, handle_signals=False)
    await runner.setup()
    host, port = settings.local_api.host, settings.local_api.port
    try:
        await web.TCPSite(runner, host, port).start()
    except OSError as error:
        await runner.cleanup()
        reason = os.strerror(error.errno).lower() if error.errno else str(error)
        raise StartError(
            f"cannot serve the local API on {host}:{port}: {reason}; is another edge-agent"
            " running? Stop it, or choose another --local-api-port ([local_api] port)"
        ) from None
    log.info("local API listening", extra={"kv": {"address": f"{host}:{port}"}})
    return runner


def _systemd_watchdog() -> systemd.Watchdog | None:
    """The watchdog systemd armed (None without one); StartError for a value it never sets."""
    try:
        return systemd.watchdog_from_environment()
    except systemd.WatchdogError as error:
        raise StartError(str(error)) from None


async def run(settings: AgentSettings, *, local_api_hook: LocalApiHook | None = None) -> None:
    """Run the agent until SIGTERM or SIGINT; tells systemd when it is ready and stopping."""
    watchdog = _systemd_watchdog()  # first: a watchdog setting systemd never writes stops us
    registry = prometheus_client.CollectorRegistry()
    # The operator's first look (memory, CPU, open files, GC): Linux /proc and the interpreter.
    prometheus_client.ProcessCollector(registry=registry)
    prometheus_client.GCCollector(registry=registry)
    prometheus_client.PlatformCollector(registry=registry)
    kube = _KubeSection(enabled=settings.kube.enabled)
    async with contextlib.AsyncExitStack() as early:
        if settings.kube.enabled and settings.kube.upstream != "tunnel":
            # A kubeconfig upstream needs nothing else of the agent: node components get
            # their API server (from the cache when offline) before anything else loads,
            # and the rest is imported on a worker thread while the proxy answers them.
            kube.proxy = await early.enter_async_context(_kube_proxy(settings, registry, None))
            await asyncio.to_thread(_import_late_modules, settings)
        from edge_agent.tunnel_client import TunnelClient  # noqa: PLC0415 - _LATE_MODULES

        client = TunnelClient(
            data_dir=settings.data_dir,
            settings=settings.tunnel,
            join_settings=settings.join,
            registry=registry,
        )
        await _run_parts(
            settings, registry, client, kube, watchdog=watchdog, local_api_hook=local_api_hook
        )


def _import_late_modules(settings: AgentSettings) -> None:
    """Import what the other parts need (on a worker thread: the loop keeps serving).

    Only an import: the parts are built on the loop afterwards, as without a kube proxy.
    """
    names = list(_LATE_MODULES)
    if settings.twins.enabled:
        names += ["edge_agent.twin_link", "edge_agent.model_link", "edge_agent.twins.mqtt_service"]
    if settings.cluster is not None:
        names += ["edge_agent.cluster.works", "edge_agent.cluster.fleet_link"]
    for name in names:
        importlib.import_module(name)


async def _run_parts(
    settings: AgentSettings,
    registry: prometheus_client.CollectorRegistry,
    client: TunnelClient,
    kube: _KubeSection,
    *,
    watchdog: systemd.Watchdog | None,
    local_api_hook: LocalApiHook | None,
) -> None:
    """Every part but an already serving kube proxy, until the tunnel client stops."""
    from edge_agent.local_api import READY_KEY  # noqa: PLC0415 - _LATE_MODULES
    from edge_agent.node_status import NodeStatusReporter  # noqa: PLC0415 - _LATE_MODULES

    twins = _TwinsPart.start(settings, client, registry) if settings.twins.enabled else None
    cluster = (
        _ClusterPart.start(
            settings.cluster,
            client,
            registry,
            data_dir=settings.data_dir,
            works=settings.works,
            elastic=settings.elastic,
            gateway=settings.gateway,
        )
        if settings.cluster is not None
        else None
    )
    extra_sources = _extra_sources(kube, twins, cluster)
    reporter = NodeStatusReporter(
        client=client,
        settings=settings.node_status,
        data_dir=settings.data_dir,
        extra_sources=extra_sources or None,
    )
    app = _local_api(
        registry, client=client, kube=kube, reporter=reporter, twins=twins, cluster=cluster
    )
    if local_api_hook is not None:
        local_api_hook(app, twins.service if twins is not None else None)
    runner = await _serve_local_api(app, settings)
    if cluster is not None:
        await cluster.api.open()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, client.stop)
    try:
        async with asyncio.TaskGroup() as group:
            tunnel = group.create_task(client.run(), name="agent.tunnel")
            status = group.create_task(reporter.run(), name="agent.node-status")
            helpers = [status]
            if twins is not None:
                helpers += [
                    group.create_task(twins.service.run(), name="agent.twins"),
                    group.create_task(twins.mark_ready(app[READY_KEY]), name="agent.twins-ready"),
                ]
            if cluster is not None:
                helpers += cluster.start_tasks(group, app[READY_KEY], settings.node_status)
            async with contextlib.AsyncExitStack() as late:
                if kube.enabled and kube.proxy is None:
                    # Inside the group: in tunnel mode the proxy waits for the first session.
                    late_proxy = _kube_proxy(settings, registry, client)
                    kube.proxy = await late.enter_async_context(late_proxy)
                if kube.proxy is not None:
                    app[READY_KEY]["kube_proxy"] = True
                systemd.notify("READY=1")
                # WATCHDOG=1 from this loop until the helpers are cancelled, after the drain.
                watchdog_task = systemd.feed_watchdog(watchdog)
                helpers.append(group.create_task(watchdog_task, name="agent.watchdog"))
                await tunnel  # ends on SIGTERM, after draining
            for helper in helpers:
                helper.cancel()  # the reporter and the twins run until told otherwise
    finally:
        systemd.notify("STOPPING=1")
        log.info("stopped")
        if cluster is not None:
            cluster.target.close()
            await cluster.api.close()
        await runner.cleanup()
