"""Optimistic concurrency: ``ETag`` on reads of a versioned object, ``If-Match`` on its writes.

A route with a version (a twin section's ``$version``, a device model's version, ...) sends it as
a strong entity tag, ``ETag: "<version>"``, and keeps the version in the body too. A write that
carries ``If-Match`` is applied only while the object is still at one of the listed tags (``*``:
any existing object); otherwise 412 ``precondition_failed``, and nothing changes. A write
without ``If-Match`` is unconditional (as in Kubernetes, where resourceVersion is optional).
"""

from __future__ import annotations

from aiohttp import web

from tunnel_server.web.errors import ApiError

MAX_IF_MATCH = 1024
"""Characters of an ``If-Match`` header read."""


def etag(version: int | str) -> str:
    return f'"{version}"'


def if_match(request: web.Request) -> list[str] | None:
    """The tags of ``If-Match`` (``["*"]`` for any), ``None`` without one; 400 when malformed."""
    raw = request.headers.get("If-Match")
    if raw is None:
        return None
    raw = raw.strip()
    if raw == "*":
        return ["*"]
    tags = [part.strip() for part in raw.split(",")]
    if len(raw) > MAX_IF_MATCH or not all(
        len(tag) >= 2 and tag[0] == tag[-1] == '"' and '"' not in tag[1:-1] for tag in tags
    ):
        raise ApiError(
            400,
            "bad_if_match",
            'If-Match must be "*" or quoted entity tags from an ETag header, e.g. If-Match: "7"',
        )
    return tags


def check_if_match(request: web.Request, current: int | str | None) -> None:
    """412 unless ``If-Match`` (if sent) names ``current``; ``None``: the object does not exist."""
    tags = if_match(request)
    if tags is None:
        return
    if current is not None and (tags == ["*"] or etag(current) in tags):
        return
    raise ApiError(
        412,
        "precondition_failed",
        f"the object changed: it is at {etag(current) if current is not None else 'nothing'}, "
        f"not {', '.join(tags)}; read it again (GET) and retry with its new ETag",
        extra={"currentVersion": current},
    )
