# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: content negotiation, Status objects, watch-line framing and local patching.

* Accept: a client that accepts plain JSON anywhere in its list (kubelet sends
  ``application/vnd.kubernetes.protobuf,application/json``) is served JSON, which is what the
  cache stores. A client that accepts only protobuf, or asks for a server-side transformation
  (``as=Table``, ``as=PartialObjectMetadata``) first, is passed through uncached while online.
* Patches applied offline (heartbeats only): JSON merge patch (RFC 7386) and the subset of
  strategic merge patch kubelet uses for node status: lists with a merge key (``conditions``,
  ``addresses`` by ``type``) merge by key, ``$setElementOrder``/``$retainKeys`` are ignored.
  JSON patch (RFC 6902) is not applied offline: the write gets a 503, never a fake success.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

JSON = "application/json"
PROTOBUF = "application/vnd.kubernetes.protobuf"
MERGE_PATCH = "application/merge-patch+json"
STRATEGIC_PATCH = "application/strategic-merge-patch+json"
APPLY_PATCH = "application/apply-patch+yaml"

_MERGE_KEYS = {"conditions": "type", "addresses": "type", "images": "names", "taints": "key"}


class Representation(Enum):
    JSON = "json"
    """Plain JSON is acceptable: request JSON upstream and cache the answer."""
    TRANSFORMED = "transformed"
    """JSON transformed by the server (Table, metadata only) is preferred; plain JSON is not
    acceptable, so pass through uncached."""
    PREFERS_TRANSFORMED = "prefers-transformed"
    """A transformation is preferred but plain JSON is acceptable as a fallback."""
    OPAQUE = "opaque"
    """Only protobuf (or something else we do not decode): pass through uncached."""


def _media_types(accept: str) -> list[tuple[str, dict[str, str]]]:
    out: list[tuple[str, dict[str, str]]] = []
    for item in accept.split(","):
        kind, *params = (piece.strip() for piece in item.split(";"))
        if not kind:
            continue
        parsed: dict[str, str] = {}
        for param in params:
            name, _, value = param.partition("=")
            parsed[name.strip().lower()] = value.strip()
        out.append((kind.lower(), parsed))
    return out


def negotiate(accept: str | None) -> Representation:
    types = _media_types(accept or "")
    if not types:
        return Representation.JSON
    plain = any(
        kind in {JSON, "*/*", "application/*"} and "as" not in params for kind, params in types
    )
    first_kind, first_params = types[0]
    transformed_first = first_kind == JSON and "as" in first_params
    if transformed_first:
        return Representation.PREFERS_TRANSFORMED if plain else Representation.TRANSFORMED
    return Representation.JSON if plain else Representation.OPAQUE


def status_object(
    code: int, reason: str, message: str, *, details: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """A ``meta.k8s.io/v1`` Status, the body every Kubernetes client knows how to read."""
    body: dict[str, Any] = {
        "kind": "Status",
        "apiVersion": "v1",
        "metadata": {},
        "status": "Failure",
        "message": message,
        "reason": reason,
        "code": code,
    }
    if details:
        body["details"] = dict(details)
    return body


def offline_status(what: str, *, retry_after: int) -> dict[str, Any]:
    return status_object(
        503,
        "ServiceUnavailable",
        f"edge node is offline: the cloud API server is unreachable, so {what}; "
        "nothing was changed. Retry when the node is back online.",
        details={
            "retryAfterSeconds": retry_after,
            "causes": [{"reason": "NodeOffline", "message": "cloud API server unreachable"}],
        },
    )


def outcome_unknown_status(what: str, reason: str) -> dict[str, Any]:
    """A write that may have reached the API server, whose answer never came back.

    504 with reason ``Timeout``: client-go reports it as a server timeout and does not retry
    on its own (no ``Retry-After``), so the caller decides, after reading the object.
    """
    return status_object(
        504,
        "Timeout",
        f"the link to the cloud API server broke after this {what} was sent ({reason}); "
        "it may or may not have been applied. Read the object before retrying.",
        details={"causes": [{"reason": "OutcomeUnknown", "message": "answer lost on the link"}]},
    )


class LineTooLongError(ValueError):
    """A watch event is larger than the configured bound."""


@dataclass(slots=True)
class LineSplitter:
    """Split a byte stream into newline-terminated lines of bounded length."""

    max_line: int
    _buffer: bytearray

    @classmethod
    def create(cls, max_line: int) -> LineSplitter:
        return cls(max_line, bytearray())

    def feed(self, data: bytes) -> list[bytes]:
        self._buffer.extend(data)
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.max_line:
                raise LineTooLongError(f"watch event over {self.max_line} bytes")
            lines.append(bytes(self._buffer[start : end + 1]))
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line:
            raise LineTooLongError(f"watch event over {self.max_line} bytes")
        return lines

    @property
    def pending(self) -> bytes:
        return bytes(self._buffer)


class PatchError(ValueError):
    """The patch cannot be applied locally."""


def merge_patch(target: object, patch: object, *, strategic: bool = False) -> object:
    """RFC 7386 merge patch, plus keyed list merging when ``strategic``."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result: dict[str, Any] = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if strategic and key.startswith("$"):
            continue  # directives ($setElementOrder/..., $retainKeys, $patch) only reorder here
        if value is None:
            result.pop(key, None)
        elif strategic and key in _MERGE_KEYS and isinstance(value, list):
            result[key] = _merge_keyed_list(result.get(key), value, _MERGE_KEYS[key])
        else:
            result[key] = merge_patch(result.get(key), value, strategic=strategic)
    return result


def _merge_keyed_list(current: object, patch: list[object], merge_key: str) -> list[object]:
    items: list[dict[str, Any]] = (
        [dict(i) for i in current if isinstance(i, dict)] if isinstance(current, list) else []
    )
    for entry in patch:
        if not isinstance(entry, dict) or merge_key not in entry:
            raise PatchError(f"list entry without merge key {merge_key!r}")
        if entry.get("$patch") == "delete":
            items = [i for i in items if i.get(merge_key) != entry[merge_key]]
            continue
        for index, item in enumerate(items):
            if item.get(merge_key) == entry[merge_key]:
                items[index] = _as_dict(merge_patch(item, entry, strategic=True))
                break
        else:
            items.append(_as_dict(merge_patch({}, entry, strategic=True)))
    return list(items)


def _as_dict(value: object) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PatchError("patch did not produce an object")
    return value


def apply_patch(target: Mapping[str, Any], patch: object, content_type: str) -> dict[str, Any]:
    kind = content_type.split(";", 1)[0].strip().lower()
    if kind == MERGE_PATCH:
        result = merge_patch(dict(target), patch)
    elif kind == STRATEGIC_PATCH:
        result = merge_patch(dict(target), patch, strategic=True)
    else:
        raise PatchError(f"patch type {kind!r} is not applied offline")
    if not isinstance(result, dict):
        raise PatchError("patch did not produce an object")
    return result
