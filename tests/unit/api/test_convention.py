"""The API convention (docs/api.md) held over every route of the served OpenAPI document.

One list shape with ``limit``/``continue``, camelCase fields, RFC 3339 times, RFC 9457 problem
documents for every error, ``ETag``/``If-Match`` where an object has a version. The document is
the one the server serves (``app.openapi_paths()`` is every part's routes); schemathesis checks
elsewhere that the server answers as the document says, so together they hold the server to it.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from typing import Any

import pytest

from tunnel_server.api.openapi import document
from tunnel_server.app import openapi_paths

CAMEL = re.compile(r"^\$?[a-z][a-zA-Z0-9]*$")
METHODS = ("get", "put", "post", "patch", "delete")
_DOC = document(openapi_paths())
_SCHEMAS: dict[str, Any] = _DOC["components"]["schemas"]


def _resolve(schema: dict[str, Any]) -> dict[str, Any]:
    while "$ref" in schema:
        schema = _SCHEMAS[schema["$ref"].rsplit("/", 1)[1]]
    return schema


def _walk(schema: Any, where: str, seen: set[str]) -> Iterator[tuple[str, str, dict[str, Any]]]:
    """Every (place, property name, property schema) inside ``schema``, refs followed once."""
    if not isinstance(schema, dict):
        return
    ref = schema.get("$ref")
    if isinstance(ref, str):
        name = ref.rsplit("/", 1)[1]
        if name not in seen:
            seen.add(name)
            yield from _walk(_SCHEMAS[name], name, seen)
        return
    for prop, sub in (schema.get("properties") or {}).items():
        yield where, prop, sub
        yield from _walk(sub, f"{where}.{prop}", seen)
    for key in ("items", "additionalProperties", "not"):
        yield from _walk(schema.get(key), where, seen)
    for key in ("allOf", "oneOf", "anyOf"):
        for sub in schema.get(key) or ():
            yield from _walk(sub, where, seen)


def _operations() -> Iterator[tuple[str, str, dict[str, Any]]]:
    for path, item in _DOC["paths"].items():
        for method in METHODS:
            if method in item:
                yield path, method, item[method]


OPERATIONS = sorted(f"{method.upper()} {path}" for path, method, _ in _operations())


def _op(name: str) -> tuple[str, str, dict[str, Any]]:
    method, path = name.split(" ", 1)
    return path, method.lower(), _DOC["paths"][path][method.lower()]


def _json_schema(response: dict[str, Any]) -> dict[str, Any] | None:
    content = response.get("content") or {}
    media = content.get("application/json")
    return None if media is None else media.get("schema")


def test_the_document_has_the_routes_of_every_part() -> None:
    paths = set(_DOC["paths"])
    assert {"/api/v1/nodes", "/api/v1/devices", "/api/v1/clusters"} <= paths


@pytest.mark.parametrize("name", OPERATIONS)
def test_fields_are_camel_case_and_times_rfc3339(name: str) -> None:
    path, _, operation = _op(name)
    schemas: list[Any] = [
        _json_schema(response) for response in operation.get("responses", {}).values()
    ]
    body = (operation.get("requestBody") or {}).get("content", {})
    schemas += [media.get("schema") for media in body.values()]
    wrong: list[str] = []
    for schema in schemas:
        for where, prop, sub in _walk(schema, path, set()):
            if not CAMEL.match(prop):
                wrong.append(f"{where}.{prop}: not camelCase")
            resolved = _resolve(sub)
            if prop.endswith("At") and resolved.get("format") != "date-time":
                wrong.append(f"{where}.{prop}: a time must be an RFC 3339 date-time string")
    assert not wrong, "\n".join(sorted(set(wrong)))


@pytest.mark.parametrize("name", OPERATIONS)
def test_every_error_is_a_problem_document(name: str) -> None:
    _, _, operation = _op(name)
    wrong = []
    for status, response in operation.get("responses", {}).items():
        if status == "default" or int(status) >= 400:
            content = response.get("content") or {}
            media = content.get("application/problem+json")
            if set(content) != {"application/problem+json"} or media is None:
                wrong.append(f"{status}: {sorted(content)} (want application/problem+json)")
            elif _resolve(media["schema"]) is not _SCHEMAS["Problem"]:
                wrong.append(f"{status}: schema is not #/components/schemas/Problem")
    assert not wrong, wrong


@pytest.mark.parametrize("name", OPERATIONS)
def test_lists_have_one_shape_and_page_by_continue(name: str) -> None:
    _, method, operation = _op(name)
    params = {p["name"] for p in operation.get("parameters", []) if "name" in p}
    assert not params & {"offset", "cursor", "page"}, "lists page by limit/continue only"
    op_id = operation.get("operationId", "")
    if method != "get" or not op_id.startswith("list"):
        return
    schema = _json_schema(operation["responses"]["200"])
    assert schema is not None, "a list answers JSON"
    resolved = _resolve(schema)
    assert set(resolved.get("required", ())) >= {"items", "metadata"}, resolved
    assert set(resolved["properties"]) <= {"items", "metadata"}, resolved
    assert resolved["properties"]["metadata"] == {"$ref": "#/components/schemas/ListMeta"}
    assert {"limit", "continue"} <= params, params


@pytest.mark.parametrize("name", OPERATIONS)
def test_operations_are_named_and_say_who_may_call(name: str) -> None:
    _, _, operation = _op(name)
    assert re.fullmatch(r"[a-z][a-zA-Z0-9]*", operation.get("operationId", "")), operation
    public = operation.get("security") == []
    if not public:
        assert "401" in operation["responses"], "an authenticated route documents its 401"


def test_versioned_objects_take_if_match_on_writes() -> None:
    wrong = []
    for path, item in _DOC["paths"].items():
        read = item.get("get", {}).get("responses", {}).get("200", {})
        if "ETag" not in (read.get("headers") or {}):
            continue
        for method in ("put", "patch"):
            if method in item:
                operation = item[method]
                names = {p.get("name") for p in operation.get("parameters", [])}
                if "If-Match" not in names or "412" not in operation["responses"]:
                    wrong.append(f"{method.upper()} {path}")
    assert not wrong, f"writes of versioned objects without If-Match / 412: {wrong}"
