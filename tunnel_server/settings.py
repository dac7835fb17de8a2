"""Settings of the cloud side. Every field says its unit and why its default is what it is."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from tunnel_protocol import TunnelSettings

DAY = 86400.0


@dataclass(frozen=True, kw_only=True)
class PkiSettings:
    ca_lifetime: float = 10 * 365 * DAY
    """Seconds the CA certificate is valid. 10 years: agents pin its hash; it must outlive them."""

    serving_lifetime: float = 365 * DAY
    """Seconds the HTTPS serving certificate is valid. One year, re-issued at start."""

    serving_renew_before: float = 30 * DAY
    """Seconds before expiry at which ``run`` re-issues the serving certificate on start."""

    client_lifetime: float = 30 * DAY
    """Seconds an agent's client certificate is valid. Short, so rotation runs every few weeks
    and a stolen certificate ages out even if nobody revokes it."""

    clock_skew: float = 300.0
    """Seconds certificates are back-dated, so an edge clock a few minutes behind still accepts."""

    max_csr_bytes: int = 16 * 1024
    """Largest CSR PEM accepted, in bytes. An RSA-4096 CSR is ~1.7 KB; anything bigger is abuse."""


@dataclass(frozen=True, kw_only=True)
class JoinSettings:
    token_ttl: float = 3600.0
    """Default lifetime of a bootstrap token, in seconds. One hour, like a kubeadm join window."""

    max_token_ttl: float = 30 * DAY
    """Longest ``token create --ttl``, in seconds: a bootstrap token is no long-term credential."""

    max_body_bytes: int = 64 * 1024
    """Largest join/renew request body, in bytes. A CSR plus a token fits in 4 KB."""

    pending_ttl: float = 7 * DAY
    """Seconds a join waiting for approval is kept; afterwards the joiner must start again."""

    poll_interval: float = 2.0
    """Seconds a pending joiner is told to wait between polls (``retry_after`` of the 202)."""


@dataclass(frozen=True, kw_only=True)
class NodeProxySettings:
    open_timeout: float = 10.0
    """Seconds to wait for the agent to dial the target and accept the stream: a dial on a
    healthy LAN takes milliseconds; ten seconds covers a slow uplink and a cold target."""


@dataclass(frozen=True, kw_only=True)
class ClusterProxySettings:
    open_timeout: float = 10.0
    """Seconds to wait for a cluster agent to accept a stream to its API server (it accepts at
    once and connects afterwards, so this is the tunnel's round trip plus a busy agent)."""

    max_header_bytes: int = 64 * 1024
    """Bytes of all request headers together (names, values, separators). kubectl sends ~1 KB;
    64 KiB leaves room for big bearer tokens and cookies and bounds what the cloud relays. A
    single header line is also bounded by aiohttp (8,190 bytes). More is answered 431."""

    max_headers: int = 100
    """Request headers at most (kubectl sends about ten); more is answered 431. Below
    aiohttp's own parser limit (128), past which its parser answers a plain 400 itself."""


@dataclass(frozen=True, kw_only=True)
class EgressSettings:
    """kube-apiserver's egress selector (HTTP CONNECT) to edge nodes' kubelets (docs/egress.md)."""

    uds_path: Path | None = None
    """Unix socket kube-apiserver dials (``--egress-uds``), mode 0600; None: not served."""

    listen: tuple[str, int] | None = None
    """TCP address of the mTLS listener (``--egress-listen``); None: not served."""

    client_ca: Path | None = None
    """CA file that signs the client certificates the TCP listener requires."""

    kubelet_target: str = "kubelet"
    """The agent's ``[tunnel.targets]`` name dialled for a CONNECT: the agent resolves it in its
    own allow-list, so the cloud never hands an edge node an address to dial."""

    kubelet_port: int = 10250
    """The kubelet port expected for a node whose Node object does not say its own
    (``status.daemonEndpoints.kubeletEndpoint.Port``): kube-apiserver's ``--kubelet-port``."""

    max_head_bytes: int = 8 * 1024
    """Bytes of a CONNECT head; kube-apiserver sends about 60. Beyond: 400 and close."""

    head_timeout: float = 10.0
    """Seconds from accept until the whole head has arrived; a silent client is closed."""

    open_timeout: float = 10.0
    """Seconds for the agent to dial its kubelet and accept the stream: milliseconds on the
    node's loopback, plus a slow uplink's round trips."""

    idle_timeout: float = 4 * 3600.0
    """Seconds a relayed connection may carry no byte either way before it is closed; 0: never.
    Four hours, the kubelet's own ``--streaming-connection-idle-timeout``, so an idle
    ``kubectl exec`` is never cut here before the kubelet would cut it."""

    max_per_node: int = 128
    """CONNECTs relayed at once to one node; more get 429. Every ``logs -f``, ``exec`` and
    ``port-forward`` holds one, and kube-apiserver opens one per request."""

    tls_handshake_timeout: float = 10.0
    """Seconds for the TLS handshake of the mTLS listener."""

    shutdown_grace: float = 5.0
    """Seconds relayed connections get to finish when the server stops."""


@dataclass(frozen=True, kw_only=True)
class GatewaySettings:
    """The multi-cluster gateway's listener (``--gateway-listen``; docs/gateway-data-path.md)."""

    listen: tuple[str, int] | None = None
    """TCP address of the gateway's own listener; None: no gateway (the default)."""

    cert_file: Path | None = None
    """PEM certificate chain served on the listener (``--gateway-cert-file``); with
    ``key_file`` the listener speaks HTTPS, without both plain HTTP (behind a TLS terminator)."""

    key_file: Path | None = None
    """PEM private key of ``cert_file``."""

    max_header_bytes: int = 32 * 1024
    """Bytes of the request line and all header fields together; more is answered 431. nginx
    allows 4 x 8 KiB (32 KiB) by default, Envoy 60 KiB: a browser with many cookies sends
    4-8 KiB. One line is also bounded by the parser (``max_line_bytes``)."""

    max_line_bytes: int = 8190
    """Bytes of one header line or of the request line (aiohttp's and nginx's 8 KiB); more is
    answered 431 by the parser before the head is complete, so a connection buffers at most
    ``max_headers`` such lines (about 800 KiB) before it is refused."""

    max_headers: int = 100
    """Request header fields at most (browsers send 10-20); more is answered 431."""

    max_body_bytes: int = 1024**3
    """Bytes of one request body; more is answered 413 (or, once the answer has begun, the
    exchange is cut). 0: no limit. Bodies stream with backpressure, so memory does not grow
    with the size; the limit is a policy against clients filling backends and uplinks. 1 GiB
    passes uploads of images and models; a deployment that proxies bigger ones sets 0."""

    replay_body_limit: int = 64 * 1024
    """Bytes of a request body held in memory so it can be sent again (retries of idempotent
    methods, mirrors); a bigger body streams once; 64 KiB holds API calls many times over,
    1,000 requests in flight hold 64 MiB at most. 0: never hold."""

    response_timeout: float = 60.0
    """Seconds a backend may take to start answering, counted from the last request byte it
    received (so a long upload is not counted); past it: 504 (nginx ``proxy_read_timeout``).
    A route's own timeouts take precedence."""

    request_timeout: float = 300.0
    """Seconds from the request's arrival until a backend starts answering, all attempts
    together; past it: 504. Bounds what retries and slow uploads may add up to."""

    stream_idle_timeout: float = 300.0
    """Seconds an exchange that is answering (a body, an upgraded WebSocket) may move no byte
    either way before it is cut; 0: never. Five minutes: WebSocket clients ping more often."""

    idle_timeout: float = 75.0
    """Seconds a client connection may sit between requests (nginx ``keepalive_timeout``).
    The same timer runs until a complete request head has arrived, so it also bounds a
    client that sends its head slowly (slowloris): aiohttp closes it without an answer."""

    open_timeout: float = 5.0
    """Seconds for a cluster agent to accept a stream: it resolves the Service and connects
    to an endpoint first, so this is two round trips plus a dial; a stuck agent is retried on
    the next backend instead of holding the client."""

    max_concurrent_requests: int = 1024
    """Requests forwarded at once; more are answered 503 with ``Retry-After: 1``. Each holds a
    tunnel stream (its window, 256 KiB) and socket buffers: about 0.5 MiB at worst each."""

    max_connections: int = 4096
    """Client connections at once; a further one is closed as soon as it is accepted."""

    tls_handshake_timeout: float = 10.0
    """Seconds for a client's TLS handshake on an HTTPS listener."""

    shutdown_grace: float = 10.0
    """Seconds open exchanges get to finish when the server stops."""


@dataclass(frozen=True, kw_only=True)
class CloudWatchSettings:
    """List+watch of the cloud cluster's Nodes and Pods (egress address map, autonomy)."""

    watch_timeout: int = 300
    """Seconds the API server keeps one watch open (``timeoutSeconds``) before we renew it
    from the last resourceVersion; five minutes, like client-go's reflector (5-10 min)."""

    retry_base: float = 0.5
    """Seconds before the first retry after a failed list or watch; doubles each time."""

    retry_cap: float = 30.0
    """Longest wait between retries, in seconds."""

    max_event_bytes: int = 16 * 1024 * 1024
    """Bytes of one watch event line; a Node with many images is ~100 KB, the API server's
    own object limit is 1.5 MiB (etcd); beyond it the watch restarts."""

    request_timeout: float = 10.0
    """Seconds for one GET or PATCH (a list of thousands of pods fits)."""


@dataclass(frozen=True, kw_only=True)
class AutonomySettings:
    """Pods of nodes labelled ``edgefleet.io/autonomy=true`` survive their node's outage."""

    enabled: bool = False
    """Run the controller and serve the webhook (``--autonomy``; needs ``--kube-upstream``)."""

    webhook_timeout: int = 5
    """``timeoutSeconds`` of the printed MutatingWebhookConfiguration; with
    ``failurePolicy: Ignore`` a slow or absent server delays pod creation by at most this."""

    node_lookup_timeout: float = 2.0
    """Seconds the webhook waits for a Node it has not seen in its watch (a GET)."""

    max_review_bytes: int = 3 * 1024 * 1024
    """Bytes of one AdmissionReview: one pod, which the API server itself limits to 3 MiB."""

    max_review_depth: int = 64
    """JSON nesting of an AdmissionReview: a pod's managedFields mirror its deepest fields
    (~20 levels); 64 is ample and keeps the parser far from Python's recursion limit."""

    patch_concurrency: int = 8
    """Pod patches in flight at once, so a node with thousands of pods does not flood the API."""


@dataclass(frozen=True, kw_only=True)
class ReplicaSettings:
    """Replicas on the Kubernetes store (``--store kubernetes``; docs/ha.md)."""

    name: str | None = None
    """This replica's name (``--replica-name``): its Lease is ``edgefleet-replica-<name>`` and
    it is the ``holderIdentity`` of the agents it holds; unique per replica. None: $POD_NAME
    (the Deployment sets it), else ``<hostname>-<port>``, so that two replicas on one machine
    differ (``replicas.service.replica_name``)."""

    peer_address: str | None = None
    """HOST:PORT other replicas reach this one at (``--peer-address``), advertised in its
    Lease's annotation for peer forwarding (docs/ha.md, "Forwarding"). None: $POD_IP or the
    hostname, with the server's port."""

    lease_duration: int = 15
    """Seconds a replica's (and the leader's) Lease holds without a renewal: client-go's
    default. A dead replica's agents count as held by nobody at most this long after its
    last renewal; shorter makes a slow API server (a GC pause, an etcd election, ~5 s) look
    like a dead replica."""

    renew_interval: float = 2.0
    """Seconds between renewals of this replica's Lease and of the leader's (client-go's
    retryPeriod): seven chances to renew within one ``lease_duration``. One write per
    replica per interval: 3 replicas make 3 writes/s, nothing for etcd."""

    renew_deadline: float = 10.0
    """Seconds without a good renewal after which the leader stops its singletons (client-go's
    default). Below ``lease_duration``: it stops before another candidate may take over."""

    holder_writes_per_second: float = 100.0
    """Agent holder writes per second this replica makes at most (a token bucket). A reconnect
    storm of 10,000 agents on 3 replicas is then ~3,300 writes per replica in ~33 s, at most
    300 writes/s to the API server in all; changes waiting are coalesced per node (the last
    state wins: a flapping agent costs one write, not one per flap)."""

    holder_burst: int = 50
    """Holder writes allowed at once after a quiet spell (the token bucket's size)."""

    session_scan_interval: float = 0.5
    """Seconds between comparisons of this process's sessions with what it recorded: an
    in-memory pass (10,000 sessions take about a millisecond); it bounds how late a holder
    record follows a connect or disconnect, beside the write rate."""

    write_retry: float = 1.0
    """Seconds before a failed Lease write (API down) is tried again."""


@dataclass(frozen=True, kw_only=True)
class ServerSettings:
    host: str = "0.0.0.0"  # noqa: S104 - agents connect from anywhere; the API is authenticated
    """Address to listen on. All interfaces by default: agents dial in from remote sites."""

    port: int = 8443
    """TCP port. 8443 rather than 443 so the server needs no privileges."""

    data_dir: Path = field(default_factory=lambda: Path("/var/lib/tunnel-server"))
    """Folder for the CA, the serving certificate, the admin token and the SQLite store."""

    public_name: str = "localhost"
    """DNS name (or IP) agents use to reach this server; goes into the serving certificate."""

    idle_timeout: float = 30.0
    """Seconds an HTTP connection may sit without a request before it is closed, counted from
    accept: aiohttp's own default is an hour, which lets idle or stalled clients (slowloris)
    hold sockets. Upgraded connections (the tunnel, proxied WebSockets) are not affected."""

    listen_backlog: int = 128
    """Pending TCP connections the kernel queues for us (aiohttp's default). Measured with
    5,000 agents reconnecting at once: 128 let 2,957 back within 180 s, 4096 only 21. A long
    queue makes the server shake hands with clients whose connect timeout has already run
    out; a short one drops SYNs, and the kernel's SYN retry is the back-pressure we want."""

    tls_read_buffer: int = 64 * 1024
    """Bytes of a TLS connection's read buffer while it moves bulk data (asyncio's fixed
    default: 256 KiB, which made idle agent sessions cost ~300 KiB of RSS each). 64 KiB reads
    four full TLS records per system call; bulk throughput did not move against 256 KiB."""

    tls_idle_read_buffer: int = 16 * 1024
    """Bytes of a TLS connection's read buffer until a read fills it, and again after a quiet
    spell (``tls_buffer.py``). An idle agent session only receives keepalives; 16 KiB instead
    of 64 KiB saves ~46 KiB of RSS per agent (docs/benchmarks.md)."""

    max_tls_handshakes: int = 1024
    """TLS handshakes in progress at once; 0 turns the limit off (asyncio's own listener).
    A handshake with a client certificate costs this process ~2.5 ms of CPU, more than the
    rest of a session's set-up (~1.7 ms; docs/benchmarks.md). asyncio starts one for every
    accepted connection at once: in a big reconnect storm thousands interleave, each finishes
    after the agents' 15 s connect timeout, and the work is lost. Further connections wait in
    the listen queue, which costs nothing. 1,024 is about 2.5 s of CPU, and just above what a
    5,000-agent reconnect reached on the 2-CPU bench machine (~1,000: a slow client holds its
    slot too); a limit of 64 throttled that reconnect from 22-24 s to 62 s."""

    tls_handshake_timeout: float = 10.0
    """Seconds from accept until the TLS handshake is done (asyncio's default: 60). A slow
    uplink needs a few round trips; a connection that sends nothing is closed instead of
    holding a socket for a minute."""

    max_session_setups: int = 1024
    """Agent sessions being set up at once, from the ``/tunnel`` request until both HELLOs are
    exchanged; 0 turns the limit off. Beyond it the upgrade is answered at once with 503 and a
    ``Retry-After`` (before any certificate check or store access) spaced at the rate the
    server manages; the agent keeps its TLS connection and asks again over it, so a refusal
    costs no handshake. The time counts the agents' side too, so the limit sits above what a
    5,000-agent reconnect reached on the bench machine (~650); 128 slowed it from 24 to 62 s."""

    retry_after_max: float = 20.0
    """Seconds: the longest ``Retry-After`` a refused agent is given. With the agent's jitter
    (up to a fifth plus 1 s) it stays below ``idle_timeout`` (30 s), so the connection the agent
    keeps is still open when it comes back, and below the agents' backoff cap (60 s)."""

    shutdown_grace: float = 10.0
    """Seconds given to open connections to drain on SIGTERM before they are cut."""

    store_poll_interval: float = 0.5
    """Seconds between checks of the store's revision, so a revocation made by the CLI in
    another process is noticed within about a second."""

    pki: PkiSettings = field(default_factory=PkiSettings)
    """Lifetimes and limits of the certificate authority."""

    join: JoinSettings = field(default_factory=JoinSettings)
    """Bootstrap tokens and the join endpoint."""

    tunnel: TunnelSettings = field(default_factory=TunnelSettings)
    """Frame size, stream windows, stream cap and keepalive of agent sessions."""

    node_proxy: NodeProxySettings = field(default_factory=NodeProxySettings)
    """The proxy to services on edge nodes."""

    cluster_proxy: ClusterProxySettings = field(default_factory=ClusterProxySettings)
    """The Kubernetes API proxy to registered clusters (``/clusters/{name}/...``)."""

    egress: EgressSettings = field(default_factory=EgressSettings)
    """kube-apiserver's egress selector to edge kubelets; off unless a socket or port is set."""

    gateway: GatewaySettings = field(default_factory=GatewaySettings)
    """The multi-cluster gateway's listener; off unless ``--gateway-listen``."""

    cloud_watch: CloudWatchSettings = field(default_factory=CloudWatchSettings)
    """How the fleet parts follow Nodes and Pods of the cloud cluster (``--kube-upstream``)."""

    autonomy: AutonomySettings = field(default_factory=AutonomySettings)
    """Eviction protection of autonomous edge nodes' pods; off unless ``--autonomy``."""

    replicas: ReplicaSettings = field(default_factory=ReplicaSettings)
    """Replica identity, Leases and leader election; used with the Kubernetes store only."""

    sso_config: Path | None = None
    """The SSO (OpenID Connect) configuration file (docs/sso.md); None: no SSO sign-in."""
