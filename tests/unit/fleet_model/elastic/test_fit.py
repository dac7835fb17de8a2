"""Fit: what the scheduler's filters would say of a pod on a node, existing or to be created."""

from __future__ import annotations

from fractions import Fraction
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.elastic.fit import (
    NodeFacts,
    fit_problem,
    node_facts,
    pod_requests,
    pool_node_facts,
    resource_problem,
    selection_problem,
)
from fleet_model.elastic.nodepool import API_VERSION, POOL_LABEL, NodePool, parse_node_pool

GI = 2**30


def container(cpu: str | None = None, memory: str | None = None, **extra: Any) -> dict[str, Any]:
    requests = {k: v for k, v in {"cpu": cpu, "memory": memory}.items() if v is not None}
    return {"name": "c", "image": "x", "resources": {"requests": requests}, **extra}


def pod(*containers: dict[str, Any], **spec: Any) -> dict[str, Any]:
    return {
        "metadata": {"name": "p", "namespace": "default"},
        "spec": {"containers": list(containers) or [container("1", "1Gi")], **spec},
    }


def node(
    labels: dict[str, str] | None = None,
    taints: list[dict[str, str]] | None = None,
    *,
    cpu: str = "4",
    memory: str = "8Gi",
    pods: str = "110",
    unschedulable: bool = False,
) -> NodeFacts:
    return node_facts(
        {
            "metadata": {"name": "n1", "labels": labels or {}},
            "spec": {"taints": taints or [], "unschedulable": unschedulable},
            "status": {"allocatable": {"cpu": cpu, "memory": memory, "pods": pods}},
        }
    )


def pool(**node_spec: Any) -> NodePool:
    shape = {"capacity": {"cpu": "2", "memory": "4Gi", "pods": 10}, **node_spec}
    return parse_node_pool(
        {
            "apiVersion": API_VERSION,
            "kind": "NodePool",
            "metadata": {"name": "cloud"},
            "spec": {"max": 3, "node": shape, "provider": {"kwok": {}}},
        }
    )


# ---------------------------------------------------------------- requests


def test_requests_sum_the_containers_and_count_one_pod() -> None:
    got = pod_requests(pod(container("500m", "1Gi"), container("250m", "512Mi")))
    assert got == {"cpu": Fraction(3, 4), "memory": Fraction(3 * GI, 2), "pods": Fraction(1)}


def test_an_init_container_counts_by_its_max_not_its_sum() -> None:
    spec = pod(container("1", "1Gi"), initContainers=[container("3", "256Mi"), container("2")])
    assert pod_requests(spec) == {"cpu": 3, "memory": GI, "pods": 1}


def test_sidecars_add_to_the_containers_and_to_later_init_containers() -> None:
    sidecar = container("1", "1Gi", restartPolicy="Always")
    spec = pod(
        container("1", "1Gi"),
        initContainers=[container("1500m"), sidecar, container("1500m", "3Gi")],
    )
    # Running: 1 + sidecar 1 = 2 cpu, 2Gi. Init peaks: 1.5 cpu alone; 1.5 + 1 = 2.5 cpu, 4Gi.
    assert pod_requests(spec) == {"cpu": Fraction(5, 2), "memory": 4 * GI, "pods": 1}


def test_overhead_is_added_and_a_missing_request_defaults_to_the_limit() -> None:
    limited = {"name": "c", "resources": {"limits": {"cpu": "2", "nvidia.com/gpu": "1"}}}
    spec = pod(limited, overhead={"cpu": "100m", "memory": "64Mi"})
    assert pod_requests(spec) == {
        "cpu": Fraction(21, 10),
        "memory": 64 * 2**20,
        "nvidia.com/gpu": 1,
        "pods": 1,
    }


def test_a_garbage_quantity_is_a_reason_not_a_crash() -> None:
    bad = pod(container("lots"))
    with pytest.raises(ValueError, match="quantity"):
        pod_requests(bad)
    problem = fit_problem(bad, node())
    assert problem is not None
    assert problem.startswith("unreadable resource requests")


# ---------------------------------------------------------------- resources


def test_resources_fit_until_the_node_is_full() -> None:
    one = pod(container("1", "2Gi"))
    assert fit_problem(one, node(), [one, one, one]) is None
    assert fit_problem(one, node(), [one, one, one, one]) == "Insufficient cpu"
    big = pod(container("1", "9Gi"))
    assert fit_problem(big, node()) == "Insufficient memory"


def test_the_pods_count_is_a_resource() -> None:
    tiny = pod(container("1m"))
    assert fit_problem(tiny, node(pods="2"), [tiny]) is None
    assert fit_problem(tiny, node(pods="2"), [tiny, tiny]) == "Insufficient pods"


def test_an_extended_resource_the_node_lacks_does_not_fit() -> None:
    gpu = pod({"name": "c", "resources": {"requests": {"nvidia.com/gpu": "1"}}})
    assert fit_problem(gpu, node()) == "Insufficient nvidia.com/gpu"


def test_resource_problem_checks_free_room() -> None:
    facts = node(cpu="2")
    assert resource_problem({"cpu": Fraction(1)}, facts, {"cpu": Fraction(1)}) is None
    assert resource_problem({"cpu": Fraction(1)}, facts, {"cpu": Fraction(3, 2)}) is not None


# ---------------------------------------------------------------- selection


def test_node_selector_needs_every_pair() -> None:
    spec = pod(nodeSelector={"zone": "a", "tier": "cloud"})
    assert fit_problem(spec, node({"zone": "a", "tier": "cloud", "x": "y"})) is None
    problem = fit_problem(spec, node({"zone": "a"}))
    assert problem == "nodeSelector tier=cloud does not match the node's labels"


def affinity(*terms: list[dict[str, Any]]) -> dict[str, Any]:
    return {
        "nodeAffinity": {
            "requiredDuringSchedulingIgnoredDuringExecution": {
                "nodeSelectorTerms": [{"matchExpressions": list(term)} for term in terms]
            }
        }
    }


@pytest.mark.parametrize(
    ("expression", "labels", "fits"),
    [
        ({"key": "zone", "operator": "In", "values": ["a", "b"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "In", "values": ["a"]}, {"zone": "b"}, False),
        ({"key": "zone", "operator": "In", "values": ["a"]}, {}, False),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "b"}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {}, True),
        ({"key": "zone", "operator": "NotIn", "values": ["a"]}, {"zone": "a"}, False),
        ({"key": "gpu", "operator": "Exists"}, {"gpu": ""}, True),
        ({"key": "gpu", "operator": "Exists"}, {}, False),
        ({"key": "gpu", "operator": "DoesNotExist"}, {}, True),
        ({"key": "gpu", "operator": "DoesNotExist"}, {"gpu": "1"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "16"}, True),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "8"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {"cores": "many"}, False),
        ({"key": "cores", "operator": "Gt", "values": ["8"]}, {}, False),
        ({"key": "cores", "operator": "Lt", "values": ["8"]}, {"cores": "4"}, True),
        ({"key": "cores", "operator": "Lt", "values": ["x"]}, {"cores": "4"}, False),
        ({"key": "zone", "operator": "Near", "values": ["a"]}, {"zone": "a"}, False),
    ],
)
def test_required_node_affinity_operators(
    expression: dict[str, Any], labels: dict[str, str], *, fits: bool
) -> None:
    problem = selection_problem(pod(affinity=affinity([expression])), node(labels))
    assert (problem is None) is fits


def test_affinity_terms_are_ored_and_expressions_anded() -> None:
    zone_a = {"key": "zone", "operator": "In", "values": ["a"]}
    gpu = {"key": "gpu", "operator": "Exists"}
    spec = pod(affinity=affinity([zone_a, gpu], [{"key": "tier", "operator": "Exists"}]))
    assert selection_problem(spec, node({"zone": "a", "gpu": "1"})) is None
    assert selection_problem(spec, node({"tier": "x"})) is None
    assert selection_problem(spec, node({"zone": "a"})) is not None


def test_an_empty_term_matches_nothing() -> None:
    spec = pod(affinity=affinity([]))
    assert selection_problem(spec, node({"zone": "a"})) is not None


def test_match_fields_on_the_node_name_never_match_a_node_not_yet_created() -> None:
    by_name = {"key": "metadata.name", "operator": "In", "values": ["n1"]}
    spec = pod(
        affinity={
            "nodeAffinity": {
                "requiredDuringSchedulingIgnoredDuringExecution": {
                    "nodeSelectorTerms": [{"matchFields": [by_name]}]
                }
            }
        }
    )
    assert selection_problem(spec, node()) is None
    assert selection_problem(spec, pool_node_facts(pool())) is not None


# ---------------------------------------------------------------- taints


NO_SCHEDULE = {"key": "cloud", "value": "yes", "effect": "NoSchedule"}


@pytest.mark.parametrize(
    ("tolerations", "fits"),
    [
        ([], False),
        ([{"key": "cloud", "operator": "Equal", "value": "yes", "effect": "NoSchedule"}], True),
        ([{"key": "cloud", "value": "yes"}], True),  # Equal is the default, any effect
        ([{"key": "cloud", "operator": "Equal", "value": "no"}], False),
        ([{"key": "cloud", "operator": "Exists"}], True),
        ([{"key": "cloud", "operator": "Exists", "effect": "NoExecute"}], False),
        ([{"operator": "Exists"}], True),  # empty key with Exists: everything
        ([{"key": "other", "operator": "Exists"}], False),
    ],
)
def test_tolerations_against_a_no_schedule_taint(
    tolerations: list[dict[str, str]], *, fits: bool
) -> None:
    problem = selection_problem(pod(tolerations=tolerations), node(taints=[NO_SCHEDULE]))
    assert (problem is None) is fits
    if not fits:
        assert problem == "untolerated taint cloud=yes:NoSchedule"


def test_no_execute_filters_and_prefer_no_schedule_does_not() -> None:
    no_execute = {"key": "spot", "effect": "NoExecute"}
    prefer = {"key": "slow", "effect": "PreferNoSchedule"}
    assert selection_problem(pod(), node(taints=[prefer])) is None
    assert selection_problem(pod(), node(taints=[no_execute])) == "untolerated taint spot:NoExecute"
    tolerant = pod(tolerations=[{"key": "spot", "operator": "Exists", "effect": "NoExecute"}])
    assert selection_problem(tolerant, node(taints=[no_execute, prefer])) is None


def test_a_cordoned_node_takes_only_pods_that_tolerate_it() -> None:
    assert selection_problem(pod(), node(unschedulable=True)) == "node is cordoned (unschedulable)"
    tolerant = pod(tolerations=[{"key": "node.kubernetes.io/unschedulable", "operator": "Exists"}])
    assert selection_problem(tolerant, node(unschedulable=True)) is None


# ---------------------------------------------------------------- a pool's new node


def test_a_pool_new_node_has_the_pool_shape_labels_and_taints() -> None:
    cloud = pool(labels={"tier": "cloud"}, taints=[NO_SCHEDULE])
    facts = pool_node_facts(cloud)
    assert facts.name is None
    assert facts.labels == {"tier": "cloud", POOL_LABEL: "cloud"}
    assert facts.allocatable == {"cpu": 2, "memory": 4 * GI, "pods": 10}
    tolerant = pod(
        tolerations=[{"key": "cloud", "operator": "Exists"}], nodeSelector={"tier": "cloud"}
    )
    assert fit_problem(tolerant, cloud) is None
    assert fit_problem(pod(), cloud) == "untolerated taint cloud=yes:NoSchedule"
    too_big = pod(container("3"), tolerations=[{"operator": "Exists"}])
    assert fit_problem(too_big, cloud) == "Insufficient cpu"


def test_node_facts_tolerate_garbage() -> None:
    facts = node_facts(
        {"metadata": [], "spec": {"taints": "x"}, "status": {"capacity": {"cpu": "?"}}}
    )
    assert facts == NodeFacts(name="", allocatable={"cpu": Fraction(0)})


@settings(max_examples=100, deadline=None)
@given(
    st.lists(st.integers(min_value=0, max_value=4000), min_size=1, max_size=4),
    st.lists(st.integers(min_value=0, max_value=4000), max_size=4),
)
def test_requests_are_at_least_every_container_and_at_most_the_sum(
    plain: list[int], init: list[int]
) -> None:
    spec = pod(
        *(container(f"{m}m") for m in plain), initContainers=[container(f"{m}m") for m in init]
    )
    cpu = pod_requests(spec).get("cpu", Fraction(0)) * 1000
    assert cpu == max([sum(plain), *init])
    assert all(cpu >= m for m in plain + init)


def test_a_pool_that_lists_a_resource_takes_pods_requesting_it() -> None:
    storage = pod({"name": "c", "resources": {"requests": {"ephemeral-storage": "1Gi"}}})
    assert fit_problem(storage, pool()) == "Insufficient ephemeral-storage"
    shape = {"capacity": {"cpu": "2", "memory": "4Gi", "pods": 10, "ephemeral-storage": "20Gi"}}
    assert fit_problem(storage, pool(**shape)) is None
