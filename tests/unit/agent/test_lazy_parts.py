"""What the daemons load before any feature is on: never the official client, no switched-off part.

Each check runs in a fresh interpreter (``sys.modules`` of the test process holds everything).
"""

from __future__ import annotations

import json
import subprocess
import sys

FEATURE_MODULES = (
    "aiomqtt",  # [twins]
    "edge_agent.twins.mqtt_service",
    "edge_agent.twin_link",
    "edge_agent.kubecache.proxy",  # [kube]
    "edge_agent.kubecache.store",
    "edge_agent.kubecache.table",
    "edge_agent.cluster.apiserver",  # [cluster]
    "edge_agent.cluster.works.applier",
)


def _loaded(*modules: str) -> set[str]:
    """The modules in ``sys.modules`` after a fresh interpreter imported ``modules``."""
    code = (
        f"import sys\nfor name in {list(modules)!r}:\n    __import__(name)\n"
        "print(__import__('json').dumps(sorted(sys.modules)))"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    return set(json.loads(done.stdout))


def test_no_daemon_imports_the_official_kubernetes_client() -> None:
    loaded = _loaded(
        "edge_agent.cli", "edge_agent.daemon", "tunnel_server.cli", "tunnel_server.kube"
    )
    assert "daemon_support.kubeconfig" in loaded  # the loader they use instead
    assert not {name for name in loaded if name.split(".")[0] == "kubernetes"}


def test_the_agent_loads_no_part_before_its_feature_is_on() -> None:
    loaded = _loaded("edge_agent.cli", "edge_agent.daemon")
    assert not loaded.intersection(FEATURE_MODULES)
