"""The fleet objects a GitSource's folder declares: files to documents, bounded, per-file errors.

A file is YAML (``*.yaml``, ``*.yml``, several documents separated by ``---``) or JSON (one
document). Each document is validated as the API would validate it
(``fleet_model.documents.validate_document``); a document that fails makes its file's error,
the file's other documents are still taken (the same as ``tunnel-server apply`` does with a
multi-document file: each object stands alone). GitSource documents are refused (a source that
creates sources could loop or escalate). The same object twice in the folder: the first file
(by path) keeps it.

The YAML reader refuses aliases (no "billion laughs") and nesting deeper than 64 levels, keeps
timestamps as the strings they were written as (the documents are JSON underneath, as in
Kubernetes) and refuses values JSON has no form for (``!!binary``, ``!!set``, NaN).
"""

from __future__ import annotations

import json
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

import yaml

from fleet_model.documents import FleetDocument, SpecError, validate_document
from fleet_model.gitsource import GITSOURCE_LABEL

__all__ = [
    "MAX_NESTING",
    "Desired",
    "FileError",
    "FolderRead",
    "documents_of",
    "read_folder",
]

MAX_NESTING = 64
"""Deeper than any Kubernetes manifest goes; deeper is an attack on the parser's recursion."""
MAX_PROBLEMS_SHOWN = 5
"""Problems of one document written into the file's error (the rest are counted)."""


class FileError(ValueError):
    """A file that cannot be read as documents at all (syntax, size, encoding)."""


@dataclass(frozen=True, kw_only=True)
class Desired:
    """One object as the folder declares it (labels include the source's label)."""

    kind: str
    name: str
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    spec: Mapping[str, Any]
    path: str
    """The file that declares it (for errors reported against it)."""


@dataclass(kw_only=True)
class FolderRead:
    """What one commit's folder declares, and what could not be taken from it."""

    objects: list[Desired] = field(default_factory=list)
    errors: dict[str, str] = field(default_factory=dict)
    """Path -> the file's error (its bad documents, or why it could not be read)."""
    unreadable: bool = False
    """A file could not be read at all: what it held is unknown, so nothing may be pruned."""
    kept: set[tuple[str, str]] = field(default_factory=set)
    """(kind, name) of documents refused but recognisable: their objects are not pruned."""


class _Loader(yaml.SafeLoader):
    """SafeLoader without the timestamp rule: ``2026-12-03T20:00:00Z`` stays a string."""


_Loader.yaml_implicit_resolvers = {
    first: [(tag, rule) for tag, rule in rules if tag != "tag:yaml.org,2002:timestamp"]
    for first, rules in yaml.SafeLoader.yaml_implicit_resolvers.items()
}


def _check_tokens(text: str) -> None:
    nesting = 0
    opening = (
        yaml.BlockMappingStartToken,
        yaml.BlockSequenceStartToken,
        yaml.FlowMappingStartToken,
        yaml.FlowSequenceStartToken,
    )
    closing = (yaml.BlockEndToken, yaml.FlowMappingEndToken, yaml.FlowSequenceEndToken)
    for token in yaml.scan(text, Loader=_Loader):
        if isinstance(token, yaml.AliasToken):
            raise FileError("YAML aliases (*name) are not allowed")
        if isinstance(token, opening):
            nesting += 1
            if nesting > MAX_NESTING:
                raise FileError(f"nested deeper than {MAX_NESTING} levels")
        elif isinstance(token, closing):
            nesting -= 1


def _json_form(value: object) -> object:
    """``value`` as JSON would hold it, or FileError naming what JSON cannot hold."""

    def refuse(item: object) -> object:
        raise FileError(f"a value of type {type(item).__name__} has no JSON form")

    try:
        return json.loads(json.dumps(value, default=refuse, allow_nan=False))
    except ValueError as error:
        if isinstance(error, FileError):
            raise
        raise FileError(f"not JSON-compatible: {error}") from None


def documents_of(path: str, data: bytes, *, max_documents: int) -> list[object]:
    """The documents of one file (empty YAML documents skipped), or FileError."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as error:
        raise FileError(f"not UTF-8 text: {error}") from None
    if path.lower().endswith(".json"):
        try:
            return [json.loads(text, parse_constant=_no_constant)]
        except (ValueError, RecursionError) as error:
            raise FileError(f"not valid JSON: {error}") from None
    try:
        _check_tokens(text)
        documents: list[object] = []
        for document in yaml.load_all(text, Loader=_Loader):
            if document is None:
                continue
            documents.append(_json_form(document))
            if len(documents) > max_documents:
                raise FileError(f"more than {max_documents} documents")
    except yaml.YAMLError as error:
        raise FileError(f"not valid YAML: {_one_line(str(error))}") from None
    except RecursionError:
        raise FileError(f"nested deeper than {MAX_NESTING} levels") from None
    return documents


def _no_constant(name: str) -> object:
    raise ValueError(f"{name} has no JSON form")


def _one_line(text: str) -> str:
    return " ".join(text.split())


def _identity(document: object) -> tuple[str, str] | None:
    """(kind, name) of a refused document when both are plain enough to name an object."""
    if not isinstance(document, dict):
        return None
    metadata = document.get("metadata")
    kind = document.get("kind")
    name = metadata.get("name") if isinstance(metadata, dict) else None
    if isinstance(kind, str) and isinstance(name, str) and kind and name:
        return kind, name
    return None


def _problem_text(error: SpecError) -> str:
    shown = [f"{path or '/'}: {message}" for path, message in error.problems[:MAX_PROBLEMS_SHOWN]]
    more = len(error.problems) - MAX_PROBLEMS_SHOWN
    return "; ".join(shown) + (f" (and {more} more)" if more > 0 else "")


def _take(document: object, *, source: str, max_bytes: Mapping[str, int]) -> FleetDocument:
    taken = validate_document(document)
    if taken.kind == "GitSource":
        raise SpecError([("/kind", "a GitSource may not declare GitSources")])
    size = len(json.dumps(document, separators=(",", ":")))
    limit = max_bytes.get(taken.kind, max_bytes["*"])
    if size > limit:
        raise SpecError([("", f"the document is {size} bytes; at most {limit}")])
    labels = {**taken.labels, GITSOURCE_LABEL: source}
    return FleetDocument(
        kind=taken.kind,
        name=taken.name,
        labels=labels,
        annotations=taken.annotations,
        spec=taken.spec,
        parsed=taken.parsed,
    )


def read_folder(
    files: Iterator[tuple[str, bytes]],
    *,
    source: str,
    max_documents: int,
    max_bytes: Mapping[str, int],
) -> FolderRead:
    """Every object the ``(path, content)`` files declare, in path order, with per-file errors.

    ``max_bytes``: the largest document per kind (``"*"`` for every other kind).
    """
    read = FolderRead()
    seen: dict[tuple[str, str], str] = {}
    count = 0
    for path, data in files:
        try:
            documents = documents_of(path, data, max_documents=max_documents)
        except FileError as error:
            read.errors[path] = str(error)
            read.unreadable = True
            continue
        problems: list[str] = []
        for index, document in enumerate(documents, start=1):
            count += 1
            if count > max_documents:
                problems.append(f"document {index}: over the folder's {max_documents} documents")
                read.unreadable = True  # what the rest holds is unknown: prune nothing
                break
            try:
                taken = _take(document, source=source, max_bytes=max_bytes)
            except SpecError as error:
                identity = _identity(document)
                if identity is not None:
                    read.kept.add(identity)
                named = f" ({identity[0]} {identity[1]})" if identity else ""
                problems.append(f"document {index}{named}: {_problem_text(error)}")
                continue
            key = (taken.kind, taken.name)
            if key in seen:
                problems.append(
                    f"document {index}: {taken.kind} {taken.name} is already declared in "
                    f"{seen[key]}"
                )
                continue
            seen[key] = path
            read.objects.append(
                Desired(
                    kind=taken.kind,
                    name=taken.name,
                    labels=dict(taken.labels),
                    annotations=dict(taken.annotations),
                    spec=dict(taken.spec),
                    path=path,
                )
            )
        if problems:
            read.errors[path] = "; ".join(problems)
    return read
