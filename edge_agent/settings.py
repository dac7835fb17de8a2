"""Settings of the edge agent. Every field says its unit and why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.gateway.settings import GatewaySettings
from edge_agent.cluster.settings import ClusterSettings
from edge_agent.cluster.works.settings import WorkSettings
from edge_agent.kubecache.settings import KubeCacheSettings


@dataclass(frozen=True, kw_only=True)
class LocalApiSettings:
    host: str = "127.0.0.1"
    """Loopback only: the local API shows node details and must not be reachable from outside."""

    port: int = 10267
    """Fixed, documented port so node tooling and systemd health checks can find it."""


@dataclass(frozen=True, kw_only=True)
class JoinSettings:
    connect_timeout: float = 10.0
    """Seconds to open the TCP+TLS connection to the server; a site link may be slow, not dead."""

    request_timeout: float = 30.0
    """Seconds for one whole join, poll or renew request, including the answer."""

    wait_approval: float = 600.0
    """Seconds ``join`` waits for an operator's approval before it gives up (it can resume)."""

    min_poll_interval: float = 0.5
    """Floor in seconds on the server's ``retry_after``, so a broken server cannot make us spin."""

    max_poll_interval: float = 30.0
    """Ceiling in seconds on ``retry_after``, so approval is noticed soon after it happens."""

    max_response_bytes: int = 256 * 1024
    """Largest answer read from the server, in bytes; a certificate and the CA fit in 8 KB."""

    renew_fraction: float = 2 / 3
    """Share of a certificate's lifetime after which it is renewed (kubelet uses 70-90 %)."""


@dataclass(frozen=True, kw_only=True)
class TunnelClientSettings:
    targets: dict[str, tuple[str, int]] = field(default_factory=dict)
    """Allow-list of what the cloud may reach through this node: target name -> (host, port).
    Empty by default: nothing is reachable until the operator names it in the config file."""

    backoff_base: float = 1.0
    """Seconds: first reconnect delay ceiling; doubles per failed attempt (full jitter)."""

    backoff_cap: float = 60.0
    """Seconds: the most a reconnect waits. With 10,000 agents and full jitter, a server
    restart sees about 170 reconnects a second at worst, which one process absorbs."""

    reconnect_spread: float = 15.0
    """Seconds over which reconnects spread after a session that lived ``healthy_after``
    drops: the first retry waits a random time up to the next power-of-two multiple of
    ``backoff_base`` (16 s by default). A restarted server otherwise sees its whole fleet within
    one second and wastes TLS handshakes on clients that time out while queued (measured: see
    docs/benchmarks.md). 0 turns it off."""

    healthy_after: float = 30.0
    """Seconds a session must last before the backoff starts again from ``backoff_base``."""

    connect_timeout: float = 15.0
    """Seconds for TCP + TLS + WebSocket upgrade; a satellite uplink takes a few seconds."""

    dial_timeout: float = 5.0
    """Seconds to connect to an allow-listed target before refusing the cloud's stream."""

    drain_grace: float = 10.0
    """Seconds SIGTERM waits for open streams (a kubectl exec, a log follow) to finish."""

    renew_check_interval: float = 3600.0
    """Seconds between checks whether the client certificate is due for renewal."""


@dataclass(frozen=True, kw_only=True)
class KubeSettings:
    enabled: bool = False
    """Off by default: the proxy needs an upstream the operator names (``kubeconfig``); a node
    without Kubernetes components has nothing to cache."""

    upstream: str = "kubeconfig"
    """Where requests go when online: ``kubeconfig`` (an API server this node reaches
    directly, named in ``kubeconfig``) or ``tunnel`` (the cloud's API server through the
    agent's tunnel; no credential on the node, the cloud acts as ``system:node:<name>``)."""

    kubeconfig: Path = field(default_factory=lambda: Path("/etc/edge-agent/kube-upstream.conf"))
    """Kubeconfig of the cloud API server the proxy forwards to (token, client certificate or
    basic auth); its credentials replace whatever the node components send."""

    context: str = ""
    """Kubeconfig context to use; empty means its ``current-context``."""

    server: str = ""
    """Overrides the kubeconfig's server URL (a local relay, or a fault proxy in tests);
    empty keeps the kubeconfig's."""

    cache_dir: Path | None = None
    """Folder of the object cache; None means ``<data_dir>/kubecache``, beside the agent's
    other state, so one folder holds everything that must survive a restart."""

    proxy: KubeCacheSettings = field(default_factory=KubeCacheSettings)
    """Listener, cached components, bounds, timeouts and health thresholds of the proxy."""

    def proxy_settings(self, data_dir: Path) -> KubeCacheSettings:
        """The proxy's settings with the cache folder resolved against ``data_dir``."""
        return replace(self.proxy, cache_dir=self.cache_dir or data_dir / "kubecache")


@dataclass(frozen=True, kw_only=True)
class TwinsConfig:
    """The ``[twins]`` table: device twins over the local mosquitto (docs/mqtt.md)."""

    enabled: bool = False
    """Off by default: twins need a mosquitto with the dynamic-security plugin and its admin
    password, which only the operator can provide."""

    broker_host: str = "127.0.0.1"
    """The local mosquitto that devices and the agent share."""

    broker_port: int = 1883
    """MQTT port of that broker (1883 plain; the TLS listener is 8883 by convention)."""

    broker_tls: bool = False
    """True: every agent connection to the broker (its session and the dynamic-security admin)
    uses TLS, trusting only ``broker_ca_file``. Off by default: a broker on loopback needs
    none; a broker off the machine does (docs/mqtt-broker.md)."""

    broker_ca_file: Path | None = None
    """PEM file of the CA that signed the broker's certificate; required with ``broker_tls``."""

    broker_cert_file: Path | None = None
    """PEM client certificate, for a broker that requires one; with ``broker_key_file``."""

    broker_key_file: Path | None = None
    """Unencrypted PEM private key of ``broker_cert_file`` (0600, the agent's user)."""

    broker_server_name: str = ""
    """Name the broker's certificate must carry (and the SNI sent); empty: ``broker_host``.
    Hostname verification is always on."""

    admin_username: str = "admin"
    """Dynamic-security admin user (``mosquitto_ctrl dynsec init``); used for ``$CONTROL``
    commands only, never for device data."""

    admin_password_file: Path | None = None
    """File holding the admin's password (first line); keep it 0600. Required when enabled
    unless ``admin_password`` is given."""

    admin_password: str = ""
    """The admin's password inline; prefer ``admin_password_file`` (a config file is often
    world-readable and copied around)."""

    claim_username: str = "edgefleet-claim"
    """Username of the shared claim credential devices ship with (provisioning topics only)."""

    claim_password_file: Path | None = None
    """File holding the claim password (first line). Required when enabled unless
    ``claim_password`` is given."""

    claim_password: str = ""
    """The claim password inline; prefer ``claim_password_file``."""

    agent_username: str = "edgefleet-agent"
    """The agent's own broker user, created at start with a fresh random password."""

    agent_client_id: str = "edgefleet-agent"
    """Prefix of the agent's secret MQTT client id (``<prefix>-<16 random hex>``, kept in
    ``twins/agent-client-id``), so the broker keeps the agent's session across restarts."""

    models_dir: Path | None = None
    """Folder of extra device models (``*.yaml``) besides the built-in ones; None: only those."""

    require_registration: bool = False
    """True: only devices registered in advance may claim; False: any holder of the claim
    credential may onboard a new device id."""

    durability: str = "full"
    """``full`` fsyncs every commit (survives power loss); ``normal`` survives kill -9 only."""

    max_devices: int = 10_000
    """Devices this agent serves at most; every twin is kept in memory (a few KB each)."""

    mqtt_version: str = "auto"
    """MQTT version of the agent's broker session: ``auto`` (5, or 3.1.1 when the broker
    refuses 5), ``5`` or ``3.1.1``; devices may use either whatever this says."""

    keepalive: int = 30
    """MQTT keepalive of the agent's broker session, in seconds."""

    reconnect_max: float = 15.0
    """Ceiling in seconds of the delay between broker reconnects."""

    home_assistant: bool = False
    """Publish Home Assistant MQTT discovery (retained) for every onboarded device, from its
    model (docs/home-assistant.md). Off by default: it costs a retained state publish per
    accepted report, and the agent's broker user gets write access to the discovery prefix."""

    home_assistant_prefix: str = "homeassistant"
    """Home Assistant's discovery prefix (its MQTT integration's setting; ``homeassistant``
    unless changed there): topic levels of letters, digits, ``_`` and ``-``."""

    def secrets(self) -> tuple[str, str]:
        """The admin and claim passwords, read from their files when those are set.

        Raises:
            OSError: a password file cannot be read.
            ValueError: a password is missing or empty.
        """
        admin = _secret(self.admin_password_file, self.admin_password, "admin_password")
        claim = _secret(self.claim_password_file, self.claim_password, "claim_password")
        return admin, claim


def _secret(path: Path | None, inline: str, name: str) -> str:
    if path is None:
        if not inline:
            raise ValueError(f"[twins] needs {name}_file (or {name})")
        return inline
    lines = path.read_text().splitlines()
    value = lines[0].strip() if lines else ""
    if not value:
        raise ValueError(f"[twins] {name}_file {path} is empty")
    return value


@dataclass(frozen=True, kw_only=True)
class NodeStatusSettings:
    """How often and what the node reports."""

    interval: float = 10.0
    """Seconds between reports. The cloud marks the node offline after 3 missed intervals
    (30 s); 10 s costs ~100 bytes a report and 1,000 nodes cost the cloud ~100 reports/s."""

    full_every: float = 300.0
    """Seconds between full reports (the rest are deltas): a bound on how long a cloud that
    lost a delta can be wrong about a value that then stopped changing."""

    disk_path: Path = field(default_factory=lambda: Path("/"))
    """The filesystem whose use is reported: the root, where logs and images fill up."""

    open_timeout: float = 10.0
    """Seconds to wait for the cloud to accept the status stream."""

    retry_delay: float = 5.0
    """Seconds before a new status stream after one failed while the tunnel stayed up."""

    idle_poll: float = 0.5
    """Seconds between checks for a tunnel session while there is none."""


@dataclass(frozen=True, kw_only=True)
class AgentSettings:
    data_dir: Path = field(default_factory=lambda: Path("/var/lib/edge-agent"))
    """Folder for the private key, certificate, object cache and outbox; survives restarts."""

    local_api: LocalApiSettings = field(default_factory=LocalApiSettings)
    """The agent's own health, metrics and status endpoint."""

    join: JoinSettings = field(default_factory=JoinSettings)
    """Talking to the server's join and renew endpoints."""

    tunnel: TunnelClientSettings = field(default_factory=TunnelClientSettings)
    """The one outbound tunnel session to the cloud."""

    node_status: NodeStatusSettings = field(default_factory=NodeStatusSettings)
    """Node status reports to the cloud (CPU, memory, disk, ...), over the tunnel."""

    kube: KubeSettings = field(default_factory=KubeSettings)
    """The local kube proxy and object cache for node components (``127.0.0.1:10261``)."""

    twins: TwinsConfig = field(default_factory=TwinsConfig)
    """Device twins over MQTT (``[twins]``); off unless enabled."""

    cluster: ClusterSettings | None = None
    """Cluster mode (``[cluster]``): None is node mode; set, the agent serves the member
    cluster's API server as the tunnel target ``kube-apiserver`` and reports its status."""

    works: WorkSettings = field(default_factory=WorkSettings)
    """How a cluster-mode agent applies the hub's works (``[cluster.works]``; unused in node
    mode). docs/fleet/agent-works.md."""

    elastic: ElasticSettings = field(default_factory=ElasticSettings)
    """The elastic part of cluster mode (``[cluster.elastic]``; off unless ``enabled``):
    ResourcePolicy webhook and controller, NodePool autoscaler. docs/elastic.md."""

    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """The gateway part of cluster mode (``[cluster.gateway]``; off unless ``enabled``): the
    cloud gateway's streams to the allowed Services' ready endpoints. docs/agent-config.md."""
