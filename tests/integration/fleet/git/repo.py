"""A local git repository driven with the real git CLI, as an operator's pushes would be."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass
from pathlib import Path

from fleet_model.documents import API_VERSION


def git(repo: Path, *args: str) -> str:
    done = subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True, timeout=30
    )
    return done.stdout.strip()


@dataclass(frozen=True, kw_only=True)
class Repo:
    path: Path

    @classmethod
    def create(cls, path: Path) -> Repo:
        subprocess.run(["git", "init", "-q", "-b", "main", str(path)], check=True, timeout=30)
        git(path, "config", "user.name", "Fleet Operator")
        git(path, "config", "user.email", "ops@example.com")
        return cls(path=path)

    def write(self, name: str, text: str) -> None:
        target = self.path / name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)

    def remove(self, name: str) -> None:
        git(self.path, "rm", "-q", "--", name)

    def commit(self, message: str) -> str:
        """Commit everything; the new commit's id."""
        git(self.path, "add", "-A")
        git(self.path, "commit", "-q", "--allow-empty", "-m", message)
        return git(self.path, "rev-parse", "HEAD")


def placement(name: str, *, labels: dict[str, str] | None = None, clusters: int = 1) -> str:
    """A Placement document as YAML (valid for the envelope and for H1's parser)."""
    label_text = "".join(f"\n    {key}: {value}" for key, value in (labels or {}).items())
    return (
        f"apiVersion: {API_VERSION}\n"
        "kind: Placement\n"
        "metadata:\n"
        f"  name: {name}\n"
        f"  labels:{label_text or ' {}'}\n"
        "spec:\n"
        f"  numberOfClusters: {clusters}\n"
    )
