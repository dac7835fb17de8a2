"""The GitSource mirror against the real git CLI: fetch, list, read; refusals; bounds."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from fleet_model.gitsource import GitRef, GitSourceSpec, parse_spec
from tests.harness.waiting import eventually
from tunnel_server.fleet.hub.gitsource_git import (
    GitError,
    GitSettings,
    Mirror,
    NotAFolderError,
    OutputTooLargeError,
)


def git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    path = tmp_path / "src"
    subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True)
    git(path, "config", "user.name", "t")
    git(path, "config", "user.email", "t@example.com")
    (path / "deploy" / "sub").mkdir(parents=True)
    (path / "deploy" / "a.yaml").write_text("a: 1\n")
    (path / "deploy" / "sub" / "b.yml").write_text("b: 2\n")
    (path / "deploy" / "link.yaml").symlink_to("/etc/passwd")
    (path / "README.md").write_text("hello\n")
    git(path, "add", "-A")
    git(path, "commit", "-qm", "one")
    git(path, "tag", "-a", "v1", "-m", "v1")
    return path


def source(repo: Path, **overrides: object) -> GitSourceSpec:
    spec: dict[str, object] = {"repository": str(repo), "ref": {"branch": "main"}}
    spec.update(overrides)
    return parse_spec(spec)


async def test_fetch_lists_and_reads_a_branch_and_a_tag(repo: Path, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings())
    commit = await mirror.fetch(source(repo))
    assert commit == git(repo, "rev-parse", "HEAD")
    files = await mirror.list_files(commit, "deploy")
    assert [(f.path, f.mode) for f in files] == [
        ("a.yaml", "100644"),
        ("link.yaml", "120000"),
        ("sub/b.yml", "100644"),
    ]
    blobs = await mirror.read_blobs([files[0].oid, files[2].oid], total=10)
    assert blobs == {files[0].oid: b"a: 1\n", files[2].oid: b"b: 2\n"}
    assert await mirror.fetch(source(repo, ref={"tag": "v1"})) == commit  # annotated: peeled


async def test_a_new_commit_is_seen_at_the_next_fetch(repo: Path, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings())
    first = await mirror.fetch(source(repo, repository=f"file://{repo}"))
    (repo / "deploy" / "a.yaml").write_text("a: 2\n")
    git(repo, "commit", "-qam", "two")
    second = await mirror.fetch(source(repo, repository=f"file://{repo}"))
    assert second != first
    assert second == git(repo, "rev-parse", "HEAD")


async def test_a_missing_branch_or_folder_says_why(repo: Path, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings())
    with pytest.raises(GitError, match="couldn't find remote ref refs/heads/nope"):
        await mirror.fetch(source(repo, ref={"branch": "nope"}))
    commit = await mirror.fetch(source(repo))
    with pytest.raises(NotAFolderError, match="path 'nowhere' does not exist"):
        await mirror.list_files(commit, "nowhere")
    with pytest.raises(NotAFolderError, match="is a blob, not a folder"):
        await mirror.list_files(commit, "README.md")


async def test_remote_helpers_are_never_run(tmp_path: Path) -> None:
    """Even a value the spec check would refuse cannot reach ``ext::`` (defence in depth)."""
    witness = tmp_path / "ran"
    hostile = GitSourceSpec(
        repository=f"ext::sh -c touch% {witness}",
        transport="https",
        ref=GitRef(branch="main"),
        path="",
    )
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings())
    with pytest.raises(GitError, match="not allowed"):
        await mirror.fetch(hostile)
    assert not witness.exists()


async def test_output_beyond_its_bound_is_refused(repo: Path, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings(max_listing_bytes=100))
    commit = await mirror.fetch(source(repo))
    with pytest.raises(OutputTooLargeError, match="more than 100 bytes"):
        await mirror.list_files(commit, "")


async def test_a_command_over_its_time_is_killed_with_its_children(tmp_path: Path) -> None:
    """A git that never finishes is killed, process group and all, when its time is up.

    The stand-in for a stalled remote sleeps and leaves a child, as ssh would.
    """
    pid_file = tmp_path / "child.pid"
    stall = tmp_path / "git"
    stall.write_text(f"#!/bin/sh\nsleep 600 &\necho $! > {pid_file}\nexec sleep 600\n")
    stall.chmod(0o755)
    (tmp_path / "mirror").mkdir()
    (tmp_path / "mirror" / "HEAD").write_text("ref: refs/heads/main\n")
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings(git=str(stall), fetch_timeout=0.5))
    with pytest.raises(GitError, match=r"did not finish within 0.5 s"):
        await mirror.fetch(source(tmp_path))
    stat = Path(f"/proc/{int(pid_file.read_text())}/stat")

    def gone() -> bool:  # dead: reaped, or a zombie waiting for a reaper
        try:
            return stat.read_text().rsplit(")", 1)[1].split()[0] in ("Z", "X")
        except FileNotFoundError:
            return True

    eventually(gone, what="the stalled git's child killed", within=10)


async def test_the_root_folder_is_listed_whole(repo: Path, tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings())
    commit = await mirror.fetch(source(repo))
    paths = [f.path for f in await mirror.list_files(commit, "")]
    assert paths == ["README.md", "deploy/a.yaml", "deploy/link.yaml", "deploy/sub/b.yml"]


async def test_a_server_without_git_says_so(tmp_path: Path) -> None:
    mirror = Mirror(tmp_path / "mirror", settings=GitSettings(git=str(tmp_path / "no-such-git")))
    with pytest.raises(GitError, match="command is not installed on the server"):
        await mirror.fetch(source(tmp_path))
