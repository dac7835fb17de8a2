"""Settings built from the config file: every ``[twins]`` key reaches the twins service."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.settings import TwinsConfig
from edge_agent.twins import Durability
from edge_agent.twins.tls import BrokerTls

_SECRETS = {"admin_password", "admin_password_file", "claim_password", "claim_password_file"}
"""Keys that reach the service as the password they name, not as themselves."""


def test_every_twins_key_reaches_the_service_settings(tmp_path: Path) -> None:
    (tmp_path / "admin").write_text("s3cret\n")
    twins = TwinsConfig(
        enabled=True,
        broker_host="192.0.2.7",
        broker_port=18830,
        broker_tls=True,
        broker_ca_file=tmp_path / "ca.pem",
        broker_cert_file=tmp_path / "agent.pem",
        broker_key_file=tmp_path / "agent.key",
        broker_server_name="broker.example",
        admin_username="dynsec-admin",
        admin_password_file=tmp_path / "admin",
        claim_username="claimer",
        claim_password="claim-pw",
        agent_username="the-agent",
        agent_client_id="agent-id",
        models_dir=tmp_path / "models",
        require_registration=True,
        durability="normal",
        max_devices=12,
        keepalive=7,
        reconnect_max=3.5,
        mqtt_version="3.1.1",
        home_assistant=True,
        home_assistant_prefix="site/ha",
    )
    defaults = TwinsConfig()
    changed = {
        f.name
        for f in dataclasses.fields(TwinsConfig)
        if getattr(twins, f.name) != getattr(defaults, f.name)
    }
    assert changed == {f.name for f in dataclasses.fields(TwinsConfig)} - {
        "admin_password",
        "claim_password_file",
    }, "give every key a value that is not its default, so a dropped key shows"

    built = config.twins_settings(twins, data_dir=tmp_path, node_name="edge-1")

    assert (built.data_dir, built.node_name) == (tmp_path / "twins", "edge-1")
    assert (built.admin_password, built.claim_password) == ("s3cret", "claim-pw")
    assert built.durability is Durability.NORMAL
    # The TLS keys become one BrokerTls (their files are checked at load, not here).
    assert built.broker_tls == BrokerTls(
        ca_file=tmp_path / "ca.pem",
        cert_file=tmp_path / "agent.pem",
        key_file=tmp_path / "agent.key",
        server_name="broker.example",
    )
    tls_keys = {"broker_tls", "broker_ca_file", "broker_cert_file", "broker_key_file"}
    tls_keys.add("broker_server_name")
    for name in (
        {f.name for f in dataclasses.fields(TwinsConfig)} - _SECRETS - {"enabled"} - tls_keys
    ):
        expected = getattr(twins, name)
        if name == "durability":
            expected = Durability(expected)
        assert getattr(built, name) == expected, name


def test_the_local_api_port_flag_keeps_the_configured_host(tmp_path: Path) -> None:
    from edge_agent import cli  # noqa: PLC0415 - the flag handling under test

    path = tmp_path / "agent.toml"
    path.write_text(f'data_dir = "{tmp_path / "data"}"\n[local_api]\nhost = "127.0.0.2"\n')
    args = cli.build_parser().parse_args(
        ["run", "--config", str(path), "--local-api-port", "12345"]
    )
    settings = cli._run_settings(args)
    assert (settings.local_api.host, settings.local_api.port) == ("127.0.0.2", 12345)


def test_cluster_works_table_reaches_the_settings_and_bad_values_say_where(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.toml"
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[cluster]\nin_cluster = true\n'
        '[cluster.works]\nresync_seconds = 5.0\nimpersonate = "edgefleet:work"\n'
    )
    loaded = config.load(path)
    assert (loaded.works.resync_seconds, loaded.works.impersonate) == (5.0, "edgefleet:work")
    path.write_text(
        f'data_dir = "{tmp_path / "data"}"\n[cluster]\nin_cluster = true\n'
        "[cluster.works]\nresync_seconds = -1\n"
    )
    with pytest.raises(config.ConfigError, match=r"\[cluster.works\]"):
        config.load(path)
