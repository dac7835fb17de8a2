"""The recent figures of a route's backends, and the gateway metrics' per-route series."""

from __future__ import annotations

import prometheus_client
import pytest

from tunnel_server.fleet.gateway import Decision, GatewayServer
from tunnel_server.fleet.gateway.figures import MAX_SAMPLES, WINDOW_SECONDS, Figures
from tunnel_server.fleet.gateway.headers import HeaderModifier
from tunnel_server.fleet.gateway.server import GatewayMetrics
from tunnel_server.tunnel.http_over_stream import ResponseDeclined

BACKEND = "zone-a/demo/web:80"


def test_counts_errors_and_percentiles_over_the_window() -> None:
    figures = Figures()
    for n in range(100):
        figures.record("shop", BACKEND, error=n % 10 == 0, seconds=(n + 1) / 1000, now=100.0)
    assert figures.snapshot("shop", BACKEND, now=100.0) == {
        "requests": 100,
        "errors": 10,
        "latencyP50Ms": 50.0,
        "latencyP99Ms": 99.0,
    }
    assert figures.snapshot("shop", "zone-b/demo/web:80", now=100.0) == {"requests": 0, "errors": 0}
    # A window later, everything has aged out.
    assert figures.snapshot("shop", BACKEND, now=100.0 + WINDOW_SECONDS + 1) == {
        "requests": 0,
        "errors": 0,
    }


def test_samples_are_bounded_and_deleted_routes_forgotten() -> None:
    figures = Figures()
    for n in range(MAX_SAMPLES + 500):
        figures.record("shop", BACKEND, error=False, seconds=1.0 if n < 500 else 0.002, now=10.0)
    snap = figures.snapshot("shop", BACKEND, now=10.0)
    assert snap["requests"] == MAX_SAMPLES + 500  # counted, not sampled
    assert snap["latencyP99Ms"] == 2.0  # the 500 oldest (slow) samples were let go
    figures.record("gone", BACKEND, error=False, seconds=0.1, now=10.0)
    figures.retain({"shop"})
    assert figures.snapshot("gone", BACKEND, now=10.0)["requests"] == 0
    assert figures.snapshot("shop", BACKEND, now=10.0)["requests"] == MAX_SAMPLES + 500


def test_metrics_of_a_deleted_route_are_dropped() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = GatewayMetrics(registry)
    metrics.answered("shop", BACKEND, "2xx", 0.01, 5.0)
    metrics.answered("shop", BACKEND, "5xx", 0.02, 5.0)
    metrics.answered("old", BACKEND, "5xx", 0.02, 5.0)
    labels = {"route": "shop", "backend": BACKEND}
    assert registry.get_sample_value("tunnel_server_gateway_errors_total", labels) == 1
    assert (
        registry.get_sample_value("tunnel_server_gateway_errors_total", {**labels, "route": "old"})
        == 1
    )
    metrics.retain_routes({"shop"})
    text = prometheus_client.generate_latest(registry).decode()
    assert 'route="old"' not in text
    assert 'route="shop"' in text
    assert metrics.figures.snapshot("shop", BACKEND, now=5.0)["errors"] == 1


def test_the_response_hook_holds_back_retry_codes_and_modifies_the_rest() -> None:
    decision = Decision(
        route="shop",
        backends=(),
        response_modifier=HeaderModifier(set=(("X-Served-By", "gw"),), remove=("server",)),
        set_cookie="sid=abc; Path=/; HttpOnly",
        retry_codes=frozenset({503}),
    )
    hook = GatewayServer._responder(decision, may_decline=True)
    with pytest.raises(ResponseDeclined):
        hook(503, [])
    fields = hook(200, [("Server", "x"), ("X-Served-By", "backend"), ("Content-Length", "2")])
    assert fields == [
        ("Content-Length", "2"),
        ("X-Served-By", "gw"),
        ("Set-Cookie", "sid=abc; Path=/; HttpOnly"),
    ]
    last = GatewayServer._responder(decision, may_decline=False)  # the last backend's answer
    assert ("Set-Cookie", "sid=abc; Path=/; HttpOnly") in last(503, [])


def test_request_series_are_counted_and_bucketed_as_prometheus_would() -> None:
    registry = prometheus_client.CollectorRegistry()
    metrics = GatewayMetrics(registry)
    for seconds in (0.0005, 0.001, 0.003, 0.7, 31.0):
        metrics.answered("shop", BACKEND, "2xx", seconds, 5.0)
    metrics.refused("4xx")
    metrics.attempt(BACKEND, "answered")
    metrics.attempt(BACKEND, "answered")
    labels = {"route": "shop", "backend": BACKEND}

    def sample(name: str, extra: dict[str, str]) -> float | None:
        return registry.get_sample_value(name, {**labels, **extra})

    bucket = "tunnel_server_gateway_request_seconds_bucket"
    assert sample(bucket, {"le": "0.001"}) == 2  # le: a value on the bound counts
    assert sample(bucket, {"le": "0.005"}) == 3
    assert sample(bucket, {"le": "1.0"}) == 4
    assert sample(bucket, {"le": "30.0"}) == 4
    assert sample(bucket, {"le": "+Inf"}) == 5
    assert sample("tunnel_server_gateway_request_seconds_count", {}) == 5
    assert sample("tunnel_server_gateway_requests_total", {"code": "2xx"}) == 5
    none = {"route": "none", "backend": "none", "code": "4xx"}
    assert registry.get_sample_value("tunnel_server_gateway_requests_total", none) == 1
    attempts = {"backend": BACKEND, "outcome": "answered"}
    assert registry.get_sample_value("tunnel_server_gateway_attempts_total", attempts) == 2
