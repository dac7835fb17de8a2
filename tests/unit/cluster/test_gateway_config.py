"""``[cluster.gateway]`` in the agent config: off by default, each key checked, clear errors."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.cluster.gateway.settings import GatewaySettings
from edge_agent.settings import AgentSettings

CLUSTER = '[cluster]\nkubeconfig = "/k"\n'


def _load(tmp_path: Path, text: str) -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path)


def test_gateway_is_off_without_its_table(tmp_path: Path) -> None:
    assert _load(tmp_path, CLUSTER).gateway == GatewaySettings()
    assert not GatewaySettings().enabled
    assert GatewaySettings().services == ()


def test_gateway_table_is_read(tmp_path: Path) -> None:
    text = (
        CLUSTER + "[cluster.gateway]\nenabled = true\n"
        'services = ["demo/*", "shop/web", "demo/*"]\n'
        "dial_timeout = 2\nconnect_timeout = 0.5\neject_after = 1\neject_base = 1.5\n"
        "eject_max = 30\nmax_streams = 10\n"
    )
    gateway = _load(tmp_path, text).gateway
    assert gateway.enabled
    assert gateway.services == ("demo/*", "shop/web")  # duplicates dropped, order kept
    assert gateway.dial_timeout == 2.0
    assert isinstance(gateway.dial_timeout, float)
    assert gateway.connect_timeout == 0.5
    assert gateway.eject_after == 1
    assert gateway.eject_base == 1.5
    assert gateway.eject_max == 30.0
    assert gateway.max_streams == 10


def test_cluster_and_elastic_still_read_beside_gateway(tmp_path: Path) -> None:
    text = (
        CLUSTER + "interval = 3\n[cluster.elastic]\nenabled = true\n"
        '[cluster.gateway]\nenabled = true\nservices = ["a/b"]\n'
    )
    settings = _load(tmp_path, text)
    assert settings.cluster is not None
    assert settings.cluster.interval == 3.0
    assert settings.elastic.enabled
    assert settings.gateway.services == ("a/b",)


@pytest.mark.parametrize(
    ("gateway", "message"),
    [
        ("enabled = 1\n", "enabled: expected true or false"),
        ("allow = []\n", "unknown key(s) allow"),
        ('services = "demo/*"\n', "services: expected a list"),
        ("services = [1]\n", "services: expected a list"),
        ('services = ["*/web"]\n', "services: '*/web' is not NAMESPACE/NAME"),
        ('services = ["demo"]\n', "is not NAMESPACE/NAME"),
        ('services = ["Demo/web"]\n', "is not NAMESPACE/NAME"),
        ('services = ["demo/web/x"]\n', "is not NAMESPACE/NAME"),
        ('services = ["demo/w*"]\n', "is not NAMESPACE/NAME"),
        ("services = [" + ", ".join(f'"n/s{i}"' for i in range(257)) + "]\n", "at most 256"),
        ("dial_timeout = 0\n", "dial_timeout: must be between"),
        ("dial_timeout = nan\n", "must be a finite number"),
        ('dial_timeout = "3"\n', "dial_timeout: expected float"),
        ("connect_timeout = -1\n", "must not be negative"),
        ("eject_after = 0\n", "eject_after: must be between 1"),
        ("eject_after = 2.5\n", "eject_after: expected int"),
        ("max_streams = 0\n", "max_streams: must be between 1"),
        ("eject_base = 10\neject_max = 5\n", "must not exceed eject_max"),
    ],
)
def test_bad_gateway_tables_say_what_to_fix(tmp_path: Path, gateway: str, message: str) -> None:
    with pytest.raises(config.ConfigError) as caught:
        _load(tmp_path, CLUSTER + "[cluster.gateway]\n" + gateway)
    assert message in str(caught.value)
    assert "[cluster.gateway]" in str(caught.value)


def test_gateway_must_be_a_table(tmp_path: Path) -> None:
    with pytest.raises(config.ConfigError, match="expected a table"):
        _load(tmp_path, CLUSTER + "gateway = true\n")
