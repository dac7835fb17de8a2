"""Tolerations for pods of autonomous nodes: what the webhook and the controller change."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from tunnel_server.fleet import autonomy_rules as rules
from tunnel_server.fleet.autonomy_rules import NOT_READY, ORIGINAL_ANNOTATIONS, UNREACHABLE

DEFAULTS = [
    {"key": NOT_READY, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
    {"key": UNREACHABLE, "operator": "Exists", "effect": "NoExecute", "tolerationSeconds": 300},
]
"""What the DefaultTolerationSeconds admission plugin gives every pod."""


def pod(
    tolerations: list[dict[str, Any]] | None = None,
    *,
    annotations: dict[str, str] | None = None,
    owner: str | None = None,
) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": "p", "namespace": "ns", "resourceVersion": "7"}
    if annotations is not None:
        metadata["annotations"] = annotations
    if owner:
        metadata["ownerReferences"] = [{"kind": owner, "name": "x"}]
    spec: dict[str, Any] = {"nodeName": "edge-1"}
    if tolerations is not None:
        spec["tolerations"] = tolerations
    return {"metadata": metadata, "spec": spec}


def seconds(tolerations: list[dict[str, Any]], key: str) -> list[int | None]:
    return [t.get("tolerationSeconds") for t in tolerations if t.get("key") == key]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("2h", 7200.0),
        ("1h30m", 5400.0),
        ("90s", 90.0),
        ("1.5h", 5400.0),
        ("300ms", 0.3),
        ("0", 0.0),
    ],
)
def test_go_durations(text: str, expected: float) -> None:
    assert rules.parse_go_duration(text) == pytest.approx(expected)


@pytest.mark.parametrize("text", ["", "2", "h", "2d", "1h 30m", "2hh", "abc", "1..5s"])
def test_bad_go_durations(text: str) -> None:
    with pytest.raises(ValueError, match="not a duration"):
        rules.parse_go_duration(text)


def test_autonomy_comes_from_the_label_and_the_annotation() -> None:
    label = {rules.AUTONOMY_LABEL: "true"}
    assert rules.autonomy_of({}, {}) is None
    assert rules.autonomy_of({rules.AUTONOMY_LABEL: "false"}, {}) is None
    assert rules.autonomy_of(label, {}) == rules.Autonomy(seconds=None)
    assert rules.autonomy_of(label, {rules.DURATION_ANNOTATION: "0"}) == rules.Autonomy(
        seconds=None
    )
    assert rules.autonomy_of(label, {rules.DURATION_ANNOTATION: "2h"}) == rules.Autonomy(
        seconds=7200
    )
    assert rules.autonomy_of(label, {rules.DURATION_ANNOTATION: "1.5s"}) == rules.Autonomy(
        seconds=2
    )
    broken = rules.autonomy_of(label, {rules.DURATION_ANNOTATION: "two hours"})
    assert broken is not None
    assert broken.seconds is None
    assert broken.problem


def test_forever_drops_the_seconds_and_saves_the_originals() -> None:
    change = rules.plan(pod(DEFAULTS), rules.Autonomy(seconds=None))
    assert change is not None
    assert seconds(change.tolerations, UNREACHABLE) == [None]
    assert seconds(change.tolerations, NOT_READY) == [None]
    assert change.annotations == {
        ORIGINAL_ANNOTATIONS[UNREACHABLE]: "300",
        ORIGINAL_ANNOTATIONS[NOT_READY]: "300",
    }


def test_a_duration_never_shortens_a_longer_toleration() -> None:
    mine = [{**DEFAULTS[0], "tolerationSeconds": 9000}, DEFAULTS[1]]
    change = rules.plan(pod(mine), rules.Autonomy(seconds=7200))
    assert change is not None
    assert seconds(change.tolerations, NOT_READY) == [9000]
    assert seconds(change.tolerations, UNREACHABLE) == [7200]


def test_a_pod_without_the_tolerations_gets_them() -> None:
    change = rules.plan(pod(None), rules.Autonomy(seconds=60))
    assert change is not None
    assert sorted(t["key"] for t in change.tolerations) == [NOT_READY, UNREACHABLE]
    assert all(
        t["effect"] == "NoExecute" and t["tolerationSeconds"] == 60 for t in change.tolerations
    )
    assert set(change.annotations.values()) == {"absent"}


def test_skipped_pods() -> None:
    assert rules.plan(pod(DEFAULTS, owner="DaemonSet"), rules.Autonomy(seconds=None)) is None
    mirror = pod(DEFAULTS, annotations={rules.MIRROR_ANNOTATION: "x"})
    assert rules.plan(mirror, rules.Autonomy(seconds=None)) is None
    assert rules.plan(pod(DEFAULTS, owner="ReplicaSet"), rules.Autonomy(seconds=None)) is not None


def apply(p: dict[str, Any], change: rules.PodChange) -> dict[str, Any]:
    """The pod after a merge patch, as the API server would store it."""
    after: dict[str, Any] = json.loads(json.dumps(p))
    after["spec"]["tolerations"] = change.tolerations
    annotations = after["metadata"].setdefault("annotations", {})
    for key, value in change.annotations.items():
        if value is None:
            annotations.pop(key, None)
        else:
            annotations[key] = value
    return after


def test_steady_state_needs_no_patch_and_removal_restores() -> None:
    protected = apply(pod(DEFAULTS), rules.plan(pod(DEFAULTS), rules.Autonomy(seconds=None)))  # type: ignore[arg-type]
    assert rules.plan(protected, rules.Autonomy(seconds=None)) is None
    restore = rules.plan(protected, None)
    assert restore is not None
    restored = apply(protected, restore)
    assert restored["spec"]["tolerations"] == DEFAULTS
    assert restored["metadata"]["annotations"] == {}
    assert rules.plan(restored, None) is None


def test_a_shorter_duration_later_starts_from_the_originals() -> None:
    forever = apply(pod(DEFAULTS), rules.plan(pod(DEFAULTS), rules.Autonomy(seconds=None)))  # type: ignore[arg-type]
    change = rules.plan(forever, rules.Autonomy(seconds=600))
    assert change is not None
    assert seconds(change.tolerations, UNREACHABLE) == [600]
    assert change.annotations == {}  # the originals stay as first saved


_TOLERATION = st.fixed_dictionaries(
    {
        "key": st.sampled_from([UNREACHABLE, NOT_READY, "other"]),
        "operator": st.just("Exists"),
        "effect": st.sampled_from(["NoExecute", "NoSchedule"]),
    },
    optional={"tolerationSeconds": st.integers(0, 100_000)},
)


@given(
    tolerations=st.lists(_TOLERATION, max_size=5),
    duration=st.one_of(st.none(), st.integers(1, 100_000)),
)
def test_protect_then_restore_is_a_live_pod_update_and_undoes_itself(
    tolerations: list[dict[str, Any]], duration: int | None
) -> None:
    """A protected live pod only gains tolerations or changes their seconds; restoring undoes it.

    The taint manager's minimum is at least the duration; after restoring, eviction is as before.
    """
    before = pod([dict(t) for t in tolerations])
    change = rules.plan(before, rules.Autonomy(seconds=duration))
    if change is None:
        return
    new = change.tolerations
    assert len(new) >= len(tolerations)
    for old, now in zip(tolerations, new, strict=False):
        assert {k: v for k, v in old.items() if k != "tolerationSeconds"} == {
            k: v for k, v in now.items() if k != "tolerationSeconds"
        }
    for key in (UNREACHABLE, NOT_READY):
        values = [
            t.get("tolerationSeconds")
            for t in new
            if t["key"] == key and t["effect"] == "NoExecute"
        ]
        assert values
        if duration is None:
            assert values == [None] * len(values)
        else:
            assert all(v is None or v >= duration for v in values)
    after = apply(before, change)
    restore = rules.plan(after, None)
    assert restore is not None
    restored = apply(after, restore)
    for old, now in zip(tolerations, restored["spec"]["tolerations"], strict=False):
        assert old == now
    for added in restored["spec"]["tolerations"][len(tolerations) :]:
        assert added["tolerationSeconds"] == 0  # evicts at once, like no toleration


def test_json_patch_and_admission_response() -> None:
    p = pod(DEFAULTS)
    change = rules.plan(p, rules.Autonomy(seconds=None))
    assert change is not None
    ops = rules.json_patch(p, change)
    assert ops[0] == {"op": "add", "path": "/spec/tolerations", "value": change.tolerations}
    assert ops[1]["path"] == "/metadata/annotations"
    with_annotations = pod(DEFAULTS, annotations={"a": "b"})
    ops = rules.json_patch(with_annotations, change)
    assert "/metadata/annotations/edgefleet.io~1original-unreachable-toleration-seconds" in [
        op["path"] for op in ops
    ]
    review = rules.admission_response("uid-1", ops)
    assert review["response"]["uid"] == "uid-1"
    assert review["response"]["allowed"] is True
    assert json.loads(base64.b64decode(review["response"]["patch"])) == ops
    assert "patch" not in rules.admission_response("uid-2", None)["response"]


def test_webhook_configuration_fails_open() -> None:
    document = rules.webhook_configuration(
        url="https://cloud:8443/webhooks/autonomy", ca_pem=b"PEM", timeout_seconds=5
    )
    hook = document["webhooks"][0]
    assert hook["failurePolicy"] == "Ignore"
    assert hook["clientConfig"]["caBundle"] == base64.b64encode(b"PEM").decode()
    assert hook["rules"][0]["resources"] == ["pods"]
