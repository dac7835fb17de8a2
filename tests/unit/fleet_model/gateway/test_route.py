"""MultiClusterRoute: parsing (every problem, bounded), matching, Gateway API precedence."""

from __future__ import annotations

import copy
import itertools
from datetime import UTC, datetime
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_model.gateway.route import (
    API_VERSION,
    DEFAULT_RETRY,
    KIND,
    MAX_WEIGHT,
    HeaderModifier,
    PathMatch,
    PathType,
    Request,
    Route,
    RouteSpec,
    RouteTable,
    SessionType,
    host_matches,
    normalize_host,
    parse_duration,
    parse_route,
    parse_spec,
)
from fleet_model.problems import SpecError

FAST = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def backend(cluster: str = "zone-a", weight: int | None = None, **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"cluster": cluster, "namespace": "shop", "name": "web", "port": 80}
    if weight is not None:
        body["weight"] = weight
    body.update(extra)
    return body


def route_doc(
    name: str = "shop", created: str | None = "2027-01-15T08:00:00Z", **spec: Any
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if created is not None:
        metadata["creationTimestamp"] = created
    body: dict[str, Any] = {"rules": [{"backendRefs": [backend()]}]}
    body.update(spec)
    return {"apiVersion": API_VERSION, "kind": KIND, "metadata": metadata, "spec": body}


def problems_of(spec: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(spec)
    return caught.value.problems


def paths_of(spec: object) -> set[str]:
    return {path for path, _ in problems_of(spec)}


FULL_SPEC: dict[str, Any] = {
    "hostnames": ["shop.example.com", "*.shop.example.com"],
    "healthCheck": {"path": "/healthz", "intervalSeconds": 5, "timeoutSeconds": 1},
    "rules": [
        {
            "name": "api",
            "matches": [
                {
                    "path": {"type": "PathPrefix", "value": "/api"},
                    "headers": [{"name": "X-Canary", "value": "1"}],
                    "queryParams": [{"name": "v", "value": "2"}],
                    "method": "GET",
                }
            ],
            "filters": [
                {
                    "type": "RequestHeaderModifier",
                    "requestHeaderModifier": {
                        "set": [{"name": "X-Via", "value": "gw"}],
                        "add": [{"name": "X-Tag", "value": "a"}],
                        "remove": ["X-Secret"],
                    },
                },
                {
                    "type": "ResponseHeaderModifier",
                    "responseHeaderModifier": {"remove": ["Server"]},
                },
                {
                    "type": "RequestMirror",
                    "requestMirror": {"backendRef": backend("canary"), "percent": 5},
                },
            ],
            "timeouts": {"request": "10s", "backendRequest": "2s"},
            "retry": {"attempts": 2, "codes": [502, 503], "backoff": "100ms"},
            "sessionPersistence": {
                "type": "Header",
                "sessionName": "x-session",
            },
            "backendRefs": [backend("zone-a", 90), backend("zone-b", 10, kind="Service")],
        }
    ],
}


# ---------------------------------------------------------------- parsing


def test_a_full_route_parses_into_its_typed_view() -> None:
    route = parse_route(route_doc(**FULL_SPEC))
    assert route.name == "shop"
    assert route.created == datetime(2027, 1, 15, 8, tzinfo=UTC).timestamp()
    spec = route.spec
    assert spec.hostnames == ("shop.example.com", "*.shop.example.com")
    assert spec.health_check is not None
    assert spec.health_check.path == "/healthz"
    assert spec.health_check.unhealthy_threshold == 3
    (rule,) = spec.rules
    assert rule.name == "api"
    (match,) = rule.matches
    assert match.path == PathMatch(type=PathType.PREFIX, value="/api")
    assert match.headers[0].name == "x-canary"
    assert match.method == "GET"
    assert rule.weights == {"zone-a/shop/web:80": 90, "zone-b/shop/web:80": 10}
    assert rule.request_headers == HeaderModifier(
        set=(("X-Via", "gw"),), add=(("X-Tag", "a"),), remove=("x-secret",)
    )
    assert rule.response_headers == HeaderModifier(remove=("server",))
    assert rule.mirrors[0].percent == 5
    assert rule.mirrors[0].backend.key == "canary/shop/web:80"
    assert rule.timeouts.request == 10.0
    assert rule.timeouts.backend_request == 2.0
    assert rule.retry.attempts == 2
    assert rule.retry.codes == (502, 503)
    assert rule.retry.backoff == pytest.approx(0.1)
    assert rule.session is not None
    assert rule.session.type is SessionType.HEADER
    assert set(spec.backends()) == {
        "zone-a/shop/web:80",
        "zone-b/shop/web:80",
        "canary/shop/web:80",
    }


def test_defaults_are_gateway_apis() -> None:
    spec = parse_spec({"rules": [{"backendRefs": [backend()]}]})
    (rule,) = spec.rules
    assert spec.hostnames == ()
    assert rule.matches[0].path == PathMatch(type=PathType.PREFIX, value="/")
    assert rule.backends[0].weight == 1
    assert rule.retry == DEFAULT_RETRY
    assert rule.timeouts.request is None
    assert rule.session is None


def test_every_problem_is_reported_at_once_with_its_pointer() -> None:
    spec = {
        "hostnames": ["Bad_Host", "*.ok.example", "*.ok.example", "10.0.0.1"],
        "extra": 1,
        "rules": [
            {
                "matches": [
                    {
                        "path": {"type": "RegularExpression", "value": "/a(?=b)"},
                        "headers": [{"name": "bad header", "value": "x"}],
                        "method": "FETCH",
                    },
                    {"path": {"value": "/a/../b"}},
                ],
                "backendRefs": [
                    backend(weight=MAX_WEIGHT + 1),
                    backend(cluster="Not A Name", port=0),
                    backend(),
                    backend(),
                ],
                "timeouts": {"request": "1s", "backendRequest": "5s"},
                "retry": {"attempts": 9, "codes": [200, 503, 503], "backoff": "soon"},
                "sessionPersistence": {"idleTimeout": "1m"},
            },
            {"backendRefs": []},
        ],
    }
    assert paths_of(spec) == {
        "/spec",
        "/spec/hostnames/0",
        "/spec/hostnames/2",
        "/spec/hostnames/3",
        "/spec/rules/0/matches/0/path/value",
        "/spec/rules/0/matches/0/headers/0/name",
        "/spec/rules/0/matches/0/method",
        "/spec/rules/0/matches/1/path/value",
        "/spec/rules/0/backendRefs/0/weight",
        "/spec/rules/0/backendRefs/1/cluster",
        "/spec/rules/0/backendRefs/1/port",
        "/spec/rules/0/backendRefs/3",
        "/spec/rules/0/timeouts/backendRequest",
        "/spec/rules/0/retry/attempts",
        "/spec/rules/0/retry/codes/0",
        "/spec/rules/0/retry/codes/2",
        "/spec/rules/0/retry/backoff",
        "/spec/rules/0/sessionPersistence/idleTimeout",
        "/spec/rules/1/backendRefs",
    }


@pytest.mark.parametrize(
    ("change", "path"),
    [
        ({"hostnames": ["x"] * 17}, "/spec/hostnames"),
        ({"rules": [{"backendRefs": [backend()]}] * 17}, "/spec/rules"),
        ({"rules": []}, "/spec/rules"),
        ({"rules": [{"backendRefs": [backend(f"c{i}") for i in range(17)]}]}, None),
        ({"rules": [{"backendRefs": [backend(namespace="Shop")]}]}, None),
        ({"rules": [{"backendRefs": [backend(name="1web")]}]}, None),
        ({"rules": [{"backendRefs": [backend(group="apps")]}]}, None),
        ({"rules": [{"backendRefs": [backend(kind="Deployment")]}]}, None),
        ({"rules": [{"backendRefs": [backend(filters=[])]}]}, None),
        ({"rules": [{"backendRefs": [backend(weight=True)]}]}, None),
        ({"rules": [{"backendRefs": [backend(weight=-1)]}]}, None),
        ({"rules": [{"backendRefs": [backend()], "matches": [{}] * 9}]}, None),
        ({"healthCheck": {"intervalSeconds": 2, "timeoutSeconds": 3}}, None),
        ({"healthCheck": {"path": "relative"}}, None),
        ({"healthCheck": {"unhealthyThreshold": 0}}, None),
    ],
)
def test_bounds_are_refused(change: dict[str, Any], path: str | None) -> None:
    spec = {"rules": [{"backendRefs": [backend()]}], **change}
    found = paths_of(spec)
    if path is not None:
        assert path in found


def rule_with(**fields: Any) -> dict[str, Any]:
    return {"rules": [{"backendRefs": [backend()], **fields}]}


@pytest.mark.parametrize(
    "filters",
    [
        [{"type": "URLRewrite", "urlRewrite": {}}],
        [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"set": [{"name": "Host"}]}}],
        [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {"set": [{"name": "Transfer-Encoding", "value": "x"}]},
            }
        ],
        [
            {
                "type": "RequestHeaderModifier",
                "requestHeaderModifier": {
                    "set": [{"name": "X-A", "value": "1"}],
                    "add": [{"name": "x-a", "value": "2"}],
                },
            }
        ],
        [{"type": "RequestHeaderModifier", "requestHeaderModifier": {"remove": ["X"]}}] * 2,
        [
            {
                "type": "ResponseHeaderModifier",
                "responseHeaderModifier": {"set": [{"name": "X", "value": "a\r\nb"}]},
            }
        ],
        [{"type": "RequestMirror", "requestMirror": {"backendRef": backend(), "percent": 101}}],
        [{"type": "RequestMirror", "requestMirror": {"backendRef": backend(weight=1)}}],
        [{"type": "RequestMirror", "requestMirror": {"backendRef": backend()}}] * 5,
    ],
)
def test_bad_filters_are_refused(filters: list[Any]) -> None:
    assert any(p.startswith("/spec/rules/0/filters") for p in paths_of(rule_with(filters=filters)))


@pytest.mark.parametrize(
    ("text", "seconds"),
    [("1h", 3600.0), ("1m30s", 90.0), ("250ms", 0.25), ("0s", 0.0), ("1h1m1s1ms", 3661.001)],
)
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "1", "1d", "-1s", "1.5s", "123456s", "1s1s1s1s1s", 5])
def test_not_durations(text: object) -> None:
    assert parse_duration(text) is None


def test_session_cookie_needs_a_permanent_lifetime_for_a_max_age() -> None:
    bad = rule_with(sessionPersistence={"absoluteTimeout": "1h"})
    assert "/spec/rules/0/sessionPersistence/absoluteTimeout" in paths_of(bad)
    good = rule_with(
        sessionPersistence={
            "sessionName": "s",
            "absoluteTimeout": "1h",
            "cookieConfig": {"lifetimeType": "Permanent"},
        }
    )
    session = parse_spec(good).rules[0].session
    assert session is not None
    assert session.set_cookie("tok") == "s=tok; Path=/; HttpOnly; Max-Age=3600"


def test_the_envelope_is_checked_with_the_spec() -> None:
    doc = route_doc(created="yesterday")
    doc["apiVersion"] = "v1"
    doc["kind"] = "HTTPRoute"
    doc["metadata"]["name"] = "Bad Name"
    doc["spec"]["rules"] = "x"
    with pytest.raises(SpecError) as caught:
        parse_route(doc)
    assert {path for path, _ in caught.value.problems} == {
        "/apiVersion",
        "/kind",
        "/metadata/name",
        "/metadata/creationTimestamp",
        "/spec/rules",
    }
    assert parse_route(route_doc(created=None)).created == 0.0


def test_problems_are_capped() -> None:
    spec = {"hostnames": ["B"] * 16, "rules": [{"backendRefs": [backend(port=0)] * 16}] * 16}
    problems = problems_of(spec)
    assert len(problems) == 65
    assert problems[-1][1].startswith("and ")


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=16), c, max_size=4),
    max_leaves=30,
)
KEYS = st.sampled_from(
    [
        "hostnames",
        "rules",
        "matches",
        "path",
        "type",
        "value",
        "headers",
        "queryParams",
        "method",
        "filters",
        "backendRefs",
        "cluster",
        "namespace",
        "name",
        "port",
        "weight",
        "timeouts",
        "retry",
        "codes",
        "attempts",
        "backoff",
        "sessionPersistence",
        "requestMirror",
        "requestHeaderModifier",
        "set",
        "add",
        "remove",
        "healthCheck",
    ]
)
SHAPED = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-2, 70000)
    | st.sampled_from(["/", "/a", "Exact", "PathPrefix", "GET", "zone-a", "1s", "Cookie", "x"]),
    lambda c: st.lists(c, max_size=3) | st.dictionaries(KEYS, c, max_size=5),
    max_leaves=40,
)


@FAST
@given(ANYTHING | SHAPED)
def test_any_spec_is_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    spec: RouteSpec | None = None
    try:
        spec = parse_spec(value)
    except SpecError as error:
        problems = error.problems
    if spec is None:
        assert problems, "a refusal must say why"
        assert all(path.startswith("/spec") or path == "" for path, _ in problems)
        assert len(problems) <= 65
    else:
        assert spec.rules


@FAST
@given(st.data())
def test_mutating_a_valid_route_never_crashes(data: st.DataObject) -> None:
    doc = copy.deepcopy(FULL_SPEC)
    node: Any = doc
    for _ in range(data.draw(st.integers(1, 5))):
        if isinstance(node, dict) and node:
            key = data.draw(st.sampled_from(sorted(node)))
            if data.draw(st.booleans()):
                node[key] = data.draw(ANYTHING | SHAPED)
                break
            node = node[key]
        elif isinstance(node, list) and node:
            index = data.draw(st.integers(0, len(node) - 1))
            if data.draw(st.booleans()):
                node[index] = data.draw(ANYTHING | SHAPED)
                break
            node = node[index]
        else:
            break
    problems: list[tuple[str, str]] = [("", "taken")]
    try:
        parse_spec(doc)
    except SpecError as error:
        problems = error.problems
    assert problems


# ---------------------------------------------------------------- matching


def req(
    path: str = "/",
    *,
    host: str = "shop.example.com",
    method: str = "GET",
    headers: tuple[tuple[str, str], ...] = (),
) -> Request:
    return Request.of(method=method, authority=host, target=path, headers=headers)


@pytest.mark.parametrize(
    ("value", "path", "hit"),
    [
        ("/foo", "/foo", True),
        ("/foo", "/foo/", True),
        ("/foo", "/foo/bar", True),
        ("/foo", "/foobar", False),
        ("/foo/", "/foo", True),
        ("/foo/", "/foo/bar", True),
        ("/foo/", "/foobar", False),
        ("/", "/anything", True),
        ("/foo", "/", False),
    ],
)
def test_path_prefix_matches_whole_elements(value: str, path: str, *, hit: bool) -> None:
    assert PathMatch(type=PathType.PREFIX, value=value).matches(path) is hit


def test_exact_path_is_the_whole_path() -> None:
    match = PathMatch(type=PathType.EXACT, value="/foo")
    assert match.matches("/foo")
    assert not match.matches("/foo/")
    assert not match.matches("/Foo")


@pytest.mark.parametrize(
    ("pattern", "host", "hit"),
    [
        ("a.example.com", "a.example.com", True),
        ("a.example.com", "b.example.com", False),
        ("*.example.com", "a.example.com", True),
        ("*.example.com", "a.b.example.com", True),
        ("*.example.com", "example.com", False),
        ("*.example.com", "aexample.com", False),
    ],
)
def test_hostnames(pattern: str, host: str, *, hit: bool) -> None:
    assert host_matches(pattern, host) is hit


@pytest.mark.parametrize(
    ("authority", "host"),
    [
        ("Shop.Example.COM", "shop.example.com"),
        ("shop.example.com:8443", "shop.example.com"),
        ("shop.example.com.", "shop.example.com"),
        ("[::1]:80", "[::1]"),
    ],
)
def test_hosts_are_normalized(authority: str, host: str) -> None:
    assert normalize_host(authority) == host


def test_request_head_parsing() -> None:
    request = Request.of(
        method="get",
        authority="h",
        target="/a/b?v=1&v=2&x=&y#frag",
        headers=[("X-A", "1"), ("x-a", "2")],
    )
    assert request.method == "GET"
    assert request.path == "/a/b"
    assert request.query_param("v") == "1"
    assert request.query_param("x") == ""
    assert request.query_param("z") is None
    assert request.header("x-a") == "1,2"


def make_route(name: str, created: float, spec: dict[str, Any]) -> Route:
    return Route(name=name, created=created, spec=parse_spec(spec))


def one_rule(*matches: dict[str, Any], cluster: str = "zone-a") -> dict[str, Any]:
    return {"matches": list(matches), "backendRefs": [backend(cluster)]}


def winner(table: RouteTable, request: Request) -> str | None:
    hit = table.match(request)
    return None if hit is None else hit.rule.backends[0].cluster


def test_precedence_follows_gateway_api_order() -> None:
    """Exact > longest prefix > method > most headers > most query params > oldest > name."""
    rules = {
        "exact": one_rule({"path": {"type": "Exact", "value": "/api/v1"}}, cluster="exact"),
        "long": one_rule({"path": {"value": "/api/v1"}}, cluster="long"),
        "method": one_rule({"path": {"value": "/api"}, "method": "GET"}, cluster="method"),
        "headers": one_rule(
            {
                "path": {"value": "/api"},
                "headers": [{"name": "a", "value": "1"}, {"name": "b", "value": "2"}],
            },
            cluster="headers",
        ),
        "header": one_rule(
            {"path": {"value": "/api"}, "headers": [{"name": "a", "value": "1"}]},
            cluster="header",
        ),
        "query": one_rule(
            {"path": {"value": "/api"}, "queryParams": [{"name": "q", "value": "1"}]},
            cluster="query",
        ),
        "old": one_rule({"path": {"value": "/api"}}, cluster="old"),
        "young": one_rule({"path": {"value": "/api"}}, cluster="young"),
    }
    routes = [
        make_route("a-young", 200.0, {"rules": [rules["young"]]}),
        make_route("z-old", 100.0, {"rules": [rules["old"]]}),
        make_route(
            "m",
            300.0,
            {
                "rules": [
                    rules[k] for k in ("query", "header", "headers", "method", "long", "exact")
                ]
            },
        ),
    ]
    table = RouteTable(routes)
    both = (("a", "1"), ("b", "2"))
    assert winner(table, req("/api/v1", headers=both)) == "exact"
    assert winner(table, req("/api/v1/x", headers=both)) == "long"
    assert winner(table, req("/api/x", headers=both)) == "method"
    assert winner(table, req("/api/x", method="POST", headers=both)) == "headers"
    assert winner(table, req("/api/x", method="POST", headers=(("a", "1"),))) == "header"
    assert winner(table, req("/api/x?q=1", method="POST")) == "query"
    assert winner(table, req("/api/x", method="POST")) == "old"
    assert winner(table, req("/other")) is None


def test_equal_age_goes_to_the_name_then_the_first_rule() -> None:
    same = {"path": {"value": "/"}}
    table = RouteTable(
        [
            make_route("b", 1.0, {"rules": [one_rule(same, cluster="b")]}),
            make_route("a", 1.0, {"rules": [one_rule(same, cluster="a1"), one_rule(same)]}),
        ]
    )
    hit = table.match(req("/x"))
    assert hit is not None
    assert (hit.route.name, hit.rule_index) == ("a", 0)
    assert hit.rule_key == ("a", 0)


def test_hostnames_come_first_exact_then_longest_wildcard_then_any() -> None:
    specific = {"path": {"type": "Exact", "value": "/x"}}
    table = RouteTable(
        [
            make_route("any", 1.0, {"rules": [one_rule(specific, cluster="any")]}),
            make_route(
                "wide", 2.0, {"hostnames": ["*.example.com"], "rules": [one_rule(cluster="wide")]}
            ),
            make_route(
                "narrow",
                3.0,
                {"hostnames": ["*.shop.example.com"], "rules": [one_rule(cluster="narrow")]},
            ),
            make_route(
                "exact", 4.0, {"hostnames": ["shop.example.com"], "rules": [one_rule(cluster="ex")]}
            ),
        ]
    )
    assert winner(table, req("/x", host="shop.example.com")) == "ex"
    assert winner(table, req("/x", host="a.shop.example.com")) == "narrow"
    assert winner(table, req("/x", host="a.example.com")) == "wide"
    assert winner(table, req("/x", host="example.com")) == "any"
    assert winner(table, req("/y", host="example.com")) is None


def test_headers_are_case_insensitive_by_name_and_exact_by_value() -> None:
    table = RouteTable(
        [make_route("r", 0.0, {"rules": [one_rule({"headers": [{"name": "X-V", "value": "A"}]})]})]
    )
    assert table.match(req(headers=(("x-v", "A"),))) is not None
    assert table.match(req(headers=(("X-V", "a"),))) is None
    assert table.match(req(headers=(("X-V", "A"), ("x-v", "B")))) is None  # "A,B"


def test_header_modifier_order_remove_set_add() -> None:
    modifier = HeaderModifier(set=(("X-Set", "new"),), add=(("X-Add", "2"),), remove=("x-gone",))
    headers = [("X-Gone", "1"), ("x-set", "old"), ("X-Add", "1"), ("Other", "o")]
    assert modifier.apply(headers) == [
        ("X-Add", "1"),
        ("Other", "o"),
        ("X-Set", "new"),
        ("X-Add", "2"),
    ]


# ---------------------------------------------------------------- precedence properties


def _name(item: Any) -> str:
    return str(item["name"])


MATCHES = st.fixed_dictionaries(
    {},
    optional={
        "path": st.fixed_dictionaries(
            {
                "type": st.sampled_from(["Exact", "PathPrefix"]),
                "value": st.sampled_from(["/", "/a", "/a/b", "/ab", "/a/"]),
            }
        )
        | st.fixed_dictionaries(
            {
                "type": st.just("RegularExpression"),
                "value": st.sampled_from(["/a.*", "/[ab]+", "/a(/b)?", ".*"]),
            }
        ),
        "method": st.sampled_from(["GET", "POST"]),
        "headers": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["h1", "h2", "h3"]), "value": st.sampled_from(["1", "2"])}
            ),
            max_size=3,
            unique_by=_name,
        ),
        "queryParams": st.lists(
            st.fixed_dictionaries(
                {"name": st.sampled_from(["q1", "q2"]), "value": st.sampled_from(["1", "2"])}
            ),
            max_size=2,
            unique_by=_name,
        ),
    },
)
ROUTES = st.lists(
    st.tuples(
        st.sampled_from([0.0, 1.0, 2.0]),
        st.lists(st.lists(MATCHES, min_size=1, max_size=3), min_size=1, max_size=3),
        st.sampled_from([[], ["h.example"], ["*.example"]]),
    ),
    min_size=1,
    max_size=4,
)
REQUESTS = st.builds(
    lambda path, method, headers, query, host: Request.of(
        method=method,
        authority=host,
        target=path + ("?" + "&".join(f"{k}={v}" for k, v in query) if query else ""),
        headers=headers,
    ),
    st.sampled_from(["/", "/a", "/a/b", "/ab", "/a/b/c", "/b"]),
    st.sampled_from(["GET", "POST"]),
    st.lists(
        st.tuples(st.sampled_from(["h1", "h2", "h3"]), st.sampled_from(["1", "2"])), max_size=3
    ),
    st.lists(st.tuples(st.sampled_from(["q1", "q2"]), st.sampled_from(["1", "2"])), max_size=2),
    st.sampled_from(["h.example", "x.example", "other"]),
)


def build(spec_routes: list[tuple[float, list[list[dict[str, Any]]], list[str]]]) -> list[Route]:
    return [
        make_route(
            f"r{index}",
            created,
            {"hostnames": hosts, "rules": [one_rule(*matches) for matches in rules]},
        )
        for index, (created, rules, hosts) in enumerate(spec_routes)
    ]


def reference_key(route: Route, rule: int, index: int, host: str) -> tuple[Any, ...]:
    """Gateway API's order written out directly, to check the table's buckets against."""
    hosts = [h for h in route.spec.hostnames if host_matches(h, host)]
    exact = max((len(h) for h in hosts if not h.startswith("*")), default=0)
    any_len = max((len(h) for h in hosts), default=0)
    match = route.spec.rules[rule].matches[index]
    path = match.path
    return (
        -exact,
        -any_len,
        {PathType.EXACT: 0, PathType.REGEX: 1, PathType.PREFIX: 2}[path.type],
        0 if path.type is PathType.EXACT else -len(path.value),
        0 if match.method else 1,
        -len(match.headers),
        -len(match.query_params),
        route.created,
        route.name,
        rule,
        index,
    )


@FAST
@given(ROUTES, REQUESTS, st.randoms(use_true_random=False))
def test_the_table_takes_the_first_match_in_gateway_api_order(
    spec_routes: list[Any], request: Request, shuffler: Any
) -> None:
    routes = build(spec_routes)
    candidates = [
        (reference_key(route, r, m, request.host), route.name, r, m)
        for route in routes
        for r, rule in enumerate(route.spec.rules)
        for m, match in enumerate(rule.matches)
        if match.matches(request)
        and (
            not route.spec.hostnames
            or any(host_matches(h, request.host) for h in route.spec.hostnames)
        )
    ]
    keys = [c[0] for c in candidates]
    assert len(set(keys)) == len(keys), "the order is total: no two candidates tie"
    expected = min(candidates)[1:] if candidates else None
    shuffled = list(routes)
    shuffler.shuffle(shuffled)
    for table in (RouteTable(routes), RouteTable(shuffled)):
        hit = table.match(request)
        got = None if hit is None else (hit.route.name, hit.rule_index, hit.match_index)
        assert got == expected


def test_precedence_keys_are_all_distinct_across_a_table() -> None:
    routes = build(
        [
            (0.0, [[{"path": {"value": "/a"}}], [{"path": {"value": "/a"}}]], []),
            (0.0, [[{"path": {"value": "/a"}}]], []),
        ]
    )
    table = RouteTable(routes)
    entries = list(table.candidates("x"))
    assert [entry[0] for entry in entries] == sorted(entry[0] for entry in entries)
    assert len({entry[0] for entry in entries}) == len(entries)
    assert list(itertools.pairwise(e[2].name for e in entries)) == [("r0", "r0"), ("r0", "r1")]


def test_a_bad_health_check_path_is_pointed_at() -> None:
    assert paths_of(rule_with() | {"healthCheck": {"path": "x"}}) == {"/spec/healthCheck/path"}


def test_a_query_with_very_many_pairs_is_read_up_to_the_bound() -> None:
    target = "/?" + "&".join(f"k{i}=v{i}" for i in range(5000))
    request = Request.of(method="GET", authority="h", target=target)
    assert len(request.query) == 256
    assert request.query_param("k0") == "v0"
    assert request.query_param("k4999") is None


def test_regular_expressions_match_whole_paths_and_header_values() -> None:
    spec = rule_with(
        matches=[
            {
                "path": {"type": "RegularExpression", "value": "/users/[0-9]+(/.*)?"},
                "headers": [{"type": "RegularExpression", "name": "x-v", "value": "v[12]"}],
            }
        ]
    )
    table = RouteTable([make_route("r", 0.0, spec)])
    v1 = (("X-V", "v1"),)
    assert table.match(req("/users/42", headers=v1)) is not None
    assert table.match(req("/users/42/cart", headers=v1)) is not None
    assert table.match(req("/users/x", headers=v1)) is None
    assert table.match(req("/a/users/42", headers=v1)) is None, "a full match, not a search"
    assert table.match(req("/users/42", headers=(("x-v", "v3"),))) is None
    assert table.match(req("/users/42")) is None


def test_regular_expressions_rank_between_exact_and_prefix() -> None:
    table = RouteTable(
        [
            make_route("a", 0.0, {"rules": [one_rule({"path": {"value": "/u"}}, cluster="p")]}),
            make_route(
                "b",
                1.0,
                {
                    "rules": [
                        one_rule(
                            {"path": {"type": "RegularExpression", "value": "/u/.*"}},
                            cluster="re",
                        )
                    ]
                },
            ),
            make_route(
                "c",
                2.0,
                {"rules": [one_rule({"path": {"type": "Exact", "value": "/u/1"}}, cluster="ex")]},
            ),
        ]
    )
    assert winner(table, req("/u/1")) == "ex"
    assert winner(table, req("/u/2")) == "re"
    assert winner(table, req("/u")) == "p"


@pytest.mark.parametrize("pattern", ["(a+)+(", "a{1,99}", "x" * 257, "(?i)a", "\\bword"])
def test_unsafe_or_unknown_patterns_are_refused(pattern: str) -> None:
    spec = rule_with(matches=[{"path": {"type": "RegularExpression", "value": pattern}}])
    assert paths_of(spec) == {"/spec/rules/0/matches/0/path/value"}


@FAST
@given(
    st.text(max_size=12),
    st.text(max_size=40),
    st.text(max_size=30),
    st.lists(st.tuples(st.text(max_size=8), st.text(max_size=8)), max_size=4),
)
def test_matching_never_crashes_on_any_request_head(
    method: str, authority: str, target: str, headers: list[tuple[str, str]]
) -> None:
    table = RouteTable(
        [
            parse_route(route_doc(**FULL_SPEC)),
            make_route(
                "re",
                0.0,
                rule_with(matches=[{"path": {"type": "RegularExpression", "value": "/[^/]*"}}]),
            ),
        ]
    )
    request = Request.of(method=method, authority=authority, target=target, headers=headers)
    hit = table.match(request)
    assert hit is None or hit.route.name in {"shop", "re"}
