"""ManagedCluster and ManagedClusterSet: parsing, views, set membership and the health rules."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from fleet_model.cluster import (
    CLUSTERSET_LABEL,
    TAINT_UNAVAILABLE,
    TAINT_UNREACHABLE,
    ClusterSetView,
    ClusterView,
    SelectorType,
    Taint,
    TaintEffect,
    cluster_set_view,
    cluster_view,
    clusters_in_set,
    evaluate_health,
    format_time,
    next_condition,
    parse_quantity,
    parse_set_spec,
    parse_spec,
    parse_time,
    put_condition,
    stamp_taints,
    taint_json,
    taints_on_write,
    with_builtin_sets,
)
from fleet_model.documents import API_VERSION, SpecError, validate_document

T0 = 1_800_000_000.0  # 2027-01-15T08:00:00Z, a whole second


def problems_of(parse: Any, spec: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse(spec)
    return caught.value.problems


# ---------------------------------------------------------------- ManagedCluster spec


def test_an_empty_spec_is_a_cluster_not_yet_accepted_with_the_default_lease() -> None:
    spec = parse_spec({})
    assert (spec.hub_accepts_client, spec.lease_duration_seconds, spec.taints) == (False, 10, ())


def test_a_full_spec_is_read_with_its_taints() -> None:
    spec = parse_spec(
        {
            "hubAcceptsClient": True,
            "leaseDurationSeconds": 30,
            "taints": [
                {"key": "maintenance", "value": "db", "effect": "NoSelectIfNew"},
                {"key": TAINT_UNREACHABLE, "effect": "NoSelect", "timeAdded": format_time(T0)},
            ],
        }
    )
    assert spec.hub_accepts_client
    assert spec.lease_duration_seconds == 30
    assert spec.taints == (
        Taint(key="maintenance", value="db", effect=TaintEffect.NO_SELECT_IF_NEW),
        Taint(key=TAINT_UNREACHABLE, effect=TaintEffect.NO_SELECT, time_added=T0),
    )


def test_every_problem_of_a_cluster_spec_is_reported_with_its_path() -> None:
    problems = problems_of(
        parse_spec,
        {
            "hubAcceptsClient": "yes",
            "leaseDurationSeconds": 0,
            "taints": [
                {"key": "Bad Key", "effect": "NoExecute", "timeAdded": "yesterday"},
                {"key": "a", "effect": "NoSelect"},
                {"key": "a", "effect": "NoSelect"},
            ],
            "clientConfig": {},
        },
    )
    assert [path for path, _ in problems] == [
        "/spec",
        "/spec/hubAcceptsClient",
        "/spec/leaseDurationSeconds",
        "/spec/taints/0/key",
        "/spec/taints/0/effect",
        "/spec/taints/0/timeAdded",
        "/spec/taints/2",
    ]


@pytest.mark.parametrize("lease", [True, 3601, -1, 1.5, "10"])
def test_a_lease_outside_one_second_to_an_hour_is_refused(lease: object) -> None:
    assert problems_of(parse_spec, {"leaseDurationSeconds": lease})[0][0] == (
        "/spec/leaseDurationSeconds"
    )


def test_too_many_taints_are_refused_in_one_problem() -> None:
    taints = [{"key": f"k{i}", "effect": "NoSelect"} for i in range(33)]
    assert problems_of(parse_spec, {"taints": taints}) == [("/spec/taints", "at most 32 taints")]


def test_a_whole_document_goes_through_the_envelope_to_this_parser() -> None:
    document = {
        "apiVersion": API_VERSION,
        "kind": "ManagedCluster",
        "metadata": {"name": "edge-1"},
        "spec": {"hubAcceptsClient": True},
    }
    assert validate_document(document).parsed == parse_spec({"hubAcceptsClient": True})
    document["spec"] = {"leaseDurationSeconds": 0}
    with pytest.raises(SpecError) as caught:
        validate_document(document)
    assert caught.value.problems[0][0] == "/spec/leaseDurationSeconds"


def test_taints_round_trip_through_their_json() -> None:
    taint = Taint(key="a", value="b", effect=TaintEffect.NO_SELECT, time_added=T0)
    assert parse_spec({"taints": [taint_json(taint)]}).taints == (taint,)


def test_stamping_keeps_the_old_time_of_a_taint_and_gives_new_ones_now() -> None:
    old = Taint(key="a", effect=TaintEffect.NO_SELECT, time_added=T0)
    fresh = stamp_taints(
        [
            Taint(key="a", effect=TaintEffect.NO_SELECT),
            Taint(key="b", effect=TaintEffect.NO_SELECT),
        ],
        previous=[old],
        now=T0 + 99.7,
    )
    assert [t.time_added for t in fresh] == [T0, T0 + 99]


def test_an_admin_write_keeps_the_built_in_taints_as_stored() -> None:
    unreachable = Taint(key=TAINT_UNREACHABLE, effect=TaintEffect.NO_SELECT, time_added=T0)
    kept = Taint(key="a", effect=TaintEffect.NO_SELECT, time_added=T0 - 60)
    written = [
        Taint(key="a", effect=TaintEffect.NO_SELECT),
        Taint(key="b", effect=TaintEffect.NO_SELECT_IF_NEW),
        Taint(key=TAINT_UNAVAILABLE, effect=TaintEffect.NO_SELECT),
    ]
    assert taints_on_write(written, stored=[kept, unreachable], now=T0 + 30) == (
        kept,
        Taint(key="b", effect=TaintEffect.NO_SELECT_IF_NEW, time_added=T0 + 30),
        unreachable,
    )
    assert taints_on_write([], stored=[kept, unreachable], now=T0) == (unreachable,)


# ---------------------------------------------------------------- ManagedClusterSet spec


def test_a_set_is_exclusive_by_label_unless_it_says_otherwise() -> None:
    assert parse_set_spec({}).selector_type is SelectorType.EXCLUSIVE_LABEL
    spec = parse_set_spec(
        {
            "clusterSelector": {
                "selectorType": "LabelSelector",
                "labelSelector": {
                    "matchLabels": {"env": "prod"},
                    "matchExpressions": [{"key": "zone", "operator": "In", "values": ["a", "b"]}],
                },
            }
        }
    )
    assert spec.selector_type is SelectorType.LABEL_SELECTOR
    assert str(spec.label_selector) == "env=prod,zone in (a,b)"


@pytest.mark.parametrize(
    ("selector", "path"),
    [
        ({"selectorType": "Magic"}, "/spec/clusterSelector/selectorType"),
        (
            {
                "selectorType": "ExclusiveClusterSetLabel",
                "labelSelector": {"matchLabels": {"a": "b"}},
            },
            "/spec/clusterSelector/labelSelector",
        ),
        ({"selectorType": "LabelSelector"}, "/spec/clusterSelector/labelSelector"),
        (
            {
                "selectorType": "LabelSelector",
                "labelSelector": {"matchExpressions": [{"key": "a", "operator": "In"}]},
            },
            "/spec/clusterSelector/labelSelector/matchExpressions/0/values",
        ),
        (
            {
                "selectorType": "LabelSelector",
                "labelSelector": {
                    "matchExpressions": [{"key": "a", "operator": "Exists", "values": ["x"]}]
                },
            },
            "/spec/clusterSelector/labelSelector/matchExpressions/0/values",
        ),
        (
            {
                "selectorType": "LabelSelector",
                "labelSelector": {"matchExpressions": [{"key": "a", "operator": "Gt"}]},
            },
            "/spec/clusterSelector/labelSelector/matchExpressions/0/operator",
        ),
        ({"labels": {}}, "/spec/clusterSelector"),
    ],
)
def test_a_bad_set_selector_is_refused_where_it_is_wrong(
    selector: dict[str, object], path: str
) -> None:
    assert path in [p for p, _ in problems_of(parse_set_spec, {"clusterSelector": selector})]


def view(name: str, **labels: str) -> ClusterView:
    return ClusterView(name=name, labels=labels, accepted=True)


def test_set_membership_by_label_by_selector_and_the_two_built_in_sets() -> None:
    a = view("a", **{CLUSTERSET_LABEL: "edge"}, env="prod")
    b = view("b", env="prod")
    c = view("c", **{CLUSTERSET_LABEL: "default"})
    clusters = [c, b, a]
    edge = cluster_set_view({"metadata": {"name": "edge"}, "spec": {}})
    prod = cluster_set_view(
        {
            "metadata": {"name": "prod"},
            "spec": {
                "clusterSelector": {
                    "selectorType": "LabelSelector",
                    "labelSelector": {"matchLabels": {"env": "prod"}},
                }
            },
        }
    )
    sets = {s.name: s for s in with_builtin_sets([edge, prod])}
    assert [x.name for x in clusters_in_set(sets["edge"], clusters)] == ["a"]
    assert [x.name for x in clusters_in_set(sets["prod"], clusters)] == ["a", "b"]
    assert [x.name for x in clusters_in_set(sets["default"], clusters)] == ["b", "c"]
    assert [x.name for x in clusters_in_set(sets["global"], clusters)] == ["a", "b", "c"]


def test_an_object_named_like_a_built_in_set_does_not_change_its_members() -> None:
    sneaky = ClusterSetView(name="global")
    assert with_builtin_sets([sneaky])[1].contains(view("x", **{CLUSTERSET_LABEL: "other"}))
    assert [s.name for s in with_builtin_sets([])] == ["default", "global"]


# ---------------------------------------------------------------- views and quantities


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("3500m", Fraction(7, 2)),
        ("8Gi", Fraction(8 * 2**30)),
        ("32G", Fraction(32 * 10**9)),
        ("12", Fraction(12)),
        ("1.5", Fraction(3, 2)),
        (".5k", Fraction(500)),
        ("2e3", Fraction(2000)),
        ("1E", Fraction(10**18)),
        ("100n", Fraction(1, 10**7)),
        ("-1", Fraction(-1)),
    ],
)
def test_kubernetes_quantities_are_read_exactly(text: str, value: Fraction) -> None:
    assert parse_quantity(text) == value


@pytest.mark.parametrize("text", ["", "Gi", "1.2.3", "8 Gi", "8gi", "1e", "1e999", "9" * 65, 5])
def test_anything_else_is_not_a_quantity(text: object) -> None:
    with pytest.raises(ValueError, match="quantity"):
        parse_quantity(text)


@given(st.text(max_size=80))
def test_the_quantity_parser_never_does_worse_than_a_value_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except ValueError:
        return
    assert isinstance(value, Fraction)


def managed_cluster(**status: Any) -> dict[str, Any]:
    return {
        "apiVersion": API_VERSION,
        "kind": "ManagedCluster",
        "metadata": {"name": "edge-1", "labels": {"env": "prod"}},
        "spec": {
            "hubAcceptsClient": True,
            "taints": [{"key": "a", "effect": "NoSelect", "timeAdded": format_time(T0)}],
        },
        "status": status,
    }


def test_a_view_reads_labels_claims_taints_and_allocatable() -> None:
    found = cluster_view(
        managed_cluster(
            clusterClaims=[
                {"name": "kubernetes.version", "value": "v1.36.3"},
                {"name": "region", "value": "eu-west"},
            ],
            allocatable={"cpu": "3500m", "memory": "32Gi"},
        )
    )
    assert found == ClusterView(
        name="edge-1",
        labels={"env": "prod"},
        claims={"kubernetes.version": "v1.36.3", "region": "eu-west"},
        taints=(Taint(key="a", effect=TaintEffect.NO_SELECT, time_added=T0),),
        allocatable_cpu=3500,
        allocatable_memory=32 * 2**30,
        accepted=True,
    )


def test_a_view_leaves_out_what_an_agent_reported_wrong() -> None:
    found = cluster_view(
        managed_cluster(
            clusterClaims=[{"name": "region"}, "junk", {"name": "ok", "value": "1"}],
            allocatable={"cpu": "lots", "memory": "-1Gi"},
        )
    )
    assert (found.claims, found.allocatable_cpu, found.allocatable_memory) == (
        {"ok": "1"},
        None,
        None,
    )


def test_a_cluster_whose_stored_spec_no_longer_parses_is_not_accepted() -> None:
    document = managed_cluster()
    document["spec"]["leaseDurationSeconds"] = 0
    assert not cluster_view(document).accepted


def test_times_are_rfc3339_to_the_second() -> None:
    assert format_time(T0 + 0.9) == "2027-01-15T08:00:00Z"
    assert parse_time("2027-01-15T08:00:00Z") == T0
    assert parse_time("2027-01-15T09:00:00+01:00") == T0
    assert parse_time("2027-01-15 08:00:00") is None
    assert parse_time("2027-01-15") is None
    assert parse_time(7) is None


# ---------------------------------------------------------------- conditions


def test_a_condition_keeps_its_transition_time_while_its_status_stays() -> None:
    first = next_condition([], type_="Available", status="True", reason="A", message="m", now=T0)
    assert first["lastTransitionTime"] == format_time(T0)
    same = next_condition(
        [first], type_="Available", status="True", reason="B", message="n", now=T0 + 60
    )
    assert (same["lastTransitionTime"], same["reason"]) == (format_time(T0), "B")
    flipped = next_condition(
        [same], type_="Available", status="False", reason="C", message="o", now=T0 + 120
    )
    assert flipped["lastTransitionTime"] == format_time(T0 + 120)


def test_putting_a_condition_replaces_its_type_in_place() -> None:
    other = {"type": "Joined", "status": "True"}
    old = {"type": "Available", "status": "True"}
    new = {"type": "Available", "status": "False"}
    assert put_condition([old, other], new) == [new, other]
    assert put_condition([other], new) == [other, new]


# ---------------------------------------------------------------- health


def health(
    *,
    renewed: float | None,
    now: float,
    healthy: bool | None = True,
    conditions: list[dict[str, Any]] | None = None,
    taints: tuple[Taint, ...] = (),
    lease: int = 10,
) -> Any:
    return evaluate_health(
        lease_renewed_at=renewed,
        lease_seconds=lease,
        apiserver_healthy=healthy,
        now=now,
        conditions=conditions or [],
        taints=taints,
    )


def test_a_renewed_lease_with_a_healthy_api_server_is_available_and_untainted() -> None:
    result = health(renewed=T0, now=T0 + 5)
    assert (result.available["status"], result.available["reason"]) == (
        "True",
        "ManagedClusterAvailable",
    )
    assert result.taints == ()
    assert result.wake_at == T0 + 50
    assert not result.taints_changed


def test_after_five_lease_periods_without_renewal_the_cluster_is_unknown_and_unreachable() -> None:
    before = health(renewed=T0, now=T0 + 49.9)
    assert before.available["status"] == "True"
    result = health(renewed=T0, now=T0 + 50, conditions=[before.available])
    assert result.available["status"] == "Unknown"
    assert result.available["reason"] == "ManagedClusterLeaseUpdateStopped"
    assert result.available["lastTransitionTime"] == format_time(T0 + 50)
    assert result.taints == (
        Taint(key=TAINT_UNREACHABLE, effect=TaintEffect.NO_SELECT, time_added=T0 + 50),
    )
    assert result.wake_at is None
    assert result.taints_changed


def test_a_lease_never_renewed_is_unknown_at_once() -> None:
    result = health(renewed=None, now=T0)
    assert (result.available["status"], result.available["reason"]) == (
        "Unknown",
        "ManagedClusterLeaseNeverRenewed",
    )
    assert [t.key for t in result.taints] == [TAINT_UNREACHABLE]


def test_an_unhealthy_api_server_makes_the_cluster_unavailable_and_tainted() -> None:
    result = health(renewed=T0, now=T0 + 1, healthy=False)
    assert (result.available["status"], result.available["reason"]) == (
        "False",
        "ManagedClusterKubeAPIServerUnavailable",
    )
    assert [t.key for t in result.taints] == [TAINT_UNAVAILABLE]
    assert result.wake_at == T0 + 50


def test_health_not_reported_with_a_fresh_lease_counts_as_available() -> None:
    assert health(renewed=T0, now=T0 + 1, healthy=None).available["status"] == "True"


def test_a_built_in_taint_keeps_its_time_while_it_stays_and_goes_when_healthy_again() -> None:
    admin = Taint(key="maintenance", effect=TaintEffect.NO_SELECT_IF_NEW, time_added=T0)
    first = health(renewed=T0, now=T0 + 60, taints=(admin,))
    later = health(renewed=T0, now=T0 + 600, conditions=[first.available], taints=first.taints)
    assert later.taints == first.taints
    assert not later.taints_changed
    assert later.available["lastTransitionTime"] == format_time(T0 + 60)
    back = health(renewed=T0 + 700, now=T0 + 701, conditions=[later.available], taints=later.taints)
    assert back.taints == (admin,)
    assert back.available["status"] == "True"
    assert back.available["lastTransitionTime"] == format_time(T0 + 701)


def test_an_unreachable_cluster_loses_its_unavailable_taint_and_the_reverse() -> None:
    unavailable = health(renewed=T0, now=T0 + 1, healthy=False)
    unreachable = health(renewed=T0, now=T0 + 100, taints=unavailable.taints)
    assert [t.key for t in unreachable.taints] == [TAINT_UNREACHABLE]


def test_the_lease_period_is_checked() -> None:
    with pytest.raises(ValueError, match="lease_seconds"):
        health(renewed=T0, now=T0, lease=0)


@given(
    renewed=st.none() | st.floats(min_value=0, max_value=2e9),
    now=st.floats(min_value=0, max_value=2e9),
    lease=st.integers(min_value=1, max_value=3600),
    healthy=st.none() | st.booleans(),
)
def test_health_rules_hold_for_any_lease(
    *, renewed: float | None, now: float, lease: int, healthy: bool | None
) -> None:
    result = health(renewed=renewed, now=now, healthy=healthy, lease=lease)
    status = result.available["status"]
    keys = [t.key for t in result.taints]
    expired = renewed is None or now >= renewed + 5 * lease
    assert (status == "Unknown") == expired
    assert (TAINT_UNREACHABLE in keys) == (status == "Unknown")
    assert (TAINT_UNAVAILABLE in keys) == (status == "False")
    assert (result.wake_at is None) == expired
    if result.wake_at is not None:
        assert result.wake_at > now
    again = health(
        renewed=renewed,
        now=now,
        healthy=healthy,
        lease=lease,
        conditions=[result.available],
        taints=result.taints,
    )
    assert again.taints == result.taints
    assert again.available == result.available


ANYTHING = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda c: st.lists(c, max_size=4) | st.dictionaries(st.text(max_size=16), c, max_size=4),
    max_leaves=20,
)


@given(ANYTHING)
def test_any_cluster_spec_is_taken_or_refused_with_problems(value: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parse_spec(value)
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
    assert all(path.startswith("/spec") for path, _ in problems)


@given(
    st.fixed_dictionaries(
        {},
        optional={
            "selectorType": st.sampled_from(["LabelSelector", "ExclusiveClusterSetLabel", "x"]),
            "labelSelector": ANYTHING,
        },
    )
    | ANYTHING
)
def test_any_set_spec_is_taken_or_refused_with_problems(selector: object) -> None:
    problems: list[tuple[str, str]] = []
    try:
        parse_set_spec({"clusterSelector": selector})
    except SpecError as error:
        problems = error.problems
        assert problems, "a refusal must say why"
    assert all(path.startswith("/spec") for path, _ in problems)


@given(ANYTHING)
def test_a_view_is_made_of_any_stored_document_without_raising(value: object) -> None:
    document = value if isinstance(value, dict) else {"spec": value, "status": value}
    assert isinstance(cluster_view(document), ClusterView)
    assert isinstance(cluster_set_view(document), ClusterSetView)
