"""``[cluster]`` in the agent config: how the member is reached, checked with clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.cluster.settings import SERVICE_ACCOUNT_DIR
from edge_agent.settings import AgentSettings


def _load(tmp_path: Path, text: str) -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path)


def test_no_cluster_table_is_node_mode(tmp_path: Path) -> None:
    assert _load(tmp_path, "").cluster is None


def test_in_cluster(tmp_path: Path) -> None:
    cluster = _load(tmp_path, "[cluster]\nin_cluster = true\ninterval = 5\n").cluster
    assert cluster is not None
    assert cluster.in_cluster
    assert cluster.kubeconfig is None
    assert cluster.interval == 5.0
    assert cluster.service_account_dir == SERVICE_ACCOUNT_DIR


def test_kubeconfig_with_context(tmp_path: Path) -> None:
    cluster = _load(tmp_path, '[cluster]\nkubeconfig = "/etc/k.conf"\ncontext = "member"\n').cluster
    assert cluster is not None
    assert not cluster.in_cluster
    assert cluster.kubeconfig == Path("/etc/k.conf")
    assert cluster.context == "member"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("[cluster]\n", "not neither"),
        ('[cluster]\nin_cluster = true\nkubeconfig = "/k"\n', "not both"),
        ("[cluster]\nin_cluster = false\n", "not neither"),
        ('[cluster]\nin_cluster = true\ncontext = "x"\n', "context: only with kubeconfig"),
        ('[cluster]\nkubeconfig = ""\n', "kubeconfig: expected a path"),
        ('[cluster]\nkubeconfig = "/k"\ninterval = 0.5\n', "interval: must be between 1"),
        ('[cluster]\nkubeconfig = "/k"\ninterval = nan\n', "finite"),
        ('[cluster]\nkubeconfig = "/k"\ninterval = "10"\n', "interval: expected float"),
        ('[cluster]\nkubeconfig = "/k"\nserver = "https://x"\n', "unknown key(s) server"),
        ('[cluster]\nkubeconfig = "/k"\nmax_head_bytes = 10\n', "max_head_bytes: must be"),
        ("cluster = 1\n", "expected a table"),
        (
            '[cluster]\nkubeconfig = "/k"\n[kube]\nenabled = true\n',
            "[cluster] and [kube] enabled = true exclude each other",
        ),
        (
            '[cluster]\nkubeconfig = "/k"\n[tunnel.targets]\nkube-apiserver = "127.0.0.1:6443"\n',
            "serves this target itself",
        ),
    ],
)
def test_bad_cluster_tables_say_what_to_fix(tmp_path: Path, text: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as refused:
        _load(tmp_path, text)
    assert message in str(refused.value)
