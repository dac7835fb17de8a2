"""GitSource spec parsing: what reaches the git command line is checked first."""

from __future__ import annotations

import subprocess

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from fleet_model.documents import API_VERSION, validate_document
from fleet_model.gitsource import (
    DEFAULT_INTERVAL_SECONDS,
    GitRef,
    GitSourceSpec,
    is_manifest_file,
    parse_spec,
    ref_problem,
)
from fleet_model.problems import SpecError


def spec(**overrides: object) -> dict[str, object]:
    base: dict[str, object] = {
        "repository": "https://git.example.com/fleet/config.git",
        "ref": {"branch": "main"},
        "path": "clusters/prod",
    }
    base.update(overrides)
    return base


def problems(value: object) -> list[tuple[str, str]]:
    with pytest.raises(SpecError) as caught:
        parse_spec(value)
    return caught.value.problems


def test_a_full_spec_is_taken_with_its_defaults() -> None:
    taken = parse_spec(spec())
    assert taken == GitSourceSpec(
        repository="https://git.example.com/fleet/config.git",
        transport="https",
        ref=GitRef(branch="main"),
        path="clusters/prod",
        interval_seconds=DEFAULT_INTERVAL_SECONDS,
        prune=True,
    )
    assert taken.ref.full_name == "refs/heads/main"
    assert GitRef(tag="v1.2").full_name == "refs/tags/v1.2"


def test_it_is_the_parser_of_the_gitsource_kind() -> None:
    document = {
        "apiVersion": API_VERSION,
        "kind": "GitSource",
        "metadata": {"name": "fleet"},
        "spec": spec(intervalSeconds=5, prune=False, ref={"tag": "v1"}),
    }
    parsed = validate_document(document).parsed
    assert isinstance(parsed, GitSourceSpec)
    assert (parsed.interval_seconds, parsed.prune, parsed.ref) == (5, False, GitRef(tag="v1"))
    document["spec"] = spec(repository="-uhoh")
    with pytest.raises(SpecError) as caught:
        validate_document(document)
    assert [path for path, _ in caught.value.problems] == ["/spec/repository"]


@pytest.mark.parametrize(
    ("repository", "transport"),
    [
        ("/srv/git/fleet", "local"),
        ("/srv/git/with space/fleet.git", "local"),
        ("file:///srv/git/fleet.git", "file"),
        ("https://github.com/org/fleet.git", "https"),
        ("https://git.example.com:8443/org/fleet", "https"),
        ("https://[2001:db8::1]/fleet.git", "https"),
        ("ssh://git@git.example.com:2222/org/fleet.git", "ssh"),
        ("git@github.com:org/fleet.git", "ssh"),
        ("github.com:org/fleet.git", "ssh"),
    ],
)
def test_each_transport_is_recognised(repository: str, transport: str) -> None:
    taken = parse_spec(spec(repository=repository))
    assert (taken.repository, taken.transport) == (repository, transport)


@pytest.mark.parametrize(
    ("repository", "says"),
    [
        (None, "is required"),
        ("", "is required"),
        ("-oProxyCommand=touch /tmp/x", "may not start with '-'"),
        ("--upload-pack=touch /tmp/x", "may not start with '-'"),
        ("ext::sh -c touch% /tmp/x", "must be an absolute local path"),
        ("fd::17", "must be an absolute local path"),
        ("relative/path", "must be an absolute local path"),
        ("~/fleet", "must be an absolute local path"),
        ("http://git.example.com/fleet.git", "unauthenticated"),
        ("git://git.example.com/fleet.git", "unauthenticated"),
        ("https://user:secret@git.example.com/fleet.git", "credentials"),
        ("https://token@git.example.com/fleet.git", "credentials"),
        ("ssh://git:secret@git.example.com/fleet.git", "credentials"),
        ("https:///fleet.git", "no valid host"),
        ("https://-oProxyCommand=x/fleet.git", "no valid host"),
        ("https://git.example.com", "no repository path"),
        ("https://git.example.com/a b", "spaces"),
        ("https://git.example.com/a?x=1", "no query"),
        ("file://host/srv/git", "names no host"),
        ("-@host:path", "may not start with '-'"),
        ("git@-host:path", "must be an absolute local path"),
        ("git@host:-path", "may not start with '-'"),
        ("/srv/git\nfleet", "control characters"),
        ("/" + "a" * 3000, "at most 2048"),
        (7, "is required"),
    ],
)
def test_dangerous_or_wrong_repositories_are_refused(repository: object, says: str) -> None:
    found = problems(spec(repository=repository))
    assert len(found) == 1
    assert found[0][0] == "/spec/repository"
    assert says in found[0][1], found


@pytest.mark.parametrize(
    "name",
    ["main", "release/1.2", "feature/a-b_c", "v1.0.0", "ünïcode", "a" * 255],
)
def test_good_ref_names_are_taken(name: str) -> None:
    assert ref_problem(name) is None
    assert parse_spec(spec(ref={"tag": name})).ref == GitRef(tag=name)


@pytest.mark.parametrize(
    "name",
    [
        "",
        "-f",
        "a..b",
        "a b",
        "a~1",
        "a^",
        "a:b",
        "a?",
        "a*",
        "a[b",
        "a\\b",
        "a@{1}",
        "@",
        "HEAD",
        "/a",
        "a/",
        "a//b",
        "a.",
        ".a",
        "a/.b",
        "a.lock",
        "a/b.lock/c",
        "refs/heads/main",
        "a\x7f",
        "a" * 256,
    ],
)
def test_bad_ref_names_are_refused(name: str) -> None:
    assert ref_problem(name) is not None
    found = problems(spec(ref={"branch": name}))
    assert [path for path, _ in found] == ["/spec/ref/branch"]


def test_ref_needs_exactly_one_of_branch_and_tag() -> None:
    assert problems(spec(ref={"branch": "a", "tag": "b"})) == [
        ("/spec/ref", "must give exactly one of branch and tag")
    ]
    assert problems(spec(ref={})) == [("/spec/ref", "must give exactly one of branch and tag")]
    assert [p for p, _ in problems(spec(ref=None))] == ["/spec/ref"]
    assert [p for p, _ in problems(spec(ref={"branch": "a", "commit": "x"}))] == ["/spec/ref"]


@pytest.mark.parametrize(
    ("path", "normalised"),
    [(None, ""), ("", ""), (".", ""), ("./", ""), ("./a/b/", "a/b"), ("a b/c", "a b/c")],
)
def test_paths_are_normalised(path: object, normalised: str) -> None:
    assert parse_spec(spec(path=path)).path == normalised


@pytest.mark.parametrize(
    "path", ["/etc", "..", "a/../b", "a/./b", "a//b", "a\\b", "a\nb", "-a", 3, "x" * 1025]
)
def test_bad_paths_are_refused(path: object) -> None:
    assert [p for p, _ in problems(spec(path=path))] == ["/spec/path"]


@pytest.mark.parametrize("interval", [4, 86_401, 0, -5, 5.5, "60", True])
def test_interval_is_bounded(interval: object) -> None:
    assert [p for p, _ in problems(spec(intervalSeconds=interval))] == ["/spec/intervalSeconds"]


@pytest.mark.parametrize("interval", [5, 86_400])
def test_interval_bounds_are_inclusive(interval: int) -> None:
    assert parse_spec(spec(intervalSeconds=interval)).interval_seconds == interval


def test_every_problem_is_reported_at_once() -> None:
    found = problems(
        {
            "repository": "http://x/y",
            "ref": {"branch": "a..b"},
            "path": "/abs",
            "intervalSeconds": 1,
            "prune": "yes",
            "interval": 60,
        }
    )
    assert [path for path, _ in found] == [
        "/spec",
        "/spec/repository",
        "/spec/ref/branch",
        "/spec/path",
        "/spec/intervalSeconds",
        "/spec/prune",
    ]
    assert problems([]) == [("/spec", "must be an object")]


@pytest.mark.parametrize(
    ("path", "wanted"),
    [
        ("a.yaml", True),
        ("dir/b.YML", True),
        ("c.json", True),
        ("README.md", False),
        (".github/workflows/ci.yml", False),
        ("dir/.hidden.yaml", False),
        ("yaml", False),
    ],
)
def test_manifest_files_are_yaml_and_json_but_not_hidden(path: str, wanted: bool) -> None:  # noqa: FBT001
    assert is_manifest_file(path) is wanted


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=40))
def test_what_the_parser_takes_git_takes_as_a_branch(name: str) -> None:
    """The parser is never laxer than git itself (``git check-ref-format --branch``)."""
    if ref_problem(name) is not None or "\x00" in name:
        return
    result = subprocess.run(
        ["git", "check-ref-format", "--branch", name], capture_output=True, check=False
    )
    assert result.returncode == 0, (name, result.stderr)


@given(
    st.dictionaries(
        st.sampled_from(["repository", "ref", "path", "intervalSeconds", "prune", "x"]),
        st.one_of(
            st.none(),
            st.booleans(),
            st.integers(),
            st.text(max_size=30),
            st.dictionaries(st.sampled_from(["branch", "tag", "y"]), st.text(max_size=10)),
        ),
    )
)
def test_any_spec_is_taken_or_refused_with_problems(value: dict[str, object]) -> None:
    try:
        taken = parse_spec(value)
    except SpecError as error:
        found = error.problems
        assert found
        assert all(path.startswith("/spec") for path, _ in found)
    else:
        assert not taken.repository.startswith("-")
        assert ref_problem(taken.ref.branch or taken.ref.tag) is None
        assert ".." not in taken.path.split("/")
