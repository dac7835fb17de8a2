# Copyright 2026 The EdgeFleet Authors. SPDX-License-Identifier: Apache-2.0
"""Pure: LIST bodies as the API server writes them, and its continue tokens.

Continue tokens follow k8s.io/apiserver ``storage.EncodeContinue`` / ``DecodeContinue``, so
paging can cross the cut both ways.
"""

from __future__ import annotations

import base64
import binascii
import functools
import json
from collections.abc import Callable
from typing import Any

from edge_agent.kubecache.keys import sort_key
from edge_agent.kubecache.store import Coverage, RawPage, Scope, meta_of
from fleet_model.labels import SelectorError


def decode_continue(token: str) -> tuple[str, str]:
    """(the key after which a page starts, the snapshot's rv) from a continue token.

    Ours and the API server's share its format (k8s.io/apiserver ``storage.DecodeContinue``):
    unpadded URL-safe base64 of ``{"v":"meta.k8s.io/v1","rv":N,"start":K}``. Since v1.36 the
    server's start key begins with ``/`` (``"/pod-014\u0000"``); it is taken either way.
    """
    try:
        data = json.loads(base64.b64decode(token + "=" * (-len(token) % 4), altchars=b"-_"))
    except (ValueError, binascii.Error) as exc:
        raise SelectorError(f"invalid continue token: {exc}") from None
    start = data.get("start") if isinstance(data, dict) else None
    if not isinstance(start, str) or not start:
        raise SelectorError("invalid continue token: no start key")
    if not isinstance(data, dict) or data.get("v") != "meta.k8s.io/v1":
        raise SelectorError("invalid continue token: unknown version")
    rv = data.get("rv")
    return start.removeprefix("/"), str(rv) if isinstance(rv, int | str) else ""


def encode_continue(rv: str, last_key: str) -> str:
    """A token the API server takes as its own (no ``=`` padding: it rejects that with 400)."""
    body = {
        "v": "meta.k8s.io/v1",
        "rv": int(rv) if rv.isdigit() else rv,
        "start": "/" + last_key + "\x00",
    }
    text = json.dumps(body, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(text).decode().rstrip("=")


def _relative_key(scope: Scope, obj: dict[str, Any]) -> str:
    meta = meta_of(obj)
    name = str(meta.get("name", ""))
    return name if scope.namespace else sort_key(str(meta.get("namespace", "")), name)


def render_list(
    scope: Scope, coverage: Coverage, items: list[dict[str, Any]], *, limit: int, start: str
) -> dict[str, Any]:
    """The LIST body the API server would give for this query at ``coverage.rv``."""
    if start:
        items = [o for o in items if _relative_key(scope, o) >= start]
    metadata: dict[str, Any] = {"resourceVersion": coverage.rv}
    if limit > 0 and len(items) > limit:
        rest = len(items) - limit
        items = items[:limit]
        metadata["continue"] = encode_continue(coverage.rv, _relative_key(scope, items[-1]))
        if not scope.labels.requirements and not scope.fields.requirements:
            metadata["remainingItemCount"] = rest
    if not coverage.items_have_kind:
        items = [{k: v for k, v in o.items() if k not in {"kind", "apiVersion"}} for o in items]
    return {
        "kind": coverage.list_kind,
        "apiVersion": coverage.api_version,
        "metadata": metadata,
        "items": items,
    }


def render_raw_list(coverage: Coverage, page: RawPage) -> bytes:
    """The LIST body the API server would give, spliced from the stored JSON texts.

    Stored objects carry ``kind`` and ``apiVersion`` first; built-in lists leave them out of
    their items, so that prefix is cut off the text (an object stored another way is decoded
    and re-encoded instead).
    """
    metadata: dict[str, Any] = {"resourceVersion": coverage.rv}
    if page.more:
        metadata["continue"] = encode_continue(coverage.rv, page.last_key)
        if page.remaining > 0:
            metadata["remainingItemCount"] = page.remaining
    items = page.items
    if not coverage.items_have_kind:
        kind = coverage.list_kind.removesuffix("List")
        head = (
            json.dumps(
                {"kind": kind, "apiVersion": coverage.api_version}, separators=(",", ":")
            ).encode()[:-1]
            + b","
        )
        items = [_without_kind(text, head) for text in items]
    envelope = json.dumps(
        {"kind": coverage.list_kind, "apiVersion": coverage.api_version, "metadata": metadata},
        separators=(",", ":"),
    ).encode()
    return b"".join((envelope[:-1], b',"items":[', b",".join(items), b"]}"))


def list_head(coverage: Coverage) -> tuple[bytes, Callable[[bytes], bytes]]:
    """An unpaged LIST's text up to its first item, and what each stored text becomes.

    Streamed answers (``offline.py``) write the head, the items joined by ``,`` and ``]}``;
    the same bytes :func:`render_raw_list` gives for a page without ``continue``.
    """
    envelope = json.dumps(
        {
            "kind": coverage.list_kind,
            "apiVersion": coverage.api_version,
            "metadata": {"resourceVersion": coverage.rv},
        },
        separators=(",", ":"),
    ).encode()
    head = envelope[:-1] + b',"items":['
    if coverage.items_have_kind:
        return head, _same
    kind = coverage.list_kind.removesuffix("List")
    prefix = (
        json.dumps(
            {"kind": kind, "apiVersion": coverage.api_version}, separators=(",", ":")
        ).encode()[:-1]
        + b","
    )
    return head, functools.partial(_without_kind, head=prefix)


def _same(text: bytes) -> bytes:
    return text


def _without_kind(text: bytes, head: bytes) -> bytes:
    if text.startswith(head):
        return b"{" + text[len(head) :]
    obj = json.loads(text)
    if isinstance(obj, dict):
        obj.pop("kind", None)
        obj.pop("apiVersion", None)
    return json.dumps(obj, separators=(",", ":")).encode()
