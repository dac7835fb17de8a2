"""One metric prefix per daemon, read from the source: every metric a daemon's code defines.

The integration test scrapes a running pair, which only shows the metrics of the features it
switched on; this one reads every constructor call of the Prometheus client in each daemon's
package, so a metric added to a feature no test runs still cannot take another prefix.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]

_CONSTRUCTORS = {
    "Counter",
    "Gauge",
    "Histogram",
    "Summary",
    "Info",
    "Enum",
    "CounterMetricFamily",
    "GaugeMetricFamily",
    "HistogramMetricFamily",
    "InfoMetricFamily",
}


def metric_names(package: str, root: Path = ROOT) -> list[tuple[str, int, str]]:
    """(file, line, the name argument as written) of every metric constructor in a package."""
    found = []
    for path in sorted((root / package).rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if not isinstance(node, ast.Call) or not node.args:
                continue
            func = node.func
            called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
            # A metric's name is a string or an f-string; anything else is another Counter
            # (collections.Counter over an iterable, say), not a metric.
            if called in _CONSTRUCTORS and isinstance(node.args[0], (ast.Constant, ast.JoinedStr)):
                name = _resolve(node.args[0], path)
                found.append((str(path.relative_to(root)), node.lineno, name))
    return found


def _resolve(argument: ast.expr, path: Path) -> str:
    """The name's literal text; an f-string's leading part, with a module constant resolved."""
    if isinstance(argument, ast.Constant) and isinstance(argument.value, str):
        return argument.value
    if isinstance(argument, ast.JoinedStr) and argument.values:
        head = argument.values[0]
        if isinstance(head, ast.Constant):
            return str(head.value)
        if isinstance(head, ast.FormattedValue) and isinstance(head.value, ast.Name):
            return _constant(head.value.id, path)
    return ast.unparse(argument)


def _constant(name: str, path: Path) -> str:
    """A string a module or function assigns to ``name`` (how the elastic code keeps its prefix)."""
    pattern = re.compile(rf"\b{name}\s*=\s*\"([a-z_]+)\"")
    match = pattern.search(path.read_text())
    return match.group(1) if match else name


@pytest.mark.parametrize(
    ("package", "prefix"), [("edge_agent", "edge_agent_"), ("tunnel_server", "tunnel_server_")]
)
def test_every_metric_a_daemon_defines_has_its_prefix(package: str, prefix: str) -> None:
    names = metric_names(package)
    assert len(names) >= 20, f"the scan found too few metrics in {package}: {names}"
    assert [entry for entry in names if not entry[2].startswith(prefix)] == []


def test_the_scan_sees_a_wrong_prefix(tmp_path: Path) -> None:
    """The check can fail: a metric with another prefix is reported, f-strings included."""
    module = tmp_path / "pkg" / "metrics.py"
    module.parent.mkdir()
    module.write_text(
        'import prometheus_client\n_METRIC = "fleet_x"\n'
        'a = prometheus_client.Counter("agent_y", "y")\n'
        'b = prometheus_client.Gauge(f"{_METRIC}_z", "z")\n'
        "import collections\nc = collections.Counter(x for x in 'ab')\n"
    )
    assert [name for _, _, name in metric_names("pkg", tmp_path)] == ["agent_y", "fleet_x"]
