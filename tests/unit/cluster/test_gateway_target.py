"""Gateway target names (``service/<namespace>/<name>:<port>``) and the allow-list."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.gateway.target import (
    AllowList,
    ServiceTarget,
    TargetError,
    parse_pattern,
    parse_target,
)
from tunnel_protocol import MAX_TARGET_LENGTH, is_valid_target

LABEL = r"[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"
labels = st.from_regex(LABEL, fullmatch=True)
ports = st.integers(min_value=1, max_value=65535)


def test_a_well_formed_target() -> None:
    target = parse_target("service/demo/web:80")
    assert target == ServiceTarget(namespace="demo", name="web", port=80)
    assert target.service == "demo/web"
    assert str(target) == "demo/web:80"
    assert target.target == "service/demo/web:80"


@pytest.mark.parametrize(
    ("name", "says"),
    [
        ("kube-apiserver", "not a gateway target"),
        ("services/demo/web:80", "not a gateway target"),
        ("service/", "expected service/"),
        ("service/demo", "expected service/"),
        ("service/demo/web", "expected service/"),
        ("service/demo:80", "expected service/"),
        ("service//web:80", "namespace"),
        ("service/Demo/web:80", "namespace"),
        ("service/-demo/web:80", "namespace"),
        ("service/demo-/web:80", "namespace"),
        ("service/" + "a" * 64 + "/web:80", "namespace"),
        ("service/demo/web.x:80", "service name"),
        ("service/demo/WEB:80", "service name"),
        ("service/demo/a/b:80", "service name"),
        ("service/demo/web:", "port"),
        ("service/demo/web:0", "port"),
        ("service/demo/web:080", "port"),
        ("service/demo/web:+80", "port"),
        ("service/demo/web:65536", "port"),
        ("service/demo/web:99999999999999999999", "port"),
        ("service/demo/web:http", "port"),
        ("service/demo/web:80:81", "port"),
        ("service/demo/web:8\u0660", "port"),  # a non-ASCII digit
        ("service/demo/web:80 ", "port"),
    ],
)
def test_bad_targets_say_what_is_wrong(name: str, says: str) -> None:
    with pytest.raises(TargetError, match=says):
        parse_target(name)


@given(namespace=labels, name=labels, port=ports)
def test_every_well_formed_target_round_trips(namespace: str, name: str, port: int) -> None:
    text = f"service/{namespace}/{name}:{port}"
    target = parse_target(text)
    assert (target.namespace, target.name, target.port) == (namespace, name, port)
    assert target.target == text
    assert is_valid_target(text)  # the cloud can always open it: 8 + 63 + 1 + 63 + 1 + 5 < 255
    assert len(text) <= MAX_TARGET_LENGTH


@given(st.text(max_size=300))
def test_any_text_parses_or_is_refused_cleanly(text: str) -> None:
    try:
        target = parse_target(text)
    except TargetError:
        return
    assert target.target == text  # only the exact canonical form is accepted


@given(prefix=st.sampled_from(["service/", "service/demo/", "service/demo/web:"]), rest=st.text())
def test_near_misses_never_pass_as_something_else(prefix: str, rest: str) -> None:
    text = prefix + rest
    try:
        target = parse_target(text)
    except TargetError:
        return
    assert target.target == text


def test_patterns() -> None:
    assert str(parse_pattern("demo/*")) == "demo/*"
    assert parse_pattern("demo/web").matches("demo", "web")
    assert not parse_pattern("demo/web").matches("demo", "webx")
    assert parse_pattern("demo/*").matches("demo", "anything")
    assert not parse_pattern("demo/*").matches("demo2", "web")
    for bad in ("*/*", "*/web", "demo", "demo/", "/web", "demo/we*", "demo/web/x", "Demo/web"):
        with pytest.raises(TargetError):
            parse_pattern(bad)


def test_the_allow_list_admits_only_what_it_names() -> None:
    allow = AllowList(["demo/*", "shop/web", "shop/web"])
    assert [str(p) for p in allow.patterns] == ["demo/*", "shop/web"]
    assert allow.namespaces == {"demo", "shop"}
    assert allow.allows("demo", "web")
    assert allow.allows("demo", "api")
    assert allow.allows("shop", "web")
    assert not allow.allows("shop", "api")
    assert not allow.allows("kube-system", "kube-dns")
    assert not allow.allows("demox", "web")
    assert allow
    empty = AllowList([])
    assert not empty
    assert not empty.allows("demo", "web")


def test_an_allow_list_is_bounded() -> None:
    with pytest.raises(TargetError, match="at most 256"):
        AllowList([f"n/s{i}" for i in range(257)])


@given(
    patterns=st.lists(st.tuples(labels, st.one_of(labels, st.just("*"))).map("/".join), max_size=8),
    namespace=labels,
    name=labels,
)
def test_allows_is_matching_any_pattern(patterns: list[str], namespace: str, name: str) -> None:
    allow = AllowList(patterns)
    expected = any(parse_pattern(p).matches(namespace, name) for p in patterns)
    assert allow.allows(namespace, name) == expected
