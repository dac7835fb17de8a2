# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure rules behind link faults: probe pacing, field labels, the outcome-unknown Status."""

from __future__ import annotations

from edge_agent.kubecache.fieldlabels import unsupported_label
from edge_agent.kubecache.health import HealthState, State
from edge_agent.kubecache.keys import Resource
from edge_agent.kubecache.selectors import parse_field_selector
from edge_agent.kubecache.wire import outcome_unknown_status

PODS = Resource(group="", version="v1", resource="pods")


def current(state: HealthState) -> State:
    return state.state  # a call, so mypy does not keep one narrowed state across records


def delay(state: HealthState) -> float:
    return state.next_probe_delay(interval=5.0, retry_interval=1.0)


def test_probes_come_sooner_while_the_last_result_points_the_other_way() -> None:
    state = HealthState(failure_threshold=3, success_threshold=2)
    state.record(ok=True)
    assert current(state) is State.ONLINE
    assert delay(state) == 5.0
    state.record(ok=False)  # one failure while online: confirm it fast
    assert delay(state) == 1.0
    state.record(ok=False)
    state.record(ok=False)
    assert current(state) is State.OFFLINE
    assert delay(state) == 5.0
    state.record(ok=True)  # one success while offline: confirm it fast
    assert delay(state) == 1.0
    state.record(ok=True)
    assert current(state) is State.ONLINE
    assert delay(state) == 5.0


def test_a_passive_failure_also_makes_the_next_probe_come_sooner() -> None:
    state = HealthState(failure_threshold=3, success_threshold=2)
    state.record(ok=True)
    state.record(ok=False, probe=False, error="reset")
    assert delay(state) == 1.0


def test_field_labels_the_api_server_refuses_are_named_as_it_does() -> None:
    selector = parse_field_selector("spec.nodeName=n,spec.foo=bar")
    assert unsupported_label(PODS, selector) == "field label not supported: spec.foo"
    assert unsupported_label(PODS, parse_field_selector("status.phase!=Running")) is None
    nodes = Resource(group="", version="v1", resource="nodes")
    assert unsupported_label(nodes, parse_field_selector("metadata.namespace=x")) is not None


def test_resources_outside_the_table_are_not_checked() -> None:
    crd = Resource(group="example.com", version="v1", resource="widgets")
    slices = Resource(group="resource.k8s.io", version="v1", resource="resourceslices")
    for resource in (crd, slices):
        assert unsupported_label(resource, parse_field_selector("spec.nodeName=n")) is None


def test_the_outcome_unknown_status_is_a_timeout_that_says_so() -> None:
    status = outcome_unknown_status("create", "ServerDisconnectedError")
    assert (status["code"], status["reason"]) == (504, "Timeout")
    assert "may or may not have been applied" in status["message"]
    assert "retryAfterSeconds" not in status.get("details", {})
