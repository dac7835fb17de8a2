"""``[cluster.elastic]`` in the agent config: off by default, each key checked, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.cluster import credentials
from edge_agent.cluster.elastic.settings import ElasticSettings
from edge_agent.cluster.settings import ClusterSettings
from edge_agent.settings import AgentSettings

CLUSTER = '[cluster]\nkubeconfig = "/k"\n'


def _load(tmp_path: Path, text: str) -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path)


def test_elastic_is_off_without_its_table(tmp_path: Path) -> None:
    assert _load(tmp_path, CLUSTER).elastic == ElasticSettings()
    assert not ElasticSettings().enabled


def test_elastic_table_is_read(tmp_path: Path) -> None:
    text = (
        CLUSTER + "[cluster.elastic]\nenabled = true\nhold = false\n"
        'webhook_url = "https://10.0.0.5:9443/mutate-pods"\nwebhook_listen = "127.0.0.1:0"\n'
        "webhook_timeout = 5\nautoscaler = false\n"
    )
    elastic = _load(tmp_path, text).elastic
    assert elastic.enabled
    assert not elastic.hold
    assert not elastic.autoscaler
    assert elastic.webhook_url == "https://10.0.0.5:9443/mutate-pods"
    assert elastic.webhook_listen == "127.0.0.1:0"
    assert elastic.webhook_timeout == 5
    assert elastic.install_crds  # untouched keys keep their defaults


def test_cluster_table_still_reads_beside_elastic(tmp_path: Path) -> None:
    settings = _load(tmp_path, CLUSTER + "interval = 3\n[cluster.elastic]\nenabled = true\n")
    assert settings.cluster is not None
    assert settings.cluster.interval == 3.0
    assert settings.elastic.enabled


@pytest.mark.parametrize(
    ("elastic", "message"),
    [
        ("enabled = 1\n", "enabled: expected true or false"),
        ("webhooks = true\n", "unknown key(s) webhooks"),
        ("webhook_timeout = 0\n", "webhook_timeout: must be between 1"),
        ("webhook_timeout = 31\n", "webhook_timeout: must be between 1"),
        ('webhook_url = "http://10.0.0.5/mutate-pods"\n', "over HTTPS only"),
        ('webhook_listen = "nowhere"\n', "webhook_listen"),
        ('webhook_service = "just-a-name"\n', "expected NAMESPACE/NAME"),
        ("certificate_days = 10\ncertificate_renew_days = 10\n", "must be less than"),
        ("webhook_service_port = 70000\n", "webhook_service_port: must be between 1"),
    ],
)
def test_bad_elastic_tables_say_what_to_fix(tmp_path: Path, elastic: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, CLUSTER + "[cluster.elastic]\n" + elastic)
    assert message in str(caught.value)
    assert "[cluster.elastic]" in str(caught.value)


def test_elastic_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="expected a table"):
        _load(tmp_path, CLUSTER + "elastic = true\n")


def test_own_namespace_comes_from_the_service_account(tmp_path: Path) -> None:
    outside = ClusterSettings(kubeconfig=tmp_path / "k")
    assert credentials.own_namespace(outside) is None
    inside = ClusterSettings(in_cluster=True, service_account_dir=tmp_path)
    assert credentials.own_namespace(inside) is None  # no file: nothing excluded
    (tmp_path / "namespace").write_text("edgefleet-system\n")
    assert credentials.own_namespace(inside) == "edgefleet-system"
    (tmp_path / "namespace").write_text("not a/name")
    assert credentials.own_namespace(inside) is None
