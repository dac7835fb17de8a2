"""The alert rules in packaging/prometheus: checked, tested on samples, reading real metrics.

promtool accepts them, each alert fires on the recorded samples that should fire it and not on
the others, and every metric they read exists. promtool comes from its Go module, built by
scripts/kube-build into the folder of the kube binaries (``EDGEFLEET_KUBE_BIN``). The metric
names are checked against what a real ``tunnel-server run`` and a real ``edge-agent run`` (kube
cache on, through the tunnel) serve on /metrics: a renamed metric fails here instead of leaving
an alert that can never fire.
"""

from __future__ import annotations

import os
import re
import subprocess
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import prometheus_client
import pytest
import yaml

from daemon_support.twin_database import Durability
from edge_agent.cluster.elastic.webhook import WebhookMetrics
from edge_agent.twins.outbox import Metrics, Outbox, OutboxCollector, OutboxSettings
from edge_agent.twins.twin_store import TwinStore
from tests.harness.daemons import Agent, Server
from tests.harness.kube import DEFAULT_BIN
from tests.harness.procs import free_port

pytestmark = pytest.mark.timeout(300)

PROMETHEUS = Path(__file__).resolve().parents[3] / "packaging" / "prometheus"
RULES = PROMETHEUS / "edgefleet-alerts.yaml"
RULE_TESTS = PROMETHEUS / "edgefleet-alerts.test.yaml"
PROMTOOL = Path(os.environ.get("EDGEFLEET_KUBE_BIN", DEFAULT_BIN)) / "promtool"

FROM_PROMETHEUS = {"up"}
"""Series Prometheus itself makes for every scrape target, in no daemon's /metrics."""

CLUSTER_MODE_ONLY = {"edge_agent_elastic_webhook_certificate_expiry_timestamp_seconds"}
"""Served only by a cluster-mode agent with [cluster.elastic] on (a member cluster to run):
checked against the agent's WebhookMetrics instead of a scrape."""

TWINS_ONLY = {"edge_agent_twins_outbox_records", "edge_agent_twins_outbox_oldest_age_seconds"}
"""Served only by an agent with [twins] on (an MQTT broker to run): checked against the
outbox's collector on a real twin store instead of a scrape."""

_PROMQL_WORDS = {"and", "or", "unless", "by", "without", "on", "ignoring", "bool", "offset"}
_PROMQL_WORDS |= {"group_left", "group_right", "inf", "nan"}


def promtool(*args: str | Path) -> subprocess.CompletedProcess[str]:
    # scripts/kube-build installs promtool: a missing tool fails the test, never skips it.
    assert PROMTOOL.is_file(), f"{PROMTOOL} missing: run scripts/kube-build"
    return subprocess.run(
        [str(PROMTOOL), *map(str, args)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=PROMETHEUS,  # the test file names its rule file relative to itself
    )


def rules() -> list[dict[str, str]]:
    loaded = yaml.safe_load(RULES.read_text())
    return [rule for group in loaded["groups"] for rule in group["rules"]]


def metric_names(expr: str) -> set[str]:
    """The series names a PromQL expression reads (label matchers, groupings, functions out)."""
    expr = re.sub(r'"(?:[^"\\]|\\.)*"', "", expr)  # string literals
    expr = re.sub(r"\{[^}]*\}", "", expr)  # label matchers
    expr = re.sub(r"\[[^\]]*\]", "", expr)  # range durations
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = re.findall(r"(?<![\w.])([A-Za-z_:][\w:]*)\b(?!\s*\()", expr)
    return {name for name in names if name.lower() not in _PROMQL_WORDS}


def exposed(text: str) -> set[str]:
    """Every series name a /metrics page can carry, from its # TYPE lines."""
    names = set()
    for name, kind in re.findall(r"(?m)^# TYPE (\S+) (\S+)$", text):
        names.add(name)
        if kind in {"histogram", "summary"}:
            names |= {f"{name}_sum", f"{name}_count", f"{name}_bucket"}
    return names


@pytest.fixture(scope="module")
def pages(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, set[str]]]:
    """The metric names of a real server and a real agent with its kube cache on, by daemon."""
    workdir = tmp_path_factory.mktemp("alert-rules")
    server = Server(workdir=workdir)
    server.start()
    agent = Agent(
        name="scraped",
        workdir=workdir,
        server=server,
        tables={"kube": {"enabled": True, "upstream": "tunnel", "port": free_port()}},
    )
    try:
        agent.join()
        agent.start()
        agent.wait_connected()
        _, server_page = server.get("/metrics")
        url = f"http://127.0.0.1:{agent.local_api_port}/metrics"
        with urllib.request.urlopen(url, timeout=10) as answer:
            agent_page = answer.read()
        yield {"server": exposed(server_page.decode()), "agent": exposed(agent_page.decode())}
    finally:
        agent.stop()
        server.stop()


@pytest.fixture(scope="module")
def scraped(pages: dict[str, set[str]]) -> set[str]:
    """Every metric name either daemon exports."""
    return pages["server"] | pages["agent"]


def test_both_daemons_export_process_and_gc_figures(pages: dict[str, set[str]]) -> None:
    """Memory, CPU, open files and the garbage collector: what an operator looks at first."""
    wanted = {
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "python_gc_collections_total",
        "python_info",
    }
    for daemon, names in pages.items():
        assert wanted <= names, (daemon, wanted - names)


def test_promtool_accepts_the_rules() -> None:
    done = promtool("check", "rules", RULES)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"SUCCESS: {len(rules())} rules found" in done.stdout, done.stdout


def test_each_alert_fires_on_its_samples_and_not_on_the_others() -> None:
    done = promtool("test", "rules", RULE_TESTS)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "SUCCESS" in done.stdout, done.stdout


def test_every_alert_has_recorded_samples() -> None:
    tested = set(re.findall(r"(?m)^\s+alertname: (\w+)$", RULE_TESTS.read_text()))
    assert tested == {rule["alert"] for rule in rules()}


def test_the_metric_name_reader_finds_what_an_expression_reads() -> None:
    expr = (
        'sum without (state) (increase(a_total{state="x"}[30m])) - on (job) b'
        ' > 0 and c_seconds - time() < 7 * 86400 unless up{job="edge-agent"} == 0'
    )
    assert metric_names(expr) == {"a_total", "b", "c_seconds", "up"}


def test_every_metric_the_rules_read_is_exported(scraped: set[str]) -> None:
    used = {rule["alert"]: metric_names(rule["expr"]) for rule in rules()}
    assert all(used.values()), used  # every rule reads something the reader found
    names = set().union(*used.values())
    missing = sorted(names - scraped - FROM_PROMETHEUS - CLUSTER_MODE_ONLY - TWINS_ONLY)
    assert not missing, f"the rules read metrics no daemon exports: {missing}"


def test_cluster_mode_metrics_the_rules_read_exist() -> None:
    registry = prometheus_client.CollectorRegistry()
    WebhookMetrics(registry)
    page = prometheus_client.generate_latest(registry).decode()
    assert exposed(page) >= CLUSTER_MODE_ONLY


def test_twins_metrics_the_rules_read_exist(tmp_path: Path) -> None:
    store = TwinStore(tmp_path / "twins.sqlite3", node="n", durability=Durability.NORMAL)
    try:
        outbox = Outbox(
            store=store, sender=_NoCloud(), settings=OutboxSettings(), metrics=Metrics()
        )
        registry = prometheus_client.CollectorRegistry()
        registry.register(OutboxCollector(outbox))
        page = prometheus_client.generate_latest(registry).decode()
    finally:
        store.close()
    assert exposed(page) >= TWINS_ONLY


class _NoCloud:
    async def deliver(self, batch: list[dict[str, Any]]) -> None:
        raise ConnectionError(f"not used: the outbox is not run here ({len(batch)} records)")
