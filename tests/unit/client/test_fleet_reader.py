"""The documents ``apply -f`` reads: multi-document YAML, JSON, folders, stdin, and bounds.

Every problem names its file, document number (from 1), line (YAML) and JSON pointer, and a
bad input never raises: it is a problem in the reading, so nothing is sent.
"""

from __future__ import annotations

import io
import json
from pathlib import Path
from typing import Any

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tunnel_server.client import fleet_reader
from tunnel_server.client.fleet_reader import read

FUZZ = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
API = "fleet.edgefleet.io/v1alpha1"


def placement(name: str, **labels: str) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if labels:
        metadata["labels"] = labels
    return {"apiVersion": API, "kind": "Placement", "metadata": metadata, "spec": {}}


def multi(documents: list[Any]) -> str:
    return yaml.safe_dump_all(documents, sort_keys=False)


def texts(reading: fleet_reader.Reading) -> list[str]:
    return [str(p) for p in reading.problems]


def test_multi_document_yaml_in_order_with_numbers_and_lines(tmp_path: Path) -> None:
    file = tmp_path / "web.yaml"
    file.write_text(multi([placement("a"), placement("b"), placement("c")]))
    reading = read([str(file)])
    assert reading.problems == []
    assert [d.name for d in reading.documents] == ["a", "b", "c"]
    assert [d.document_number for d in reading.documents] == [1, 2, 3]
    lines = [d.line or 0 for d in reading.documents]
    assert lines[0] == 1
    assert lines == sorted(lines)
    assert len(set(lines)) == 3


def test_empty_documents_are_skipped_but_counted(tmp_path: Path) -> None:
    file = tmp_path / "web.yaml"
    file.write_text("---\n# nothing\n---\n" + multi([placement("a")]) + "---\n")
    reading = read([str(file)])
    assert reading.problems == []
    assert [(d.name, d.document_number) for d in reading.documents] == [("a", 2)]


def test_json_file_object_and_array(tmp_path: Path) -> None:
    one = tmp_path / "one.json"
    one.write_text(json.dumps(placement("x")))
    many = tmp_path / "many.json"
    many.write_text(json.dumps([placement("y"), placement("z")]))
    reading = read([str(one), str(many)])
    assert reading.problems == []
    assert [(d.source, d.name, d.document_number) for d in reading.documents] == [
        (str(one), "x", 1),
        (str(many), "y", 1),
        (str(many), "z", 2),
    ]


def test_stdin_yaml_and_json() -> None:
    yaml_in = read(["-"], stdin=io.BytesIO(multi([placement("a"), placement("b")]).encode()))
    assert [d.name for d in yaml_in.documents] == ["a", "b"]
    json_in = read(["-"], stdin=io.BytesIO(json.dumps([placement("c")]).encode()))
    assert [(d.source, d.name) for d in json_in.documents] == [("-", "c")]
    assert read(["-"], stdin=None).problems[0].message == "no stdin to read"


def test_a_list_document_as_get_prints_it_is_read_item_by_item() -> None:
    listed = {"items": [placement("a"), placement("b", app="web")], "metadata": {}}
    reading = read(["-"], stdin=io.BytesIO(yaml.safe_dump(listed).encode()))
    assert reading.problems == []
    assert [(d.name, d.prefix) for d in reading.documents] == [("a", "/items/0"), ("b", "/items/1")]
    bad = {"kind": "List", "items": [placement("a"), placement("B")]}
    problems = read(["-"], stdin=io.BytesIO(yaml.safe_dump(bad).encode())).problems
    assert [p.pointer for p in problems] == ["/items/1/metadata/name"]


def test_a_folder_in_name_order_flat_and_only_its_documents(tmp_path: Path) -> None:
    (tmp_path / "b.yml").write_text(multi([placement("b")]))
    (tmp_path / "a.yaml").write_text(multi([placement("a")]))
    (tmp_path / "c.json").write_text(json.dumps(placement("c")))
    (tmp_path / "notes.txt").write_text("not: [a document")
    (tmp_path / ".hidden.yaml").write_text("not: [a document")
    nested = tmp_path / "nested.yaml"
    nested.mkdir()
    (nested / "d.yaml").write_text(multi([placement("d")]))
    reading = read([str(tmp_path)])
    assert reading.problems == []
    assert [d.name for d in reading.documents] == ["a", "b", "c"]
    empty = tmp_path / "empty"
    empty.mkdir()
    assert "no *.yaml" in read([str(empty)]).problems[0].message


def test_malformed_yaml_names_the_document_and_line(tmp_path: Path) -> None:
    good = multi([placement(f"p{i}") for i in range(5)])
    file = tmp_path / "web.yaml"
    file.write_text(good + "---\nkind: Placement\nmetadata: {name: [broken\n")
    reading = read([str(file)])
    assert len(reading.problems) == 1
    problem = reading.problems[0]
    assert problem.document == 6
    assert problem.line is not None
    assert problem.line > good.count("\n")
    assert str(problem).startswith(f"{file}: document 6 (line {problem.line}): not valid YAML")


def test_invalid_documents_give_every_problem_with_its_pointer(tmp_path: Path) -> None:
    file = tmp_path / "web.yaml"
    wrong = {"apiVersion": "v1", "kind": "Placement", "metadata": {"name": "Web!"}}
    file.write_text(multi([placement("ok"), wrong, ["a", "list"], placement("ok")]))
    found = {(p.document, p.pointer) for p in read([str(file)]).problems}
    assert found == {
        (2, "/apiVersion"),
        (2, "/metadata/name"),
        (3, ""),
        (4, "/metadata/name"),  # the same object twice
    }


def test_unknown_kind_and_name_only_check(tmp_path: Path) -> None:
    file = tmp_path / "web.yaml"
    file.write_text(multi([{"kind": "Nope", "metadata": {"name": "x"}}, {"kind": "Work"}]))
    problems = read([str(file)], check="name").problems
    assert [(p.document, p.pointer) for p in problems] == [(1, "/kind"), (2, "/metadata/name")]
    # A name-only check (delete -f) takes a document without apiVersion or spec.
    file.write_text(multi([{"kind": "Work", "metadata": {"name": "w"}}]))
    assert read([str(file)], check="name").problems == []


def test_bounds_file_size(tmp_path: Path) -> None:
    big = tmp_path / "big.yaml"
    big.write_bytes(b"#" * (fleet_reader.MAX_FILE_BYTES + 1))
    reading = read([str(big)])
    assert texts(reading) == [f"{big}: larger than 8 MiB"]
    stdin = read(["-"], stdin=io.BytesIO(b"#" * (fleet_reader.MAX_FILE_BYTES + 1)))
    assert texts(stdin) == ["-: larger than 8 MiB"]


def test_bounds_documents(tmp_path: Path) -> None:
    at_limit = tmp_path / "at.yaml"
    at_limit.write_text(multi([placement(f"p{i}") for i in range(fleet_reader.MAX_DOCUMENTS)]))
    assert read([str(at_limit)]).problems == []
    over = tmp_path / "over.json"
    over.write_text(json.dumps([placement("extra")]))
    reading = read([str(at_limit), str(over)])
    assert len(reading.documents) == fleet_reader.MAX_DOCUMENTS
    assert len(reading.problems) == 1
    assert str(reading.problems[0]).startswith(f"{over}: more than 1000 documents in all")


def test_aliases_and_deep_nesting_are_refused(tmp_path: Path) -> None:
    bomb = tmp_path / "bomb.yaml"
    bomb.write_text('a: &a ["x", "x"]\nb: &b [*a, *a]\nc: [*b, *b]\n')
    assert "aliases (*name) are not allowed" in texts(read([str(bomb)]))[0]
    deep = tmp_path / "deep.yaml"
    deep.write_text("[" * 5000 + "]" * 5000)
    assert "nested deeper than 64" in texts(read([str(deep)]))[0]
    deep_json = tmp_path / "deep.json"
    deep_json.write_text("[" * 100_000 + "]" * 100_000)
    assert len(read([str(deep_json)]).problems) == 1


def test_not_text(tmp_path: Path) -> None:
    binary = tmp_path / "x.yaml"
    binary.write_bytes(b"\xff\xfe\x00kind")
    assert "not UTF-8" in texts(read([str(binary)]))[0]
    missing = tmp_path / "missing.yaml"
    assert texts(read([str(missing)])) == [f"{missing}: cannot read: no such file or directory"]


_names = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,20}[a-z0-9])?", fullmatch=True)
_label_values = st.from_regex(r"[A-Za-z0-9]([A-Za-z0-9_.-]{0,10}[A-Za-z0-9])?", fullmatch=True)


@FUZZ
@given(
    st.lists(
        st.tuples(_names, st.dictionaries(_names, _label_values, max_size=3)),
        max_size=20,
        unique_by=lambda t: t[0],
    )
)
def test_what_is_written_is_read_back_yaml_and_json(
    objects: list[tuple[str, dict[str, str]]],
) -> None:
    documents = [placement(name, **labels) for name, labels in objects]
    as_yaml = read(["-"], stdin=io.BytesIO(multi(documents).encode()), check="name")
    as_json = read(["-"], stdin=io.BytesIO(json.dumps(documents).encode()), check="name")
    for reading in (as_yaml, as_json):
        assert reading.problems == []
        assert [d.body for d in reading.documents] == documents


@FUZZ
@given(st.binary(max_size=2000))
def test_any_bytes_give_documents_or_problems_never_an_exception(data: bytes) -> None:
    reading = read(["-"], stdin=io.BytesIO(data), check="name")
    assert len(reading.documents) <= fleet_reader.MAX_DOCUMENTS
    for problem in reading.problems:
        assert "\n" not in str(problem)


@FUZZ
@given(st.text(alphabet="{}[]:-&*!|>'\"#,\n abc", max_size=300))
def test_yaml_punctuation_never_raises(text: str) -> None:
    reading = read(["-"], stdin=io.BytesIO(text.encode()))
    assert all(isinstance(d.body, dict) for d in reading.documents)


def test_problems_come_in_the_order_of_the_input(tmp_path: Path) -> None:
    first = tmp_path / "a.yaml"
    first.write_text(multi([placement("Bad_Name"), placement("ok")]) + "---\nkind: [broken\n")
    second = tmp_path / "b.yaml"
    second.write_text("kind: [broken\n")
    problems = read([str(first), str(second)]).problems
    assert [(p.source, p.document) for p in problems] == [
        (str(first), 1),
        (str(first), 3),
        (str(second), 1),
    ]
