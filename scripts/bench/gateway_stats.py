"""Pure helpers of the gateway benchmark: latency summaries, failover time, nginx's config.

No I/O here, so tests/unit/bench can check it line by line. Times are seconds of
``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process of the machine), so the
load process's request records and the bench's kill time compare directly.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass

from bench_stats import percentile


@dataclass(frozen=True, slots=True)
class Record:
    """One request of the load generator."""

    start: float
    """Monotonic seconds when its first byte was written."""
    end: float
    """Monotonic seconds when its answer was complete, or when it failed."""
    ok: bool
    """A 2xx answer came back."""


@dataclass(frozen=True, slots=True)
class Failover:
    seconds: float | None
    """From the kill to the end of the last disturbed request; None: it never settled."""
    disturbed: int
    """Requests after the kill that failed or took longer than ``slow_s``."""
    failed: int
    """Requests after the kill that failed (an error or a non-2xx answer)."""
    after: int
    """Requests that ended after the kill."""
    slow_s: float
    """The latency above which a request counts as disturbed."""
    max_latency_s: float
    """The slowest request that ended after the kill."""
    p99_before_s: float
    """p99 latency of the good requests that ended before the kill (0 when none did)."""


SETTLED_REQUESTS = 20
"""Successful requests needed after the last disturbed one to call the failover done."""
MIN_SLOW_S = 0.05
"""A request is slow (disturbed) above max(this, SLOW_FACTOR x the p99 before the kill)."""
SLOW_FACTOR = 5.0
MAX_SLOW_S = 1.0
"""...but never above the issue's failover goal: a request held that long is disturbed however
noisy the machine was before the kill."""


def failover(records: Sequence[Record], kill_at: float) -> Failover:
    """How long requests were disturbed after ``kill_at``.

    Disturbed: failed, or slower than max(``MIN_SLOW_S``, ``SLOW_FACTOR`` x the p99 of the
    requests that ended before the kill), at most ``MAX_SLOW_S``, so a request held until a
    retry succeeds counts as much as one that failed. Failover time: from the kill to the end of
    the last disturbed request (0 when none was); None when fewer than ``SETTLED_REQUESTS``
    requests started after it and all succeeded (the load never settled on the other cluster).
    """
    before = [r.end - r.start for r in records if r.end < kill_at and r.ok]
    p99_before = percentile(before, 99) if before else 0.0
    slow_s = min(MAX_SLOW_S, max(MIN_SLOW_S, SLOW_FACTOR * p99_before))
    after = [r for r in records if r.end >= kill_at]
    disturbed = [r for r in after if not r.ok or r.end - r.start > slow_s]
    until = max((r.end for r in disturbed), default=kill_at)
    settled = [r for r in after if r.start > until]
    seconds = until - kill_at if len(settled) >= SETTLED_REQUESTS else None
    return Failover(
        seconds=seconds,
        disturbed=len(disturbed),
        failed=sum(1 for r in after if not r.ok),
        after=len(after),
        slow_s=slow_s,
        max_latency_s=max((r.end - r.start for r in after), default=0.0),
        p99_before_s=p99_before,
    )


def latency_ms(samples_s: Sequence[float]) -> dict[str, float]:
    """p50/p99/max in milliseconds of latencies given in seconds."""
    ms = [s * 1000.0 for s in samples_s]
    return {
        "p50_ms": round(percentile(ms, 50), 3),
        "p99_ms": round(percentile(ms, 99), 3),
        "max_ms": round(max(ms), 3),
    }


def added_ms(path: float | None, direct: float | None) -> float | None:
    """What a path adds to the direct figure (ms), or None when either is missing."""
    return None if path is None or direct is None else round(path - direct, 3)


def nginx_config(*, prefix: str, port: int, upstream: str, workers: int | str) -> str:
    """A self-contained nginx.conf: a reverse proxy on 127.0.0.1:port to ``upstream``.

    Non-daemon with its master (``daemon off; master_process on``), every path under
    ``prefix``; keep-alive both ways (64 idle upstream connections per worker), no access log,
    like a tuned production proxy; buffering stays nginx's default.
    """
    return f"""daemon off;
master_process on;
worker_processes {workers};
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{
    worker_connections 4096;
}}
http {{
    access_log off;
    client_body_temp_path {prefix}/client_body;
    proxy_temp_path {prefix}/proxy;
    fastcgi_temp_path {prefix}/fastcgi;
    uwsgi_temp_path {prefix}/uwsgi;
    scgi_temp_path {prefix}/scgi;
    keepalive_requests 1000000;
    upstream backend {{
        server {upstream};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{port} backlog=1024;
        location / {{
            proxy_pass http://backend;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
        }}
    }}
}}
"""


def goals(
    *,
    gateway_rps: float | None,
    nginx_rps: float | None,
    added_p50_ms: float | None,
    failover_s: float | None,
) -> dict[str, bool | None]:
    """The issue's goals: met (True), NOT met (False), not measured (None)."""
    return {
        "gateway_rps_at_least_0.5x_nginx": (
            None if gateway_rps is None or nginx_rps is None else gateway_rps >= 0.5 * nginx_rps
        ),
        "added_p50_at_most_1ms": None if added_p50_ms is None else added_p50_ms <= 1.0,
        "failover_under_1s": None if failover_s is None else failover_s < 1.0,
    }


_ATTEMPT = re.compile(
    r'^tunnel_server_gateway_attempts_total\{backend="([^"]*)",outcome="([^"]*)"\}\s+(\S+)$'
)


def attempts(metrics_text: str) -> dict[str, float]:
    """``backend outcome`` -> count, from the server's ``tunnel_server_gateway_attempts_total``."""
    found: dict[str, float] = {}
    for line in metrics_text.splitlines():
        match = _ATTEMPT.match(line)
        if match is not None:
            found[f"{match.group(1)} {match.group(2)}"] = float(match.group(3))
    return found


def delta(after: dict[str, float], before: dict[str, float]) -> dict[str, int]:
    """Counters' growth between two scrapes (those that grew)."""
    return {
        key: int(value - before.get(key, 0.0))
        for key, value in sorted(after.items())
        if value > before.get(key, 0.0)
    }
