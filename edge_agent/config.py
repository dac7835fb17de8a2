"""The agent's config file (TOML): every key optional, unknown keys refused, values checked.

Example, with the defaults spelled out::

    data_dir = "/var/lib/edge-agent"

    [local_api]
    port = 10267

    [tunnel]
    backoff_cap = 60.0        # seconds
    drain_grace = 10.0        # seconds

    [tunnel.targets]          # what the cloud may reach through this node
    kubelet = "127.0.0.1:10250"
    web = "localhost:8080"

    [kube]                    # the local kube proxy for node components
    enabled = true
    kubeconfig = "/etc/edge-agent/kube-upstream.conf"
    port = 10261
    cache_agents = ["kubelet", "kube-proxy", "flanneld", "coredns"]

    [kube.health]
    interval = 5.0            # seconds

    [twins]                   # device twins over the local mosquitto
    enabled = true
    admin_password_file = "/etc/edge-agent/mqtt-admin-password"
    claim_password_file = "/etc/edge-agent/mqtt-claim-password"

Cluster mode (an agent that serves a whole member cluster; no ``[kube]`` proxy then)::

    [cluster]
    in_cluster = true         # or: kubeconfig = "/path/to/kubeconfig" (+ context = "name")
    interval = 10.0           # seconds between cluster status reports

    [cluster.elastic]         # ResourcePolicy webhook + NodePool autoscaler (docs/elastic.md)
    enabled = true

    [cluster.gateway]         # the cloud gateway's streams to these Services' endpoints
    enabled = true
    services = ["demo/*", "shop/web"]

Every key and its default is in docs/agent-config.md.
"""

from __future__ import annotations

import dataclasses
import math
import tomllib
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon_support.twin_database import Durability
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.gateway.settings import GatewaySettings
from edge_agent.cluster.gateway.target import MAX_PATTERNS, TargetError, parse_pattern
from edge_agent.cluster.settings import ClusterSettings
from edge_agent.cluster.works.settings import WorkSettings, WorkSettingsError, work_settings
from edge_agent.kubecache.settings import HealthSettings, KubeCacheSettings
from edge_agent.settings import (
    AgentSettings,
    KubeSettings,
    LocalApiSettings,
    NodeStatusSettings,
    TunnelClientSettings,
    TwinsConfig,
)
from edge_agent.twins.tls import BrokerTls, BrokerTlsError, client_context

if TYPE_CHECKING:
    from edge_agent.twins import TwinMqttSettings

MAX_CONFIG_BYTES = 256 * 1024
"""A config file is a few hundred bytes; anything this large is a mistake, not a config."""
MAX_TARGETS = 256
MAX_CACHE_AGENTS = 256
_NOT_IN_CONFIG = frozenset({"host", "cache_dir", "health", "cache_agents"})
"""KubeCacheSettings fields the ``[kube]`` table does not set generically: the listener stays
on loopback, values must stay inside SQLite (atomic), and the rest have their own parsing."""
_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-_.")


class ConfigError(ValueError):
    """The config file is unusable; the message names the file, the key and the fix."""


def parse_address(value: str, *, where: str) -> tuple[str, int]:
    host, sep, port = value.rpartition(":")
    host = host.strip("[]")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(f"{where}: expected HOST:PORT such as 127.0.0.1:10250, got {value!r}")
    return host, int(port)


def _targets(raw: object, where: str) -> dict[str, tuple[str, int]]:
    if not isinstance(raw, dict):
        raise ConfigError(f'{where}: expected a table of name = "host:port"')
    if len(raw) > MAX_TARGETS:
        raise ConfigError(f"{where}: at most {MAX_TARGETS} targets")
    out: dict[str, tuple[str, int]] = {}
    for name, value in raw.items():
        if not name or len(name) > 63 or not set(name) <= _NAME_CHARS:
            raise ConfigError(f"{where}.{name}: names use a-z 0-9 - _ . (at most 63)")
        if not isinstance(value, str):
            raise ConfigError(f'{where}.{name}: expected "host:port"')
        out[name] = parse_address(value, where=f"{where}.{name}")
    return out


def _fields(
    cls: type[Any], raw: dict[str, Any], where: str, *, skip: frozenset[str] = frozenset()
) -> dict[str, Any]:
    known = {f.name: f for f in dataclasses.fields(cls) if f.name not in skip}
    unknown = sorted(set(raw) - set(known))
    if unknown:
        raise ConfigError(
            f"{where}: unknown key(s) {', '.join(unknown)}; known: {', '.join(known)}"
        )
    defaults = cls()
    return {
        name: _value(where, name, getattr(defaults, name), given) for name, given in raw.items()
    }


def _value(where: str, name: str, default: object, given: object) -> object:
    """``given`` checked against the type of the field's ``default`` (and converted)."""
    if isinstance(default, bool):
        if not isinstance(given, bool):
            raise ConfigError(f"{where}.{name}: expected true or false, got {given!r}")
        return given
    if not isinstance(default, int | float | str | Path):
        raise ConfigError(f"{where}.{name}: not settable here")
    value = given
    if isinstance(default, float) and isinstance(given, int) and not isinstance(given, bool):
        value = float(given)
    if isinstance(default, Path):
        if not isinstance(given, str) or not given:
            raise ConfigError(f"{where}.{name}: expected a path, got {given!r}")
        value = Path(given)
    if type(value) is not type(default):
        raise ConfigError(f"{where}.{name}: expected {type(default).__name__}, got {value!r}")
    if isinstance(value, int | float):
        _check_number(where, name, value)
    return value


def _check_number(where: str, name: str, value: float) -> None:
    if not math.isfinite(value):  # TOML has nan and inf
        raise ConfigError(f"{where}.{name}: must be a finite number, got {value!r}")
    if value < 0:
        raise ConfigError(f"{where}.{name}: must not be negative")


def _cache_agents(raw: object, where: str) -> frozenset[str]:
    if not isinstance(raw, list) or not all(isinstance(a, str) for a in raw):
        raise ConfigError(f'{where}: expected a list of component names, e.g. ["kubelet"]')
    if len(raw) > MAX_CACHE_AGENTS:
        raise ConfigError(f"{where}: at most {MAX_CACHE_AGENTS} components")
    for agent in raw:
        if agent != "*" and (not agent or len(agent) > 64 or not set(agent) <= _NAME_CHARS):
            raise ConfigError(
                f'{where}: {agent!r} is not a component name (User-Agent up to the first "/", '
                'lower case, a-z 0-9 - _ .) nor "*"'
            )
    return frozenset(raw)


def _check_range(where: str, name: str, value: float, low: float, high: float) -> None:
    if not low <= value <= high:
        raise ConfigError(f"{where}.{name}: must be between {low:g} and {high:g}, got {value:g}")


def _kube_health(raw: object, where: str) -> HealthSettings:
    """The ``[kube.health]`` table: probe timing and thresholds."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    values = _fields(HealthSettings, dict(raw), where)
    for name in ("interval", "timeout"):
        if name in values:
            _check_range(where, name, values[name], 0.01, 3600.0)
    for name in ("failure_threshold", "success_threshold"):
        if name in values:
            _check_range(where, name, values[name], 1, 1000)
    return HealthSettings(**values)


def _kube(raw: dict[str, Any], where: str) -> KubeSettings:
    """The ``[kube]`` table: the proxy's upstream, listener, cache and ``[kube.health]``."""
    health = _kube_health(raw.pop("health", {}), f"{where}.health")
    proxy_values: dict[str, Any] = {"health": health}
    if "cache_agents" in raw:
        proxy_values["cache_agents"] = _cache_agents(
            raw.pop("cache_agents"), f"{where}.cache_agents"
        )
    own = {f.name for f in dataclasses.fields(KubeSettings)} - {"proxy"}
    own_raw = {k: raw.pop(k) for k in list(raw) if k in own}
    cache_dir = own_raw.pop("cache_dir", None)
    if cache_dir is not None and (not isinstance(cache_dir, str) or not cache_dir):
        raise ConfigError(f"{where}.cache_dir: expected a folder path")
    own_values = _fields(KubeSettings, own_raw, where, skip=frozenset({"proxy", "cache_dir"}))
    tuned = _fields(KubeCacheSettings, raw, where, skip=_NOT_IN_CONFIG)
    if "port" in tuned:
        _check_range(where, "port", tuned["port"], 0, 65535)
    proxy_values.update(tuned)
    if own_values.get("upstream", "kubeconfig") not in ("kubeconfig", "tunnel"):
        raise ConfigError(
            f'{where}.upstream: "kubeconfig" or "tunnel", got {own_values["upstream"]!r}'
        )
    server = str(own_values.get("server", ""))
    if server and not server.startswith(("https://", "http://")):
        raise ConfigError(f"{where}.server: expected an http(s):// URL, got {server!r}")
    return KubeSettings(
        cache_dir=Path(cache_dir) if cache_dir else None,
        proxy=KubeCacheSettings(**proxy_values),
        **own_values,
    )


_TWINS_PATHS = (
    "admin_password_file",
    "claim_password_file",
    "models_dir",
    "broker_ca_file",
    "broker_cert_file",
    "broker_key_file",
)
"""``[twins]`` keys whose default is None (unset) and whose value is a path."""
MQTT_VERSIONS = ("auto", "5", "3.1.1")
"""``[twins] mqtt_version`` values (edge_agent.twins.mqtt_service.MQTT_VERSIONS, not imported:
an agent without twins never loads MQTT)."""


def _twins(raw: object, where: str) -> TwinsConfig:
    """The ``[twins]`` table: broker, credentials (files preferred), models, limits."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    raw = dict(raw)
    paths: dict[str, Any] = {}
    for name in _TWINS_PATHS:
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{name}: expected a path")
            paths[name] = Path(value)
    if raw.get("mqtt_version") == 5 and raw["mqtt_version"] is not True:  # TOML's bare 5
        raw["mqtt_version"] = "5"
    values = _fields(TwinsConfig, raw, where, skip=frozenset(_TWINS_PATHS))
    _check_mqtt_version(values, where)
    if "broker_port" in values:
        _check_range(where, "broker_port", values["broker_port"], 1, 65535)
    if values.get("durability", "full") not in ("full", "normal"):
        raise ConfigError(f'{where}.durability: "full" or "normal", got {values["durability"]!r}')
    for name in ("max_devices", "keepalive"):
        if name in values:
            _check_range(where, name, values[name], 1, 1_000_000)
    _check_discovery_prefix(values, where)
    twins = TwinsConfig(**values, **paths)
    _check_twins_secrets(twins, where)
    _check_twins_tls(twins, where)
    return twins


def _check_discovery_prefix(values: dict[str, Any], where: str) -> None:
    prefix = values.get("home_assistant_prefix")
    if prefix is None:
        return  # the default ("homeassistant") is valid: a config without one never loads it
    # Imported here: only a [twins] table that names a prefix needs device_models (29
    # modules; 0.4-0.5 MiB of a running [kube]-only agent's RSS, measured for issue 18).
    from device_models.home_assistant import valid_prefix  # noqa: PLC0415

    if not valid_prefix(prefix):
        raise ConfigError(
            f"{where}.home_assistant_prefix: topic levels of letters, digits, _ and - (no "
            f"wildcards, no empty level, at most 128 characters), got {prefix[:64]!r}"
        )


def _check_mqtt_version(values: dict[str, Any], where: str) -> None:
    if values.get("mqtt_version", "auto") not in MQTT_VERSIONS:
        raise ConfigError(
            f'{where}.mqtt_version: "auto" (MQTT 5, or 3.1.1 when the broker refuses 5), "5" '
            f'or "3.1.1", got {values["mqtt_version"]!r}'
        )


_TLS_FILES = ("broker_ca_file", "broker_cert_file", "broker_key_file")


def broker_tls(twins: TwinsConfig) -> BrokerTls | None:
    """The broker TLS settings of ``[twins]`` (None: plain TCP)."""
    if not twins.broker_tls:
        return None
    assert twins.broker_ca_file is not None  # checked at load  # noqa: S101 - invariant
    return BrokerTls(
        ca_file=twins.broker_ca_file,
        cert_file=twins.broker_cert_file,
        key_file=twins.broker_key_file,
        server_name=twins.broker_server_name,
    )


def _check_twins_tls(twins: TwinsConfig, where: str) -> None:
    """TLS keys are consistent and their files load (only when twins run, like the secrets)."""
    if not twins.enabled:
        return
    if not twins.broker_tls:
        given = [name for name in _TLS_FILES if getattr(twins, name) is not None]
        if given or twins.broker_server_name:
            key = given[0] if given else "broker_server_name"
            raise ConfigError(
                f"{where}.{key} is set but broker_tls = false: set broker_tls = true to "
                f"connect over TLS, or remove {key}"
            )
        return
    if twins.broker_ca_file is None:
        raise ConfigError(
            f"{where}: broker_tls = true needs broker_ca_file (the PEM CA that signed the "
            "broker's certificate; docs/mqtt-broker.md)"
        )
    tls = broker_tls(twins)
    assert tls is not None  # noqa: S101 - broker_tls is true
    try:
        client_context(tls, where=where)
    except BrokerTlsError as error:
        raise ConfigError(str(error)) from None


def _check_twins_secrets(twins: TwinsConfig, where: str) -> None:
    if not twins.enabled:
        return
    for secret in ("admin_password", "claim_password"):
        if getattr(twins, f"{secret}_file") is None and not getattr(twins, secret):
            raise ConfigError(
                f"{where}: enabled twins need {secret}_file (a file with the password; "
                f"or {secret} inline)"
            )


def twins_settings(twins: TwinsConfig, *, data_dir: Path, node_name: str) -> TwinMqttSettings:
    """The twins service's settings from ``[twins]``.

    Passwords are read from their files, the database lives under ``<data_dir>/twins``, and
    the node is named as in its certificate (from the join).

    Raises:
        OSError: a password file cannot be read.
        ValueError: a password is missing or empty.
    """
    admin_password, claim_password = twins.secrets()
    from edge_agent.twins import TwinMqttSettings  # noqa: PLC0415 - loads MQTT: [twins] only

    return TwinMqttSettings(
        data_dir=data_dir / "twins",
        node_name=node_name,
        admin_password=admin_password,
        claim_password=claim_password,
        broker_host=twins.broker_host,
        broker_port=twins.broker_port,
        broker_tls=broker_tls(twins),
        admin_username=twins.admin_username,
        claim_username=twins.claim_username,
        agent_username=twins.agent_username,
        agent_client_id=twins.agent_client_id,
        models_dir=twins.models_dir,
        require_registration=twins.require_registration,
        durability=Durability(twins.durability),
        max_devices=twins.max_devices,
        keepalive=twins.keepalive,
        reconnect_max=twins.reconnect_max,
        mqtt_version=twins.mqtt_version,
        home_assistant=twins.home_assistant,
        home_assistant_prefix=twins.home_assistant_prefix,
    )


CLUSTER_TARGET = "kube-apiserver"
"""The tunnel target a cluster-mode agent serves itself (never in ``[tunnel.targets]``)."""
_CLUSTER_PATHS = ("kubeconfig", "service_account_dir")
_CLUSTER_RANGES = {
    "interval": (1.0, 86400.0),
    "token_reload": (1.0, 3600.0),
    "connect_timeout": (0.1, 600.0),
    "head_timeout": (0.1, 3600.0),
    "request_timeout": (0.1, 3600.0),
    "max_head_bytes": (1024, 1024 * 1024),
    "max_json_bytes": (1024, 1024 * 1024 * 1024),
    "max_idle_connections": (0, 1024),
    "idle_timeout": (0.1, 3600.0),
}


def _cluster(raw: object, where: str) -> ClusterSettings:
    """The ``[cluster]`` table: how to reach the member API server, and the report interval."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    raw = dict(raw)
    raw.pop("works", None)  # [cluster.works]: read by _works
    raw.pop("elastic", None)  # [cluster.elastic]: read by _elastic
    raw.pop("gateway", None)  # [cluster.gateway]: read by _gateway
    paths: dict[str, Any] = {}
    for name in _CLUSTER_PATHS:
        if name in raw:
            value = raw.pop(name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"{where}.{name}: expected a path, got {value!r}")
            paths[name] = Path(value)
    values = _fields(ClusterSettings, raw, where, skip=frozenset(_CLUSTER_PATHS))
    for name, (low, high) in _CLUSTER_RANGES.items():
        if name in values:
            _check_range(where, name, values[name], low, high)
    in_cluster = bool(values.get("in_cluster", False))
    kubeconfig = paths.get("kubeconfig")
    if in_cluster == (kubeconfig is not None):
        raise ConfigError(
            f"{where}: say how the agent reaches the member API server: either in_cluster = "
            'true (its pod\'s service account) or kubeconfig = "/path/to/kubeconfig", not '
            + ("both" if in_cluster else "neither")
        )
    if values.get("context") and kubeconfig is None:
        raise ConfigError(f"{where}.context: only with kubeconfig (in_cluster has no contexts)")
    return ClusterSettings(**values, **paths)


def _works(cluster: object, where: str) -> WorkSettings:
    """The ``[cluster.works]`` table (docs/fleet/agent-works.md); defaults when absent."""
    if not isinstance(cluster, dict) or "works" not in cluster:
        return WorkSettings()
    try:
        return work_settings(cluster["works"], where)
    except WorkSettingsError as error:
        raise ConfigError(str(error)) from None


_ELASTIC_RANGES: dict[str, tuple[float, float]] = {
    "webhook_service_port": (1, 65535),
    "webhook_timeout": (1, 30),
    "certificate_days": (2, 3650),
    "certificate_renew_days": (1, 3649),
}


def _elastic(cluster: object, where: str) -> ElasticSettings:
    """The ``[cluster.elastic]`` table (docs/elastic.md); defaults (off) when absent."""
    if not isinstance(cluster, dict) or "elastic" not in cluster:
        return ElasticSettings()
    raw = cluster["elastic"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    values = _fields(ElasticSettings, dict(raw), where)
    for name, (low, high) in _ELASTIC_RANGES.items():
        if name in values:
            _check_range(where, name, values[name], low, high)
    elastic = ElasticSettings(**values)
    if elastic.certificate_renew_days >= elastic.certificate_days:
        raise ConfigError(
            f"{where}: certificate_renew_days ({elastic.certificate_renew_days}) must be less "
            f"than certificate_days ({elastic.certificate_days})"
        )
    host, sep, port = elastic.webhook_listen.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(
            f"{where}.webhook_listen: expected HOST:PORT such as 0.0.0.0:9443 (port 0: any "
            f"free port, for tests), got {elastic.webhook_listen!r}"
        )
    if elastic.webhook_url and not elastic.webhook_url.startswith("https://"):
        raise ConfigError(
            f"{where}.webhook_url: the API server calls webhooks over HTTPS only; expected "
            f"https://HOST:PORT/mutate-pods, got {elastic.webhook_url!r}"
        )
    namespace, _, name = elastic.webhook_service.partition("/")
    if not elastic.webhook_url and not (namespace and name):
        raise ConfigError(
            f"{where}.webhook_service: expected NAMESPACE/NAME of the Service in front of the "
            f"webhook, got {elastic.webhook_service!r}"
        )
    return elastic


_GATEWAY_RANGES: dict[str, tuple[float, float]] = {
    "dial_timeout": (0.01, 600.0),
    "connect_timeout": (0.01, 600.0),
    "eject_after": (1, 1000),
    "eject_base": (0.01, 86400.0),
    "eject_max": (0.01, 86400.0),
    "max_streams": (1, 1_000_000),
    "pool_per_endpoint": (0, 4096),
    "pool_total": (0, 1_000_000),
    "pool_idle_timeout": (0.01, 3600.0),
}


def _gateway(cluster: object, where: str) -> GatewaySettings:
    """The ``[cluster.gateway]`` table (docs/agent-config.md); defaults (off) when absent."""
    if not isinstance(cluster, dict) or "gateway" not in cluster:
        return GatewaySettings()
    raw = cluster["gateway"]
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    raw = dict(raw)
    services = _gateway_services(raw.pop("services", []), f"{where}.services")
    values = _fields(GatewaySettings, raw, where, skip=frozenset({"services"}))
    for name, (low, high) in _GATEWAY_RANGES.items():
        if name in values:
            _check_range(where, name, values[name], low, high)
    gateway = GatewaySettings(services=services, **values)
    if gateway.eject_base > gateway.eject_max:
        raise ConfigError(
            f"{where}: eject_base ({gateway.eject_base:g}) must not exceed eject_max "
            f"({gateway.eject_max:g})"
        )
    return gateway


def _gateway_services(raw: object, where: str) -> tuple[str, ...]:
    if not isinstance(raw, list) or not all(isinstance(s, str) for s in raw):
        raise ConfigError(f'{where}: expected a list of "namespace/name" or "namespace/*"')
    if len(raw) > MAX_PATTERNS:
        raise ConfigError(f"{where}: at most {MAX_PATTERNS} patterns")
    for text in raw:
        try:
            parse_pattern(text)
        except TargetError as error:
            raise ConfigError(f"{where}: {error}") from None
    return tuple(dict.fromkeys(raw))


def _check_cluster_mode(
    cluster: ClusterSettings | None, kube: KubeSettings, tunnel: TunnelClientSettings, where: str
) -> None:
    """Cluster mode excludes what only a node runs, and owns the ``kube-apiserver`` target."""
    if cluster is None:
        return
    if kube.enabled:
        raise ConfigError(
            f"{where}: [cluster] and [kube] enabled = true exclude each other: a cluster agent "
            "serves its member API server to the cloud and runs no kube cache; remove one"
        )
    if CLUSTER_TARGET in tunnel.targets:
        raise ConfigError(
            f"{where}: tunnel.targets.{CLUSTER_TARGET}: in cluster mode the agent serves this "
            "target itself (from [cluster]); remove it from [tunnel.targets]"
        )


def _table(raw: dict[str, Any], name: str, where: str) -> dict[str, Any]:
    """Take the ``[name]`` table out of ``raw`` (empty if absent); refuse a plain value."""
    value = raw.pop(name, {})
    if not isinstance(value, dict):
        raise ConfigError(f"{where}: [{name}] must be a table, got {value!r}")
    return dict(value)


def load(path: Path | None, *, overrides: dict[str, Any] | None = None) -> AgentSettings:
    """Settings from ``path`` (or defaults), then command-line ``overrides`` on top."""
    raw: dict[str, Any] = {}
    if path is not None:
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ConfigError(f"cannot read config file {path}: {error.strerror}") from error
        if len(data) > MAX_CONFIG_BYTES:
            raise ConfigError(f"{path}: larger than {MAX_CONFIG_BYTES} bytes")
        try:
            raw = tomllib.loads(data.decode())
        except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
            raise ConfigError(f"{path}: not valid TOML: {error}") from error
    where = str(path or "config")
    tunnel_raw = _table(raw, "tunnel", where)
    targets = _targets(tunnel_raw.pop("targets", {}), f"{where}: tunnel.targets")
    tunnel = TunnelClientSettings(
        targets=targets, **_fields(TunnelClientSettings, tunnel_raw, f"{where}: [tunnel]")
    )
    local_api_values = _fields(
        LocalApiSettings, _table(raw, "local_api", where), f"{where}: [local_api]"
    )
    if "port" in local_api_values:
        _check_range(f"{where}: [local_api]", "port", local_api_values["port"], 1, 65535)
    local_api = LocalApiSettings(**local_api_values)
    kube = _kube(_table(raw, "kube", where), f"{where}: [kube]")
    status_raw = _table(raw, "node_status", where)
    status_values = _fields(NodeStatusSettings, status_raw, f"{where}: [node_status]")
    for name in ("interval", "full_every"):
        if name in status_values:
            _check_range(f"{where}: [node_status]", name, status_values[name], 1.0, 86400.0)
    node_status = NodeStatusSettings(**status_values)
    twins = _twins(raw.pop("twins", {}), f"{where}: [twins]")
    works = _works(raw.get("cluster"), f"{where}: [cluster.works]")
    elastic = _elastic(raw.get("cluster"), f"{where}: [cluster.elastic]")
    gateway = _gateway(raw.get("cluster"), f"{where}: [cluster.gateway]")
    cluster = _cluster(raw.pop("cluster"), f"{where}: [cluster]") if "cluster" in raw else None
    _check_cluster_mode(cluster, kube, tunnel, where)
    top = _fields(AgentSettings, raw, where)
    top.update(overrides or {})
    return AgentSettings(
        tunnel=tunnel,
        local_api=local_api,
        kube=kube,
        node_status=node_status,
        twins=twins,
        cluster=cluster,
        works=works,
        elastic=elastic,
        gateway=gateway,
        **top,
    )
