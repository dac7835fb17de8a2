"""Bad input to the fleet API gets a clear problem document, and nothing else is disturbed."""

from __future__ import annotations

import json

from tests.integration.fleet.api.conftest import SPECS, Fleet, document


def _problems(body: dict[str, object]) -> dict[str, str]:
    return {p["path"]: p["reason"] for p in body["problems"]}  # type: ignore[attr-defined]


def test_an_unknown_kind_is_404(fleet: Fleet) -> None:
    for method, path in (
        ("GET", "/api/v1/fleet/deployments"),
        ("GET", "/api/v1/fleet/deployments/x"),
        ("DELETE", "/api/v1/fleet/deployments/x"),
    ):
        answer = fleet.call(method, path)
        assert (answer.status, answer.body["reason"]) == (404, "unknown_kind"), (method, path)
        assert answer.headers["Content-Type"].startswith("application/problem+json")
    empty = fleet.call("PUT", "/api/v1/fleet/placements/x", {})
    assert (empty.status, empty.body["reason"]) == (400, "invalid_document")  # a known kind
    unknown_put = fleet.call("PUT", "/api/v1/fleet/deployments/x", document("Placement", "x"))
    assert (unknown_put.status, unknown_put.body["reason"]) == (404, "unknown_kind")


def test_malformed_json_is_400(fleet: Fleet) -> None:
    for raw in (b"{not json", b"[1, 2]", b"", '{"a": "\xff"}'.encode("latin-1")):
        answer = fleet.call("PUT", "/api/v1/fleet/placements/bad", raw=raw)
        assert (answer.status, answer.body["reason"]) == (400, "bad_json"), raw


def test_an_invalid_document_lists_every_problem_with_its_path(fleet: Fleet) -> None:
    doc = document("Placement", "invalid", labels={"bad key!": "x"})
    doc["apiVersion"] = "v1"
    doc["spec"] = ["not", "an", "object"]
    answer = fleet.put(doc)
    assert (answer.status, answer.body["reason"]) == (400, "invalid_document")
    problems = _problems(answer.body)
    assert {"/apiVersion", "/metadata/labels/bad key!", "/spec"} <= set(problems), problems
    wrong_kind = fleet.call("PUT", "/api/v1/fleet/placements/k", document("Work", "k"))
    assert "/kind" in _problems(wrong_kind.body)
    assert fleet.call("GET", "/api/v1/fleet/placements/invalid").status == 404


def test_a_work_over_the_size_limit_is_413(fleet: Fleet) -> None:
    big = {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "big", "namespace": "default"},
        "data": {"blob": "x" * (600 * 1024)},
    }
    work = document("Work", "too-big", spec={**SPECS["Work"], "workload": {"manifests": [big]}})
    answer = fleet.put(work)
    assert (answer.status, answer.body["reason"]) == (413, "work_too_large")
    assert answer.body["limitBytes"] == 512 * 1024
    assert answer.body["sizeBytes"] > 600 * 1024
    assert "512" in answer.body["detail"] or str(512 * 1024) in answer.body["detail"]
    assert fleet.call("GET", "/api/v1/fleet/works/too-big").status == 404
    huge = fleet.call("PUT", "/api/v1/fleet/works/huge", raw=b"{" + b" " * (2 * 1024 * 1024))
    assert (huge.status, huge.body["reason"]) == (413, "body_too_large")


def test_a_thousand_labels_are_refused(fleet: Fleet) -> None:
    labels = {f"l{n}": "v" for n in range(1000)}
    answer = fleet.put(document("Placement", "labelled", labels=labels))
    assert (answer.status, answer.body["reason"]) == (400, "invalid_document")
    assert "/metadata/labels" in _problems(answer.body)


def test_a_name_that_is_not_the_urls_is_refused(fleet: Fleet) -> None:
    answer = fleet.call("PUT", "/api/v1/fleet/placements/one", document("Placement", "other"))
    assert (answer.status, answer.body["reason"]) == (400, "name_mismatch")
    assert _problems(answer.body) == {"/metadata/name": "must equal the name in the URL"}
    bad_name = fleet.call("PUT", "/api/v1/fleet/placements/Not_A_Name", document("Placement", "x"))
    assert (bad_name.status, bad_name.body["reason"]) == (400, "bad_name")
    patch = fleet.call(
        "PATCH",
        "/api/v1/fleet/placements/one",
        {"spec": {}},
        headers={"Content-Type": "text/plain"},
    )
    assert patch.status in (404, 415)


def test_deep_manifests_are_fine_but_nesting_is_bounded(fleet: Fleet) -> None:
    deep: dict[str, object] = {"leaf": 1}
    for _ in range(30):  # a Deployment's affinity rules reach ~20 levels inside a Work
        deep = {"n": deep}
    manifest = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "d"}, "x": deep}
    work = document("Work", "deep", spec={**SPECS["Work"], "workload": {"manifests": [manifest]}})
    answer = fleet.put(work)
    assert answer.status in (201, 200, 400), answer.body
    if answer.status == 400:  # a spec rule of Work, never the JSON reader
        assert answer.body["reason"] == "invalid_document"
    too_deep = "[" * 200 + "]" * 200
    raw = json.dumps({"kind": "x"})[:-1] + f', "spec": {too_deep}}}'
    refused = fleet.call("PUT", "/api/v1/fleet/placements/deep", raw=raw.encode())
    assert (refused.status, refused.body["reason"]) == (400, "bad_json")
