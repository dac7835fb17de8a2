"""The agent config the package ships as /etc/edgefleet/edge-agent.toml.

It loads as the defaults, documents every key the agent reads, and every key it shows is one
the agent accepts.
"""

from __future__ import annotations

import dataclasses
import re
import tomllib
from pathlib import Path

from edge_agent import config
from edge_agent.kubecache.settings import HealthSettings, KubeCacheSettings
from edge_agent.node_status import NodeStatusSettings
from edge_agent.settings import (
    AgentSettings,
    KubeSettings,
    LocalApiSettings,
    TunnelClientSettings,
    TwinsConfig,
)

SHIPPED = Path(__file__).resolve().parents[3] / "packaging" / "deb" / "edge-agent.toml"
_COMMENTED_KEY = re.compile(r"(?m)^# ([a-z_]+) = ")


def test_shipped_config_loads_as_the_defaults() -> None:
    assert config.load(SHIPPED) == AgentSettings()


def test_every_shown_key_is_accepted(tmp_path: Path) -> None:
    # Uncommenting every "# key = default" line must still be a config the agent accepts, with
    # the same settings: the file shows real keys with their real defaults.
    uncommented = tmp_path / "all-keys.toml"
    uncommented.write_text(_COMMENTED_KEY.sub(r"\1 = ", SHIPPED.read_text()))
    settings = config.load(uncommented)
    defaults = AgentSettings()
    assert settings.tunnel.targets == {"kubelet": ("127.0.0.1", 10250)}  # the example target
    assert dataclasses.replace(settings.tunnel, targets={}) == defaults.tunnel
    assert settings.local_api == defaults.local_api
    assert settings.node_status == defaults.node_status
    assert settings.kube.proxy == defaults.kube.proxy
    assert settings.kube.kubeconfig == defaults.kube.kubeconfig  # the last one shown wins
    assert settings.twins.enabled is False


def _keys(cls: type, skip: set[str]) -> set[str]:
    return {f.name for f in dataclasses.fields(cls)} - skip


def test_every_key_the_agent_reads_is_documented() -> None:
    tables: dict[str, set[str]] = {
        "": {"data_dir"},
        "local_api": _keys(LocalApiSettings, set()),
        "tunnel": _keys(TunnelClientSettings, {"targets"}),
        "node_status": _keys(NodeStatusSettings, set()),
        "kube": _keys(KubeSettings, {"proxy"})
        | _keys(KubeCacheSettings, {"host", "health", "min_file_size"}),
        "kube.health": _keys(HealthSettings, set()),
        "twins": _keys(TwinsConfig, set()),
    }
    shown: dict[str, set[str]] = {}
    table = ""
    for line in SHIPPED.read_text().splitlines():
        if header := re.fullmatch(r"\[([a-z_.]+)\]", line):
            table = header[1]
        elif key := _COMMENTED_KEY.match(line + " "):
            shown.setdefault(table, set()).add(key[1])
    for name, keys in tables.items():
        assert keys <= shown.get(name, set()), (name, keys - shown.get(name, set()))
    assert tomllib.loads(SHIPPED.read_text()).keys() <= {*tables, "tunnel"}
