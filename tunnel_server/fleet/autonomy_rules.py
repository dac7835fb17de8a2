"""Which tolerations a pod of an autonomous edge node needs, and how to undo them. Pure.

Kubernetes evicts a pod ``tolerationSeconds`` after its node got the NoExecute taint
``node.kubernetes.io/unreachable`` or ``not-ready``; the DefaultTolerationSeconds admission
plugin gives every pod 300 s of both. A node labelled ``edgefleet.io/autonomy=true`` asks that
its pods stay for ``edgefleet.io/autonomy-duration`` (a Go duration such as ``2h``; ``0`` or no
annotation: forever), like OpenYurt's ``node.openyurt.io/autonomy-duration``.

Rules:

* the taint manager takes the *smallest* ``tolerationSeconds`` among a pod's NoExecute
  tolerations of a taint, and a toleration without seconds counts only when none has any: so
  every NoExecute toleration of the two keys gets ``max(original, duration)`` (none = forever),
  and a pod without one gets one;
* a live pod may change an existing toleration's ``tolerationSeconds`` and add tolerations,
  never remove one (``validateOnlyAddedTolerations``); the originals are saved in annotations
  (one value per matching toleration: seconds, ``forever``, or ``absent`` for one we added) and
  put back when the node loses the label; an added toleration gets 0 s, which evicts exactly
  as no toleration does;
* DaemonSet pods (they tolerate forever already), mirror pods (the API server refuses changes
  to them), pods being deleted and finished pods are left alone.
"""

from __future__ import annotations

import base64
import copy
import math
import re
from dataclasses import dataclass
from typing import Any

AUTONOMY_LABEL = "edgefleet.io/autonomy"
DURATION_ANNOTATION = "edgefleet.io/autonomy-duration"
UNREACHABLE = "node.kubernetes.io/unreachable"
NOT_READY = "node.kubernetes.io/not-ready"
TAINTS = (UNREACHABLE, NOT_READY)
ORIGINAL_ANNOTATIONS = {
    UNREACHABLE: "edgefleet.io/original-unreachable-toleration-seconds",
    NOT_READY: "edgefleet.io/original-not-ready-toleration-seconds",
}
MIRROR_ANNOTATION = "kubernetes.io/config.mirror"
WEBHOOK_PATH = "/webhooks/autonomy"
MAX_SECONDS = 2**63 - 1
"""``tolerationSeconds`` is an int64."""

_UNITS = {
    "ns": 1e-9,
    "us": 1e-6,
    "µs": 1e-6,
    "μs": 1e-6,
    "ms": 1e-3,
    "s": 1.0,
    "m": 60.0,
    "h": 3600.0,
}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")

Json = dict[str, Any]
Seconds = int | None
"""Toleration seconds; None = forever."""


def parse_go_duration(text: str) -> float:
    """Seconds of a Go ``time.ParseDuration`` string (``2h``, ``1h30m``, ``90s``, ``0``)."""
    value = text.strip()
    sign = -1.0 if value.startswith("-") else 1.0
    value = value.lstrip("+-")
    if value == "0":
        return 0.0
    if not value:
        raise ValueError(f"{text!r} is not a duration such as 2h, 30m or 1h30m")
    total, position = 0.0, 0
    for match in _DURATION_PART.finditer(value):
        if match.start() != position:
            break
        total += float(match.group(1)) * _UNITS[match.group(2)]
        position = match.end()
    if position != len(value):
        raise ValueError(f"{text!r} is not a duration such as 2h, 30m or 1h30m")
    return sign * total


@dataclass(frozen=True, kw_only=True)
class Autonomy:
    """A node's autonomy: how long its pods tolerate its outage."""

    seconds: Seconds
    """Toleration seconds; None = forever."""
    problem: str | None = None
    """Why the annotation was not used (then: forever), for one log line."""


def autonomy_of(labels: dict[str, str], annotations: dict[str, str]) -> Autonomy | None:
    """The node's autonomy, or None when it is not labelled ``edgefleet.io/autonomy=true``."""
    if labels.get(AUTONOMY_LABEL) != "true":
        return None
    text = annotations.get(DURATION_ANNOTATION)
    if text is None:
        return Autonomy(seconds=None)
    try:
        seconds = parse_go_duration(text)
    except ValueError as error:
        return Autonomy(seconds=None, problem=f"{DURATION_ANNOTATION}: {error}; using forever")
    if seconds < 0:
        return Autonomy(seconds=None, problem=f"{DURATION_ANNOTATION} {text!r} < 0; using forever")
    if seconds == 0 or seconds >= MAX_SECONDS:
        return Autonomy(seconds=None)
    return Autonomy(seconds=math.ceil(seconds))


def skip_reason(pod: Json) -> str | None:
    """Why the pod is never changed, or None."""
    metadata = pod.get("metadata") or {}
    if any(ref.get("kind") == "DaemonSet" for ref in metadata.get("ownerReferences") or []):
        return "daemonset"
    if MIRROR_ANNOTATION in (metadata.get("annotations") or {}):
        return "mirror"
    if metadata.get("deletionTimestamp"):
        return "deleting"
    if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
        return "finished"
    return None


@dataclass(frozen=True, kw_only=True)
class PodChange:
    """The pod's new tolerations and the annotations to set (a None value: remove)."""

    tolerations: list[Json]
    annotations: dict[str, str | None]


def _matching(tolerations: list[Json], taint: str) -> list[int]:
    return [
        i
        for i, t in enumerate(tolerations)
        if t.get("key") == taint and t.get("effect") == "NoExecute"
    ]


def _longer(a: Seconds, b: Seconds) -> Seconds:
    return None if a is None or b is None else max(a, b)


Original = int | None | str
"""A saved toleration value: seconds, None (forever) or ``"absent"`` (we added it)."""
ABSENT = "absent"


def _encode(value: Original) -> str:
    return "forever" if value is None else str(value)


def _decode(text: str) -> Original:
    if text == "forever":
        return None
    if text == ABSENT:
        return ABSENT
    return max(0, int(text))


def plan(pod: Json, autonomy: Autonomy | None) -> PodChange | None:
    """What to change on ``pod`` for its node's ``autonomy`` (None: not autonomous)."""
    if skip_reason(pod) is not None:
        return None
    annotations: dict[str, str] = (pod.get("metadata") or {}).get("annotations") or {}
    current: list[Json] = (pod.get("spec") or {}).get("tolerations") or []
    tolerations = copy.deepcopy(current)
    saved = {taint: annotations.get(ORIGINAL_ANNOTATIONS[taint]) for taint in TAINTS}
    if autonomy is None:
        if all(value is None for value in saved.values()):
            return None
        return _restore(tolerations, saved)
    new_annotations: dict[str, str | None] = {}
    for taint in TAINTS:
        indexes = _matching(tolerations, taint)
        originals = _originals(saved[taint], tolerations, indexes)
        if saved[taint] is None:
            new_annotations[ORIGINAL_ANNOTATIONS[taint]] = ",".join(map(_encode, originals))
        if not indexes:
            tolerations.append({"key": taint, "operator": "Exists", "effect": "NoExecute"})
            indexes = [len(tolerations) - 1]
        for index, original in zip(indexes, originals, strict=True):
            base: Seconds = 0 if isinstance(original, str) else original
            _set_seconds(tolerations[index], _longer(base, autonomy.seconds))
    if tolerations == current:
        return None  # tolerates long enough already (or was patched before): nothing to undo
    return PodChange(tolerations=tolerations, annotations=new_annotations)


def _originals(saved: str | None, tolerations: list[Json], indexes: list[int]) -> list[Original]:
    """The values before autonomy, one per matching toleration (``[absent]`` for none)."""
    if saved is not None:
        try:
            values = [_decode(part) for part in saved.split(",")]
        except ValueError:
            values = []
        if len(values) == max(1, len(indexes)):
            return values
    if not indexes:
        return [ABSENT]
    return [tolerations[i].get("tolerationSeconds") for i in indexes]


def _set_seconds(toleration: Json, seconds: Seconds) -> None:
    if seconds is None:
        toleration.pop("tolerationSeconds", None)
    else:
        toleration["tolerationSeconds"] = seconds


def _restore(tolerations: list[Json], saved: dict[str, str | None]) -> PodChange:
    for taint in TAINTS:
        indexes = _matching(tolerations, taint)
        text = saved[taint]
        if text is None or not indexes:
            continue
        try:
            values = [_decode(part) for part in text.split(",")]
        except ValueError:
            continue  # unreadable: leave the tolerations, drop the annotation
        if len(values) != len(indexes):
            continue  # someone else added tolerations since: leave them
        for index, value in zip(indexes, values, strict=True):
            _set_seconds(tolerations[index], 0 if isinstance(value, str) else value)
    return PodChange(
        tolerations=tolerations, annotations=dict.fromkeys(ORIGINAL_ANNOTATIONS.values())
    )


def json_patch(pod: Json, change: PodChange) -> list[Json]:
    """RFC 6902 operations for an admission response (a pod being created)."""
    ops: list[Json] = [{"op": "add", "path": "/spec/tolerations", "value": change.tolerations}]
    present = (pod.get("metadata") or {}).get("annotations")
    added = {k: v for k, v in change.annotations.items() if v is not None}
    if not added:
        return ops
    if present is None:
        ops.append({"op": "add", "path": "/metadata/annotations", "value": added})
    else:
        for key, value in added.items():
            path = "/metadata/annotations/" + key.replace("~", "~0").replace("/", "~1")
            ops.append({"op": "add", "path": path, "value": value})
    return ops


def merge_patch(pod: Json, change: PodChange) -> Json:
    """An RFC 7386 merge patch for a live pod, conditional on its resourceVersion."""
    metadata = pod.get("metadata") or {}
    return {
        "metadata": {
            "resourceVersion": metadata.get("resourceVersion"),
            "annotations": change.annotations,
        },
        "spec": {"tolerations": change.tolerations},
    }


def admission_response(uid: str, patch: list[Json] | None) -> Json:
    response: Json = {"uid": uid, "allowed": True}
    if patch:
        response["patchType"] = "JSONPatch"
        response["patch"] = base64.b64encode(_dumps(patch)).decode()
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "response": response}


def webhook_configuration(*, url: str, ca_pem: bytes, timeout_seconds: int) -> Json:
    """The MutatingWebhookConfiguration that sends pod creations to ``url``."""
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "edgefleet-autonomy"},
        "webhooks": [
            {
                "name": "autonomy.edgefleet.io",
                "admissionReviewVersions": ["v1"],
                "sideEffects": "None",
                # Pod creation must not depend on the tunnel server being up.
                "failurePolicy": "Ignore",
                "timeoutSeconds": timeout_seconds,
                "reinvocationPolicy": "IfNeeded",
                "clientConfig": {"url": url, "caBundle": base64.b64encode(ca_pem).decode()},
                "rules": [
                    {
                        "apiGroups": [""],
                        "apiVersions": ["v1"],
                        "operations": ["CREATE"],
                        "resources": ["pods"],
                        "scope": "Namespaced",
                    }
                ],
            }
        ],
    }


def _dumps(value: object) -> bytes:
    import json  # noqa: PLC0415 - keep the module's top imports to what the rules need

    return json.dumps(value, separators=(",", ":")).encode()
