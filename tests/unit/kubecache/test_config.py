# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""The ``[kube]`` table of the agent's config file: defaults, parsing, refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from edge_agent import config
from edge_agent.kubecache.settings import DEFAULT_CACHE_AGENTS
from edge_agent.settings import AgentSettings


def load(tmp_path: Path, text: str) -> AgentSettings:
    path = tmp_path / "agent.toml"
    path.write_text(text)
    return config.load(path)


def test_kube_is_off_by_default_and_caches_beside_the_data_dir(tmp_path: Path) -> None:
    settings = config.load(None, overrides={"data_dir": tmp_path})
    assert settings.kube.enabled is False
    proxy = settings.kube.proxy_settings(settings.data_dir)
    assert proxy.cache_dir == tmp_path / "kubecache"
    assert proxy.port == 10261
    assert proxy.host == "127.0.0.1"
    assert proxy.cache_agents == DEFAULT_CACHE_AGENTS


def test_kube_table_sets_upstream_listener_agents_and_health(tmp_path: Path) -> None:
    settings = load(
        tmp_path,
        """
        [kube]
        enabled = true
        kubeconfig = "/etc/k.conf"
        server = "https://10.0.0.1:6443"
        port = 0
        cache_agents = ["kubelet", "*"]
        cache_dir = "/srv/cache"
        request_timeout = 30
        [kube.health]
        interval = 1
        failure_threshold = 5
        """,
    )
    kube = settings.kube
    assert kube.enabled is True
    assert kube.kubeconfig == Path("/etc/k.conf")
    assert kube.server == "https://10.0.0.1:6443"
    proxy = kube.proxy_settings(settings.data_dir)
    assert proxy.cache_dir == Path("/srv/cache")
    assert proxy.port == 0
    assert proxy.cache_agents == frozenset({"kubelet", "*"})
    assert proxy.request_timeout == 30.0
    assert proxy.health.interval == 1.0
    assert proxy.health.failure_threshold == 5
    assert proxy.health.success_threshold == 2


@pytest.mark.parametrize(
    ("text", "complaint"),
    [
        ("[kube]\nenabled = 1\n", "true or false"),
        ("[kube]\nhost = '0.0.0.0'\n", "unknown key"),
        ("[kube]\nmin_file_size = 1\n", "unknown key"),
        ("[kube]\nport = 70000\n", "between"),
        ("[kube]\ncache_agents = 'kubelet'\n", "list of component names"),
        ("[kube]\ncache_agents = ['Kube Let']\n", "not a component name"),
        ("[kube]\nserver = 'ftp://x'\n", "http(s)://"),
        ("[kube.health]\nfailure_threshold = 0\n", "between"),
        ("[kube.health]\nbogus = 1\n", "unknown key"),
        ("kube = 3\n", "must be a table"),
    ],
)
def test_bad_kube_settings_are_refused_with_the_key_named(
    tmp_path: Path, text: str, complaint: str
) -> None:
    with pytest.raises(config.ConfigError, match="kube") as caught:
        load(tmp_path, text)
    assert complaint in str(caught.value)
