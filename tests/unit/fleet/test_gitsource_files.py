"""A GitSource folder's files to fleet objects: per-file errors, bounds, what may be pruned."""

from __future__ import annotations

import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.documents import API_VERSION
from fleet_model.gitsource import GITSOURCE_LABEL
from tunnel_server.fleet.hub.gitsource_files import FileError, documents_of, read_folder

LIMITS = {"Work": 512 * 1024, "*": 1024 * 1024}


def placement(name: str, *, label: str = "web") -> str:
    return (
        f"apiVersion: {API_VERSION}\nkind: Placement\n"
        f"metadata:\n  name: {name}\n  labels: {{app: {json.dumps(label)}}}\nspec: {{}}\n"
    )


def read(files: dict[str, str | bytes], *, max_documents: int = 1000):  # type: ignore[no-untyped-def]  # noqa: ANN201
    return read_folder(
        iter(
            (path, data.encode() if isinstance(data, str) else data) for path, data in files.items()
        ),
        source="src",
        max_documents=max_documents,
        max_bytes=LIMITS,
    )


def test_good_documents_become_labelled_objects_in_path_order() -> None:
    result = read(
        {
            "a.yaml": placement("one") + "---\n" + placement("two"),
            "b.json": json.dumps(
                {"apiVersion": API_VERSION, "kind": "Placement", "metadata": {"name": "three"}}
            ),
        }
    )
    assert [(o.kind, o.name, o.path) for o in result.objects] == [
        ("Placement", "one", "a.yaml"),
        ("Placement", "two", "a.yaml"),
        ("Placement", "three", "b.json"),
    ]
    assert all(o.labels[GITSOURCE_LABEL] == "src" for o in result.objects)
    assert (result.errors, result.unreadable, result.kept) == ({}, False, set())


def test_a_bad_document_fails_its_file_not_its_neighbours_and_is_kept_from_pruning() -> None:
    result = read(
        {
            "a.yaml": placement("good") + "---\n" + placement("bad", label="not a label value!"),
            "b.yaml": placement("other"),
        }
    )
    assert [o.name for o in result.objects] == ["good", "other"]
    assert set(result.errors) == {"a.yaml"}
    assert result.errors["a.yaml"].startswith("document 2 (Placement bad): /metadata/labels/app")
    assert result.kept == {("Placement", "bad")}
    assert not result.unreadable


def test_malformed_yaml_makes_the_folder_unprunable() -> None:
    result = read({"a.yaml": "kind: [unclosed\n", "b.yaml": placement("fine")})
    assert [o.name for o in result.objects] == ["fine"]
    assert result.errors["a.yaml"].startswith("not valid YAML")
    assert result.unreadable


def test_gitsources_and_unknown_kinds_are_refused() -> None:
    source = (
        f"apiVersion: {API_VERSION}\nkind: GitSource\nmetadata: {{name: loop}}\n"
        "spec: {repository: /srv/x, ref: {branch: main}}\n"
    )
    unknown = f"apiVersion: {API_VERSION}\nkind: Nope\nmetadata: {{name: x}}\n"
    result = read({"a.yaml": source, "b.yaml": unknown})
    assert result.objects == []
    assert "may not declare GitSources" in result.errors["a.yaml"]
    assert "/kind: must be one of" in result.errors["b.yaml"]


def test_the_same_object_twice_is_kept_by_the_first_file() -> None:
    result = read({"a.yaml": placement("web"), "b.yaml": placement("web")})
    assert [o.path for o in result.objects] == ["a.yaml"]
    assert result.errors == {"b.yaml": "document 1: Placement web is already declared in a.yaml"}


def test_documents_are_counted_over_the_whole_folder() -> None:
    result = read({"a.yaml": placement("a"), "b.yaml": placement("b")}, max_documents=1)
    assert [o.name for o in result.objects] == ["a"]
    assert "over the folder's 1 documents" in result.errors["b.yaml"]
    assert result.unreadable


@pytest.mark.parametrize(
    ("data", "says"),
    [
        (b"a: &x [1]\nb: *x\n", "aliases"),
        (b"\xff\xfe", "not UTF-8"),
        (b"a: " + b"[" * 100 + b"]" * 100, "nested deeper"),
        (b"a: !!binary aGVsbG8=\n", "no JSON form"),
        (b"a: !!python/object:os.system {}\n", "not valid YAML"),
        (b"a: .nan\n", "not JSON-compatible"),
    ],
)
def test_hostile_yaml_is_a_file_error(data: bytes, says: str) -> None:
    with pytest.raises(FileError, match=says):
        documents_of("x.yaml", data, max_documents=10)


def test_timestamps_stay_the_strings_they_were_written_as() -> None:
    assert documents_of("x.yml", b"at: 2026-12-03T20:00:00Z\n", max_documents=1) == [
        {"at": "2026-12-03T20:00:00Z"}
    ]


def test_json_files_are_strict_json() -> None:
    with pytest.raises(FileError, match="not valid JSON"):
        documents_of("x.json", b'{"a": NaN}', max_documents=1)
    with pytest.raises(FileError, match="not valid JSON"):
        documents_of("x.json", b"[" * 100_000, max_documents=1)


def test_a_document_over_its_kinds_size_is_refused() -> None:
    big = placement("big") + "metadata2: " + "x" * (1024 * 1024) + "\n"
    result = read({"a.yaml": big})
    assert result.objects == []
    assert "bytes; at most 1048576" in result.errors["a.yaml"]


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_are_documents_or_a_file_error(data: bytes) -> None:
    for path in ("x.yaml", "x.json"):
        try:
            documents = documents_of(path, data, max_documents=5)
        except FileError:
            continue
        json.dumps(documents, allow_nan=False)  # what was taken has a JSON form
