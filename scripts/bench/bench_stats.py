"""Pure helpers of the benchmarks: parse tool output, summarise runs, render the markdown table.

No I/O here, so tests/unit/bench can check it line by line.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MB = 1_000_000
GIB = 1 << 30

_UNITS_MS = {"us": 0.001, "ms": 1.0, "s": 1000.0, "m": 60_000.0, "h": 3_600_000.0}
_DURATION = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)(us|ms|s|m|h)\s*$")
_PERCENTILE_LINE = re.compile(r"^\s*([0-9]+(?:\.[0-9]+)?)%\s+(\S+)\s*$")


class ParseError(ValueError):
    """A tool printed something this module does not understand."""


def duration_ms(text: str) -> float:
    """Convert one of wrk's durations (``123.00us``, ``4.70ms``, ``1.02s``, ``2.00m``) to ms."""
    match = _DURATION.match(text)
    if match is None:
        raise ParseError(f"not a wrk duration: {text!r}")
    return float(match.group(1)) * _UNITS_MS[match.group(2)]


@dataclass(frozen=True, slots=True)
class WrkResult:
    percentiles_ms: Mapping[float, float]
    requests: int
    seconds: float
    requests_per_s: float
    socket_errors: int
    non_2xx: int

    def p(self, percent: float) -> float:
        return self.percentiles_ms[percent]


def parse_wrk(text: str) -> WrkResult:
    """Parse the output of ``wrk --latency``."""
    percentiles: dict[float, float] = {}
    in_distribution = False
    for line in text.splitlines():
        if line.strip() == "Latency Distribution":
            in_distribution = True
            continue
        if in_distribution:
            match = _PERCENTILE_LINE.match(line)
            if match is None:
                in_distribution = False
            else:
                percentiles[float(match.group(1))] = duration_ms(match.group(2))
    if not percentiles:
        raise ParseError("no 'Latency Distribution' in wrk's output (was --latency given?)")
    done = re.search(r"^\s*(\d+) requests in ([0-9.]+)(us|ms|s|m)", text, re.MULTILINE)
    rate = re.search(r"^Requests/sec:\s*([0-9.]+)", text, re.MULTILINE)
    if done is None or rate is None:
        raise ParseError("no request count or Requests/sec in wrk's output")
    errors = 0
    socket_errors = re.search(
        r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", text
    )
    if socket_errors is not None:
        errors = sum(int(n) for n in socket_errors.groups())
    non_2xx = re.search(r"Non-2xx or 3xx responses:\s*(\d+)", text)
    return WrkResult(
        percentiles_ms=percentiles,
        requests=int(done.group(1)),
        seconds=duration_ms(done.group(2) + done.group(3)) / 1000.0,
        requests_per_s=float(rate.group(1)),
        socket_errors=errors,
        non_2xx=int(non_2xx.group(1)) if non_2xx else 0,
    )


@dataclass(frozen=True, slots=True)
class CurlResult:
    size: int
    seconds: float


def parse_curl(text: str) -> CurlResult:
    """Parse ``curl -w '%{size_download} %{time_total}'``."""
    fields = text.split()
    if len(fields) != 2:
        raise ParseError(f"expected '<size> <seconds>' from curl, got {text!r}")
    try:
        size, seconds = int(fields[0]), float(fields[1])
    except ValueError:
        raise ParseError(f"expected '<size> <seconds>' from curl, got {text!r}") from None
    if seconds <= 0:
        raise ParseError(f"curl reported a non-positive time: {text!r}")
    return CurlResult(size=size, seconds=seconds)


def mb_per_s(size: int, seconds: float) -> float:
    return size / seconds / MB


def percentile(values: Sequence[float], percent: float) -> float:
    """Nearest-rank percentile (the value at or above ``percent`` of the sorted values)."""
    if not values:
        raise ValueError("percentile of no values")
    if not 0 <= percent <= 100:
        raise ValueError("percent must be within 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(percent / 100 * len(ordered)))
    return ordered[rank - 1]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def ratio(numerator: float | None, denominator: float | None) -> float | None:
    if numerator is None or denominator is None or denominator == 0:
        return None
    return numerator / denominator


def rounded(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


# ---------------------------------------------------------------- markdown

START = "<!-- bench:tunnel:start -->"
END = "<!-- bench:tunnel:end -->"
DOC_HEAD = """# Benchmarks

Figures measured on one machine, each next to its baseline in the same run (DESIGN.md
section 8). Each section is rewritten by its script between its marker comments; text outside
the markers is kept.
"""


def replace_section(document: str, section: str, start: str = START, end: str = END) -> str:
    """Put ``section`` between the markers of ``document``, or append it when they are missing."""
    block = f"{start}\n{section.strip()}\n{end}\n"
    if not document.strip():
        return f"{DOC_HEAD}\n{block}"
    begin = document.find(start)
    if begin < 0:
        return f"{document.rstrip()}\n\n{block}"
    finish = document.find(end, begin)
    if finish < 0:
        raise ValueError(f"{start} has no matching {end}; fix the file by hand")
    tail = document[finish + len(end) :].lstrip("\n")
    return document[:begin] + block + ("\n" + tail if tail else "")


def write_marked_section(
    path: Path, section: str, *, start: str, end: str, heading: str, howto: str
) -> None:
    """Rewrite the part of ``path`` between ``start`` and ``end`` with ``section``.

    ``section`` carries its own markers (the benches render them); a file without them gets
    ``## heading``, ``howto`` and the section appended.
    """
    text = path.read_text() if path.exists() else ""
    if start in text and end in text:
        inner = section.strip().removeprefix(start).removesuffix(end).strip("\n")
        text = replace_section(text, inner, start, end)
    else:
        text = f"{text.rstrip(chr(10))}\n\n## {heading}\n\n{howto}\n{section}\n"
    path.write_text(text)


def fmt(value: object, digits: int = 1) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        return f"{value:,.{digits}f}"
    return str(value)


def _latency_row(name: str, figures: Mapping[str, Any]) -> str:
    cells = [name]
    for conc in ("c1", "c100"):
        lat = figures.get(conc) or {}
        cells += [
            fmt(lat.get("p50_ms"), 3),
            fmt(lat.get("p99_ms"), 3),
            fmt(figures.get(f"added_{conc}_p50_ms"), 3),
            fmt(lat.get("rps"), 0),
        ]
    return "| " + " | ".join(cells) + " |"


def render_markdown(report: Mapping[str, Any], how_measured: str) -> str:
    """The tunnel section of docs/benchmarks.md from the JSON report."""
    machine = report["machine"]
    versions = report["versions"]
    paths: Mapping[str, Mapping[str, Any]] = report["paths"]
    lines = [
        "## Tunnel: direct vs our tunnel vs `ssh -R` vs chisel",
        "",
        f"Run {report['date']} with `{report['command']}` ({report['mode']} mode, "
        f"{report['seconds']:.0f} s). Machine: {machine['nproc']} CPUs, {machine['cpu_model']}, "
        f"{machine['mem_gib']:.1f} GiB RAM, Linux {machine['kernel']}. Versions: "
        + ", ".join(f"{k} {v}" for k, v in versions.items())
        + ".",
        "",
        (
            f"Other processes on the machine used {report.get('background_cpu_share', 0):.0%} "
            "of its CPU during the run (they compete with the paths; figures from a busy "
            "machine are lower and noisier)."
        ),
        "",
        "### Throughput of bulk downloads (MB/s, 1 MB = 10^6 bytes; higher is better)",
        "",
        (
            "| Path | 1 stream | 16 streams | 1 stream vs direct | 16 streams vs direct "
            "| path CPU s/GiB (1 stream) |"
        ),
        "|---|--:|--:|--:|--:|--:|",
    ]
    direct = paths.get("direct", {})
    for name, figures in paths.items():
        if figures.get("status") != "measured":
            continue
        lines.append(
            "| "
            + " | ".join(
                [
                    _label(name, report),
                    fmt(figures.get("bulk_1_MBps"), 0),
                    fmt(figures.get("bulk_16_MBps"), 0),
                    fmt(ratio(figures.get("bulk_1_MBps"), direct.get("bulk_1_MBps")), 2),
                    fmt(ratio(figures.get("bulk_16_MBps"), direct.get("bulk_16_MBps")), 2),
                    fmt(figures.get("cpu_s_per_GiB_1"), 2),
                ]
            )
            + " |"
        )
    lines += [
        "",
        "### Latency of small requests (ms; lower is better)",
        "",
        "Added = path p50 - direct p50 at the same concurrency.",
        "",
        (
            "| Path | c=1 p50 | c=1 p99 | c=1 added p50 | c=1 req/s "
            "| c=100 p50 | c=100 p99 | c=100 added p50 | c=100 req/s |"
        ),
        "|---|--:|--:|--:|--:|--:|--:|--:|--:|",
    ]
    lines += [
        _latency_row(_label(name, report), figures)
        for name, figures in paths.items()
        if figures.get("status") == "measured"
    ]
    details = [
        f"- {_label(name, report)}: "
        + "; ".join(f"{key} {value}" for key, value in figures["info"].items())
        for name, figures in paths.items()
        if figures.get("info")
    ]
    if details:
        lines += ["", *details]
    not_measured = [
        f"- **{name}**: {figures.get('status')} — {figures.get('reason', '')}"
        for name, figures in paths.items()
        if figures.get("status") != "measured"
    ]
    if not_measured:
        lines += ["", "Not measured in this run:", "", *not_measured]
    if report.get("ratios"):
        lines += ["", "### Our tunnel against the baselines (ours / baseline)", ""]
        lines += ["| Figure | " + " | ".join(report["ratios"]) + " |"]
        lines += ["|---|" + "--:|" * len(report["ratios"])]
        figures_names = list(dict.fromkeys(k for r in report["ratios"].values() for k in r))
        lines += [
            f"| {figure} | "
            + " | ".join(fmt(r.get(figure), 2) for r in report["ratios"].values())
            + " |"
            for figure in figures_names
        ]
    lines += agents_markdown(report.get("agents", []), report.get("agents_plan"))
    if report.get("goals"):
        lines += ["", "Goals of issue 3:", ""]
        lines += [
            f"- {goal}: {'met' if met else 'NOT met'}" for goal, met in report["goals"].items()
        ]
    lines += ["", "### How measured", "", how_measured.strip()]
    return "\n".join(lines) + "\n"


def _label(name: str, report: Mapping[str, Any]) -> str:
    labels: Mapping[str, str] = report.get("labels", {})
    return labels.get(name, name)


# ---------------------------------------------------------------- idle agents

_AGENT_ROWS: tuple[tuple[str, str, int], ...] = (
    ("sessions held by the server (its `tunnel_server_sessions` gauge)", "sessions_held", 0),
    ("server RSS before the sessions (MiB)", "server_rss_before_MiB", 1),
    ("server RSS with every session up (MiB)", "server_rss_after_MiB", 1),
    ("**server RSS per agent (KiB)**", "rss_per_agent_KB", 1),
    ("server CPU while idle (% of one core)", "server_idle_cpu_pct", 1),
    ("load process RSS (MiB) / per agent (KiB)", "load_rss", 1),
    ("load process CPU while idle (% of one core)", "load_idle_cpu_pct", 1),
    ("tokens created / joins done (s)", "join", 2),
    ("first connect of all, paced (s)", "connect_s", 2),
    ("server restart: SIGKILL -> `/readyz` again (s)", "restart_ready_s", 2),
    ("**all reconnected, from the kill (s)**", "reconnect_s", 2),
    ("all reconnected, from `/readyz` (s)", "reconnect_after_ready_s", 2),
    ("reconnected within the time limit", "reconnected", 0),
    ("CPU during the reconnect: server / load process (s)", "reconnect_cpu", 1),
    ("failed connection attempts during the reconnect", "failures", 0),
    ("SYNs dropped by full listen queues meanwhile (whole machine)", "listen_queue_drops", 0),
    ("server: 503 + Retry-After / closed before TLS / failed handshakes", "admission", 0),
    ("other processes' CPU during the reconnect (% of the machine)", "other_cpu_pct", 1),
    ("load average (1 min): at the kill / all back", "load_avg", 2),
)


def _counter_sum(figures: Mapping[str, Any], prefix: str) -> str:
    """Sum of the server's counter samples whose key starts with ``prefix`` (``-`` if none)."""
    counters: Mapping[str, float] = figures.get("server_counters") or {}
    values = [v for k, v in counters.items() if k.startswith(prefix)]
    return f"{int(sum(values)):,}" if values else "-"


def _admission(figures: Mapping[str, Any]) -> str:
    if "server_counters" not in figures:
        return "-"
    return " / ".join(
        _counter_sum(figures, prefix)
        for prefix in (
            'tunnel_server_session_refused_total{reason="busy"}',
            "tunnel_server_tls_dropped_total",
            'tunnel_server_tls_handshakes_total{result="failed"}',
        )
    )


def _failures(figures: Mapping[str, Any]) -> str:
    failures: Mapping[str, int] = figures.get("connect_failures") or {}
    return ", ".join(f"{n:,} {kind}" for kind, n in failures.items()) or "0"


_COMBINED: dict[str, Callable[[Mapping[str, Any]], str]] = {
    "load_rss": lambda f: f"{fmt(f.get('load_rss_MiB'))} / {fmt(f.get('load_rss_per_agent_KB'))}",
    "join": lambda f: f"{fmt(f.get('tokens_s'))} / {fmt(f.get('join_s'))}",
    "reconnect_cpu": lambda f: (
        f"{fmt(f.get('reconnect_server_cpu_s'))} / {fmt(f.get('reconnect_load_cpu_s'))}"
    ),
    "failures": _failures,
    "reconnected": lambda f: f"{fmt(f.get('reconnected'))} of {fmt(f.get('agents'))}",
    "admission": _admission,
    "load_avg": lambda f: " / ".join(fmt(v, 2) for v in f.get("load_avg") or []) or "-",
}


def _agent_cell(figures: Mapping[str, Any], key: str, digits: int) -> str:
    if figures.get("status") != "measured":
        return str(figures.get("status", "-")) if key == "sessions_held" else "-"
    if key in _COMBINED:
        return _COMBINED[key](figures)
    value = figures.get(key)
    if isinstance(value, int) and not isinstance(value, bool):
        return f"{value:,}"
    return fmt(float(value) if isinstance(value, int | float) else value, digits)


def _agent_header(figures: Mapping[str, Any]) -> str:
    mode = figures.get("admission")
    return f"{int(figures['agents']):,} agents" + (f", admission {mode}" if mode else "")


def agents_markdown(
    rounds: Sequence[Mapping[str, Any]], plan: Mapping[str, Any] | None
) -> list[str]:
    """The idle-agent table: one column per agent count."""
    if not rounds:
        return []
    lines = [
        "",
        "### Idle agents on one server process",
        "",
        "| Figure | " + " | ".join(_agent_header(r) for r in rounds) + " |",
        "|---|" + "--:|" * len(rounds),
    ]
    lines += [
        f"| {label} | " + " | ".join(_agent_cell(r, key, d) for r in rounds) + " |"
        for label, key, d in _AGENT_ROWS
    ]
    failed = [
        f"- {_agent_header(r)}: {r.get('status')} — {r.get('reason', '')}"
        for r in rounds
        if r.get("status") != "measured"
    ]
    if failed:
        lines += ["", *failed]
    if plan:
        lines += [
            "",
            (
                "How: a fresh `tunnel-server run` per agent count (columns of one count "
                "share its fleet: the bring-up and idle figures, and one restart per admission "
                "mode, each after the sessions lived past the agents' `healthy_after`); a "
                "separate Python process "
                "(`scripts/bench/agents_load.py`) creates the tokens with the server's Python "
                "API, joins every node with its own P-256 key through `POST /api/v1/join`, then "
                "holds one WSS + mTLS session per node with `tunnel_aio.TunnelConnection`. "
                "RSS per agent = (server RSS with all sessions up - before) / agents, after "
                f"{plan.get('settle_s')} s of settling; idle CPU over {plan.get('idle_s')} s. "
                "Restart = SIGKILL of the server and a new `tunnel-server run` on the same port "
                "and data dir; every node then reconnects on its own like `edge-agent run` "
                f"(full jitter, base {plan.get('backoff_base')} s, cap "
                f"{plan.get('backoff_cap')} s), unpaced, and follows a 503's `Retry-After` "
                "like the agent, over the connection it keeps. The load process keeps asyncio's "
                "per-TLS-connection buffer at 32 KiB (the server runs as shipped). The "
                "baselines have no equivalent in this script."
            ),
        ]
    return lines


def agents_summary(rounds: Sequence[Mapping[str, Any]]) -> list[str]:
    """Short stdout lines for the idle-agent rounds."""
    out: list[str] = []
    for r in rounds:
        if r.get("status") != "measured":
            out.append(f"agents {r.get('agents')}: {r.get('status')}: {r.get('reason', '')}")
            continue
        out.append(
            f"agents {int(r['agents']):,}"
            + (f" (admission {r['admission']})" if r.get("admission") else "")
            + f": held {r.get('sessions_held')}, "
            f"{fmt(r.get('rss_per_agent_KB'), 1)} KiB RSS/agent, "
            f"idle CPU {fmt(r.get('server_idle_cpu_pct'), 1)}%, "
            f"reconnected {r.get('reconnected')} in {fmt(r.get('reconnect_s'), 1)} s after kill, "
            f"failures {_failures(r)}"
        )
    return out
