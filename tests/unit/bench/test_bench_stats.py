"""The pure helpers of scripts/bench: tool-output parsing, percentiles, the markdown section."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[3] / "scripts" / "bench"


def _load(name: str) -> ModuleType:
    """scripts/bench is a folder of scripts, not a package: load the module by path."""
    spec = importlib.util.spec_from_file_location(name, BENCH / f"{name}.py")
    assert spec is not None
    assert spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


st = _load("bench_stats")

WRK_OUTPUT = """\
Running 3s test @ http://127.0.0.1:41221/small
  1 threads and 1 connections
  Thread Stats   Avg      Stdev     Max   +/- Stdev
    Latency   351.13us    0.86ms  10.60ms   93.64%
    Req/Sec     6.35k     1.97k    8.15k    83.87%
  Latency Distribution
     50%  127.00us
     75%  160.00us
     90%  344.00us
     99%    4.70ms
  19594 requests in 3.10s, 2.62MB read
  Socket errors: connect 0, read 2, write 1, timeout 4
  Non-2xx or 3xx responses: 5
Requests/sec:   6313.97
Transfer/sec:    863.24KB
"""


@pytest.mark.parametrize(
    ("text", "ms"),
    [("127.00us", 0.127), ("4.70ms", 4.7), ("1.50s", 1500.0), ("2.00m", 120_000.0), ("3s", 3000.0)],
)
def test_duration_ms_converts_wrk_units(text: str, ms: float) -> None:
    assert st.duration_ms(text) == pytest.approx(ms)


@pytest.mark.parametrize("text", ["", "12", "1.2ks", "ms", "-1ms"])
def test_duration_ms_rejects_what_is_not_a_duration(text: str) -> None:
    with pytest.raises(st.ParseError):
        st.duration_ms(text)


def test_parse_wrk_reads_percentiles_rate_and_errors() -> None:
    result = st.parse_wrk(WRK_OUTPUT)
    assert result.percentiles_ms == pytest.approx({50.0: 0.127, 75.0: 0.16, 90.0: 0.344, 99.0: 4.7})
    assert result.p(99.0) == pytest.approx(4.7)
    assert result.requests == 19594
    assert result.seconds == pytest.approx(3.1)
    assert result.requests_per_s == pytest.approx(6313.97)
    assert result.socket_errors == 7
    assert result.non_2xx == 5


def test_parse_wrk_without_errors_counts_none() -> None:
    lines = [ln for ln in WRK_OUTPUT.splitlines() if "errors" not in ln and "Non-2xx" not in ln]
    result = st.parse_wrk("\n".join(lines))
    assert (result.socket_errors, result.non_2xx) == (0, 0)


def test_parse_wrk_needs_the_latency_distribution() -> None:
    without = WRK_OUTPUT.replace("Latency Distribution", "Something else")
    with pytest.raises(st.ParseError, match="--latency"):
        st.parse_wrk(without)


def test_parse_curl() -> None:
    result = st.parse_curl("209715200 0.154321")
    assert (result.size, result.seconds) == (209715200, pytest.approx(0.154321))
    assert st.mb_per_s(result.size, result.seconds) == pytest.approx(209.7152 / 0.154321)


@pytest.mark.parametrize("text", ["", "12", "a b", "10 0", "10 0.5 7"])
def test_parse_curl_rejects_other_output(text: str) -> None:
    with pytest.raises(st.ParseError):
        st.parse_curl(text)


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 101)]
    assert st.percentile(values, 50) == 50.0
    assert st.percentile(values, 99) == 99.0
    assert st.percentile(values, 100) == 100.0
    assert st.percentile(values, 0) == 1.0
    assert st.percentile([3.0, 1.0, 2.0], 50) == 2.0
    with pytest.raises(ValueError, match="no values"):
        st.percentile([], 50)
    with pytest.raises(ValueError, match="within"):
        st.percentile([1.0], 101)


def test_ratio_is_none_when_a_side_is_missing() -> None:
    assert st.ratio(3.0, 2.0) == 1.5
    assert st.ratio(None, 2.0) is None
    assert st.ratio(3.0, None) is None
    assert st.ratio(3.0, 0.0) is None


def test_replace_section_creates_the_document() -> None:
    text = st.replace_section("", "## Tunnel\nfigures")
    assert text.startswith("# Benchmarks")
    assert f"{st.START}\n## Tunnel\nfigures\n{st.END}\n" in text


def test_replace_section_appends_and_keeps_other_sections() -> None:
    document = "# Benchmarks\n\n## Kube proxy\nkept\n"
    text = st.replace_section(document, "## Tunnel\nnew")
    assert text.startswith(document.rstrip())
    assert text.endswith(f"{st.START}\n## Tunnel\nnew\n{st.END}\n")


def test_replace_section_replaces_only_between_markers() -> None:
    document = f"# B\n\nbefore\n\n{st.START}\nold\n{st.END}\n\n## Twin\nafter\n"
    text = st.replace_section(document, "new")
    assert text == f"# B\n\nbefore\n\n{st.START}\nnew\n{st.END}\n\n## Twin\nafter\n"
    assert st.replace_section(text, "new") == text


def test_replace_section_refuses_a_start_marker_without_end() -> None:
    with pytest.raises(ValueError, match="no matching"):
        st.replace_section(f"# B\n{st.START}\nold\n", "new")


def test_render_markdown_lists_unmeasured_paths() -> None:
    measured = {
        "status": "measured",
        "bulk_1_MBps": 100.0,
        "bulk_16_MBps": 200.0,
        "c1": {"p50_ms": 0.1, "p99_ms": 1.0, "rps": 5000.0},
    }
    report = {
        "date": "2026-01-01 00:00 UTC",
        "command": "scripts/bench/tunnel --quick",
        "mode": "quick",
        "seconds": 30.0,
        "machine": {"nproc": 2, "cpu_model": "CPU", "mem_gib": 4.0, "kernel": "6.1"},
        "versions": {"Python": "3.11.7"},
        "background_cpu_share": 0.05,
        "paths": {
            "direct": measured,
            "ours": {"status": "not measured", "reason": "pending"},
        },
    }
    text = st.render_markdown(report, "- how")
    assert "| direct | 100 | 200 | 1.00 | 1.00 | - |" in text
    assert "**ours**: not measured — pending" in text
    assert text.rstrip().endswith("- how")
