"""A Service port's ready endpoints from its Service and EndpointSlices (Kubernetes' rules)."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.gateway.endpoints import (
    MAX_ENDPOINTS,
    Endpoint,
    NoEndpointsError,
    NoPortError,
    NoServiceError,
    ResolveError,
    ready_endpoints,
    resolve,
    service_of,
    service_ports,
)
from edge_agent.cluster.gateway.target import parse_target

WEB80 = parse_target("service/demo/web:80")


def service(*ports: dict[str, Any]) -> dict[str, Any]:
    return {"metadata": {"namespace": "demo", "name": "web"}, "spec": {"ports": list(ports)}}


def endpoint(address: str, **conditions: object) -> dict[str, Any]:
    return {"addresses": [address], "conditions": conditions}


def slice_(
    *endpoints: dict[str, Any],
    ports: list[dict[str, Any]] | None = None,
    family: str = "IPv4",
    name: str = "web-abc",
) -> dict[str, Any]:
    return {
        "metadata": {
            "namespace": "demo",
            "name": name,
            "labels": {"kubernetes.io/service-name": "web"},
        },
        "addressType": family,
        "ports": [{"name": "", "port": 8080, "protocol": "TCP"}] if ports is None else ports,
        "endpoints": list(endpoints),
    }


UNNAMED = {"port": 80, "targetPort": 8080, "protocol": "TCP"}


def test_an_unnamed_port_takes_the_slices_unnamed_port() -> None:
    found = resolve(WEB80, service(UNNAMED), [slice_(endpoint("10.0.0.2"), endpoint("10.0.0.1"))])
    assert found == [Endpoint("10.0.0.1", 8080), Endpoint("10.0.0.2", 8080)]  # sorted


def test_the_port_number_picks_the_name_and_the_name_the_slice_port() -> None:
    svc = service({"name": "http", "port": 80}, {"name": "admin", "port": 81})
    ports = [{"name": "admin", "port": 9090}, {"name": "http", "port": 8080}]
    assert resolve(WEB80, svc, [slice_(endpoint("10.0.0.1"), ports=ports)]) == [
        Endpoint("10.0.0.1", 8080)
    ]
    admin = parse_target("service/demo/web:81")
    assert resolve(admin, svc, [slice_(endpoint("10.0.0.1"), ports=ports)]) == [
        Endpoint("10.0.0.1", 9090)
    ]


def test_ready_missing_is_ready_false_is_not_and_terminating_is_skipped() -> None:
    found = resolve(
        WEB80,
        service(UNNAMED),
        [
            slice_(
                endpoint("10.0.0.1"),
                endpoint("10.0.0.2", ready=True),
                endpoint("10.0.0.3", ready=False),
                endpoint("10.0.0.4", ready=True, terminating=True),
                endpoint("10.0.0.5", ready=None, terminating=False),
            )
        ],
    )
    assert [e.address for e in found] == ["10.0.0.1", "10.0.0.2", "10.0.0.5"]


def test_slices_are_merged_and_duplicates_count_once() -> None:
    one = slice_(endpoint("10.0.0.1"), endpoint("10.0.0.2"), name="a")
    two = slice_(endpoint("10.0.0.2"), endpoint("10.0.0.3"), name="b")
    six = slice_(endpoint("fd00::1"), family="IPv6", name="c")
    found = resolve(WEB80, service(UNNAMED), [one, two, six])
    assert [str(e) for e in found] == [
        "10.0.0.1:8080",
        "10.0.0.2:8080",
        "10.0.0.3:8080",
        "[fd00::1]:8080",
    ]


def test_what_is_never_dialled() -> None:
    odd = slice_(name="not-objects")
    odd["endpoints"] = ["x", 1, None]
    slices = [
        odd,
        slice_(endpoint("web.example.com"), family="FQDN", name="fqdn"),
        slice_(endpoint("fd00::1"), name="v6-in-a-v4-slice"),
        slice_(endpoint("not-an-ip"), endpoint("10.0.0.1 "), name="junk"),
        slice_({"conditions": {}}, {"addresses": []}, {"addresses": [7]}, name="shapes"),
        slice_(endpoint("10.0.0.9"), ports=[{"name": "", "port": 8080, "protocol": "UDP"}]),
        slice_(endpoint("10.0.0.8"), ports=[{"name": "", "port": 0}], name="port-0"),
        slice_(endpoint("10.0.0.7"), ports=[{"name": "other", "port": 8080}], name="other"),
    ]
    with pytest.raises(NoEndpointsError, match=r"no ready endpoints for demo/web:80"):
        resolve(WEB80, service(UNNAMED), slices)


def test_reasons() -> None:
    with pytest.raises(NoServiceError, match="no service demo/web in this cluster"):
        resolve(WEB80, None, [])
    with pytest.raises(NoPortError, match="service demo/web has no port 80"):
        resolve(WEB80, service({"port": 81}), [])
    with pytest.raises(NoPortError):
        resolve(WEB80, service({"port": 80, "protocol": "UDP"}), [])
    with pytest.raises(NoPortError):
        resolve(WEB80, {"spec": "nonsense"}, [])
    with pytest.raises(NoEndpointsError, match="no ready endpoints for demo/web:80"):
        resolve(WEB80, service(UNNAMED), [])


def test_a_huge_slice_is_bounded() -> None:
    many = [endpoint(f"10.{i // 65536}.{i // 256 % 256}.{i % 256}") for i in range(5000)]
    assert len(ready_endpoints("", [slice_(*many)])) == MAX_ENDPOINTS


def test_helpers() -> None:
    assert service_of(slice_()) == ("demo", "web")
    assert service_of({"metadata": {"namespace": "demo", "labels": {}}}) is None
    assert service_of({}) is None
    svc = service({"name": "http", "port": 80}, {"port": 53, "protocol": "UDP"}, {"port": 443})
    assert service_ports(svc) == [(80, "http"), (443, "")]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 70000) | st.text(max_size=20),
    lambda children: (
        st.lists(children, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "ports",
                    "endpoints",
                    "addresses",
                    "conditions",
                    "ready",
                    "terminating",
                    "name",
                    "port",
                    "protocol",
                    "addressType",
                    "spec",
                    "metadata",
                    "labels",
                ]
            ),
            children,
            max_size=5,
        )
    ),
    max_leaves=30,
)


@given(service=json_values, slices=st.lists(json_values, max_size=3))
def test_any_shape_of_objects_resolves_or_says_why(service: object, slices: list[object]) -> None:
    """Whatever the API server's objects hold, the answer is endpoints or a ResolveError."""
    maps = [s for s in slices if isinstance(s, dict)]
    try:
        found = resolve(WEB80, service if isinstance(service, dict) else None, maps)
    except ResolveError:
        return
    assert found
    assert all(0 < e.port < 65536 for e in found)
