"""The documents ``apply -f`` and ``delete -f`` read: files, folders or stdin, YAML or JSON.

Everything is read and checked before anything is sent, so a typo in document 700 of 1,000
stops the run before the first write (docs/fleet/cli-console.md says why). Every problem names
where it is: the file, the document's number in it (from 1, as an editor counts ``---``
sections), its first line for YAML, and the JSON pointer of the field.

Bounds (an input is a file an operator names, yet may be anything):

* a file (or stdin) is at most ``MAX_FILE_BYTES``; all inputs together at most
  ``MAX_TOTAL_BYTES``;
* at most ``MAX_DOCUMENTS`` documents in all (after a list's items are counted one by one);
* a folder is read flat, its ``*.yaml``, ``*.yml`` and ``*.json`` files in name order, at most
  ``MAX_FOLDER_FILES`` of them;
* YAML aliases (``*name``) are refused (no billion-laughs expansion) and nesting is at most
  ``MAX_NESTING`` deep.
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import yaml
from yaml.composer import ComposerError

from fleet_model.documents import KINDS, validate_document
from fleet_model.problems import SpecError, is_name

MAX_FILE_BYTES = 8 * 1024 * 1024
"""A file of 1,000 fleet documents is well under a megabyte; more than 8 MiB is a mistake."""
MAX_TOTAL_BYTES = 64 * 1024 * 1024
"""All inputs of one command (a folder of many files) together."""
MAX_DOCUMENTS = 1000
"""Documents one command sends, each its own request: more is a job for a GitSource."""
MAX_FOLDER_FILES = 1000
"""Files of one folder read (more than documents is never needed)."""
MAX_NESTING = 64
"""Nesting of YAML/JSON collections: Kubernetes objects are about 10 deep."""
SUFFIXES = (".yaml", ".yml", ".json")
STDIN = "-"


@dataclass(frozen=True, kw_only=True)
class Problem:
    source: str
    """The file as given (``-`` for stdin)."""
    document: int | None = None
    """Number of the document in the file, from 1; None for the file as a whole."""
    line: int | None = None
    pointer: str = ""
    """JSON pointer inside the document (``/spec/numberOfClusters``)."""
    message: str

    def __str__(self) -> str:
        where = self.source
        if self.document is not None:
            where += f": document {self.document}"
            if self.line is not None:
                where += f" (line {self.line})"
        if self.pointer:
            where += f": {self.pointer}"
        return f"{where}: {_one_line(self.message)}"


@dataclass(frozen=True, kw_only=True)
class Loaded:
    """One fleet document as read, with where it came from."""

    source: str
    document_number: int
    line: int | None
    prefix: str
    """Pointer of the object in its document: ``""``, or ``/items/3`` for a list's item."""
    body: dict[str, Any]

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def name(self) -> str:
        metadata = self.body.get("metadata")
        return str(metadata.get("name")) if isinstance(metadata, dict) else ""

    def problem(self, pointer: str, message: str) -> Problem:
        return Problem(
            source=self.source,
            document=self.document_number,
            line=self.line,
            pointer=self.prefix + pointer,
            message=message,
        )


@dataclass(kw_only=True)
class Reading:
    """What was read: the documents, and every problem found (none: safe to send)."""

    documents: list[Loaded] = field(default_factory=list)
    problems: list[Problem] = field(default_factory=list)
    total_bytes: int = 0


class _Loader(yaml.SafeLoader):
    """Safe YAML without aliases and with bounded nesting."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.depth = 0

    def compose_node(self, parent: Any, index: Any) -> Any:  # noqa: ANN401 - PyYAML's nodes
        if self.check_event(yaml.AliasEvent):
            event = self.peek_event()  # type: ignore[no-untyped-call]
            raise ComposerError(None, None, "aliases (*name) are not allowed", event.start_mark)
        self.depth += 1
        try:
            if self.depth > MAX_NESTING:
                event = self.peek_event()  # type: ignore[no-untyped-call]
                raise ComposerError(
                    None, None, f"nested deeper than {MAX_NESTING} levels", event.start_mark
                )
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def read(inputs: Sequence[str], *, stdin: IO[bytes] | None = None, check: str = "full") -> Reading:
    """Read every input (file, folder or ``-``) and check its documents.

    ``check`` is ``full`` (the whole document, as the server will: ``apply``) or ``name``
    (kind and name only: ``delete``).
    """
    reading = Reading()
    for source, data in _files(inputs, stdin, reading):
        _parse(source, data, reading)
        if len(reading.documents) > MAX_DOCUMENTS:
            reading.problems.append(
                Problem(
                    source=source,
                    message=f"more than {MAX_DOCUMENTS} documents in all: apply them in parts"
                    " (or keep them in a GitSource)",
                )
            )
            del reading.documents[MAX_DOCUMENTS:]
            break
    _check(reading, full=check == "full")
    # In the order of the input (a syntax error is found before the checks of earlier documents).
    order = {
        source: i for i, source in enumerate(dict.fromkeys(p.source for p in reading.problems))
    }
    reading.problems.sort(key=lambda p: (order[p.source], p.document or 0))
    return reading


def _files(
    inputs: Sequence[str], stdin: IO[bytes] | None, reading: Reading
) -> Iterator[tuple[str, bytes]]:
    for given in inputs:
        if given == STDIN:
            if stdin is None:
                reading.problems.append(Problem(source=given, message="no stdin to read"))
                continue
            data = stdin.read(MAX_FILE_BYTES + 1)
            if _bounded(given, len(data), reading):
                yield given, data
            continue
        path = Path(given)
        if path.is_dir():
            yield from _folder(given, path, reading)
        else:
            data_or_none = _read_file(given, path, reading)
            if data_or_none is not None:
                yield given, data_or_none


def _folder(given: str, path: Path, reading: Reading) -> Iterator[tuple[str, bytes]]:
    try:
        names = sorted(
            entry.name
            for entry in path.iterdir()
            if entry.name.endswith(SUFFIXES) and not entry.name.startswith(".")
        )
    except OSError as exc:
        reading.problems.append(Problem(source=given, message=f"cannot list: {_why(exc)}"))
        return
    if len(names) > MAX_FOLDER_FILES:
        reading.problems.append(
            Problem(source=given, message=f"more than {MAX_FOLDER_FILES} files: apply in parts")
        )
        return
    if not names:
        reading.problems.append(
            Problem(source=given, message="no *.yaml, *.yml or *.json file in this folder")
        )
    for name in names:
        child = path / name
        if child.is_dir():
            continue  # flat: sub-folders are not read (kubectl's default, without -R)
        data = _read_file(str(child), child, reading)
        if data is not None:
            yield str(child), data


def _read_file(given: str, path: Path, reading: Reading) -> bytes | None:
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        reading.problems.append(Problem(source=given, message=f"cannot read: {_why(exc)}"))
        return None
    return data if _bounded(given, len(data), reading) else None


def _bounded(source: str, size: int, reading: Reading) -> bool:
    if size > MAX_FILE_BYTES:
        reading.problems.append(
            Problem(source=source, message=f"larger than {MAX_FILE_BYTES // (1024 * 1024)} MiB")
        )
        return False
    reading.total_bytes += size
    if reading.total_bytes > MAX_TOTAL_BYTES:
        reading.problems.append(
            Problem(
                source=source,
                message=f"all inputs together exceed {MAX_TOTAL_BYTES // (1024 * 1024)} MiB",
            )
        )
        return False
    return True


def _parse(source: str, data: bytes, reading: Reading) -> None:
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        reading.problems.append(
            Problem(source=source, message=f"not UTF-8 text (byte {exc.start})")
        )
        return
    if "\x00" in text:
        reading.problems.append(Problem(source=source, message="not text (it has NUL bytes)"))
        return
    if source.endswith(".json") or (source == STDIN and text.lstrip()[:1] in ("{", "[")):
        _parse_json(source, text, reading)
    else:
        _parse_yaml(source, text, reading)


def _parse_json(source: str, text: str, reading: Reading) -> None:
    try:
        value = json.loads(text)
    except ValueError as exc:
        reading.problems.append(
            Problem(source=source, document=1, message=f"not valid JSON: {exc}")
        )
        return
    except RecursionError:
        reading.problems.append(
            Problem(source=source, document=1, message="not valid JSON: nested too deep")
        )
        return
    if _depth(value) > MAX_NESTING:
        reading.problems.append(
            Problem(source=source, document=1, message=f"nested deeper than {MAX_NESTING}")
        )
        return
    if isinstance(value, list):  # a JSON array of documents: each its own number
        for number, item in enumerate(value, start=1):
            _add(source, number, None, item, reading)
    else:
        _add(source, 1, None, value, reading)


def _parse_yaml(source: str, text: str, reading: Reading) -> None:
    number = 0
    try:
        loader = _Loader(text)  # refuses control characters at once
    except yaml.YAMLError as exc:
        reading.problems.append(Problem(source=source, message=f"not valid YAML: {exc}"))
        return
    try:
        while loader.check_node():
            number += 1
            node = loader.get_node()
            line = node.start_mark.line + 1 if node is not None else None
            value = loader.construct_document(node) if node is not None else None
            _add(source, number, line, value, reading)
            if len(reading.documents) > MAX_DOCUMENTS:
                return
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        reading.problems.append(
            Problem(
                source=source,
                document=number or 1,
                line=mark.line + 1 if mark is not None else None,
                message=f"not valid YAML: {_yaml_problem(exc)}",
            )
        )
    except RecursionError:
        reading.problems.append(
            Problem(source=source, document=number or 1, message="not valid YAML: too deep")
        )
    finally:
        loader.dispose()


def _add(source: str, number: int, line: int | None, value: object, reading: Reading) -> None:
    if value is None:
        return  # an empty document (a trailing ``---``, comments only): nothing to do
    if isinstance(value, dict) and _is_list(value):
        items = value.get("items")
        if not isinstance(items, list):
            reading.problems.append(
                Problem(
                    source=source,
                    document=number,
                    line=line,
                    pointer="/items",
                    message="a list document needs items: [documents]",
                )
            )
            return
        for index, item in enumerate(items):
            _one(source, number, line, f"/items/{index}", item, reading)
        return
    _one(source, number, line, "", value, reading)


def _is_list(value: dict[str, Any]) -> bool:
    """``kind: List``, or what ``get -o yaml`` prints for many (``{items, metadata}``)."""
    return value.get("kind") == "List" or ("kind" not in value and "items" in value)


def _one(  # noqa: PLR0917 - where a document is: four parts, each needed in its problems
    source: str, number: int, line: int | None, prefix: str, value: object, reading: Reading
) -> None:
    if not isinstance(value, dict):
        reading.problems.append(
            Problem(
                source=source,
                document=number,
                line=line,
                pointer=prefix,
                message=f"a fleet document is a mapping, not {_type_name(value)}",
            )
        )
        return
    reading.documents.append(
        Loaded(source=source, document_number=number, line=line, prefix=prefix, body=value)
    )


def _check(reading: Reading, *, full: bool) -> None:
    seen: dict[tuple[str, str], Loaded] = {}
    for loaded in reading.documents:
        problems = _document_problems(loaded, full=full)
        reading.problems.extend(problems)
        if problems:
            continue
        key = (loaded.kind, loaded.name)
        first = seen.setdefault(key, loaded)
        if first is not loaded:
            reading.problems.append(
                loaded.problem(
                    "/metadata/name",
                    f"{loaded.kind} {loaded.name} is also {first.source} document"
                    f" {first.document_number}: give each object once",
                )
            )


def _document_problems(loaded: Loaded, *, full: bool) -> list[Problem]:
    body = loaded.body
    if not full:
        found = []
        if body.get("kind") not in KINDS:
            found.append(loaded.problem("/kind", _kind_message(body.get("kind"))))
        metadata = body.get("metadata")
        name = metadata.get("name") if isinstance(metadata, dict) else None
        if not is_name(name):
            found.append(loaded.problem("/metadata/name", "a DNS-1123 name is required"))
        return found
    try:
        validate_document(body)
    except SpecError as exc:
        return [loaded.problem(pointer, message) for pointer, message in exc.problems]
    return []


def _kind_message(kind: object) -> str:
    known = ", ".join(sorted(KINDS))
    if kind is None:
        return f"kind is required: one of {known}"
    return f"unknown kind {kind!r}: one of {known}"


def _depth(value: object) -> int:
    depth = 0
    level: list[object] = [value]
    while level:
        depth += 1
        if depth > MAX_NESTING:
            return depth
        nested: list[object] = []
        for item in level:
            if isinstance(item, dict):
                nested.extend(item.values())
            elif isinstance(item, list):
                nested.extend(item)
        level = [item for item in nested if isinstance(item, dict | list)]
    return depth


def _yaml_problem(exc: yaml.YAMLError) -> str:
    problem = getattr(exc, "problem", None)
    context = getattr(exc, "context", None)
    if problem:
        return f"{context}, {problem}" if context else str(problem)
    return str(exc).splitlines()[0] if str(exc) else type(exc).__name__


def _type_name(value: object) -> str:
    return {
        list: "a list",
        str: "a string",
        int: "a number",
        float: "a number",
        bool: "a boolean",
    }.get(type(value), type(value).__name__)


def _why(exc: OSError) -> str:
    return (exc.strerror or str(exc)).lower()


def _one_line(text: str, limit: int = 500) -> str:
    flat = " ".join(str(text).split())
    clean = "".join(ch for ch in flat if ch.isprintable())
    return clean if len(clean) <= limit else clean[: limit - 1] + "…"
