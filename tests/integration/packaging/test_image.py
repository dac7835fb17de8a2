"""The container image (packaging/image/Containerfile), built by packaging/image/build with buildah.

The image's root is mounted read-only and run the way a runtime with a read-only root file
system runs it: as its non-root user, with only its volume (/var/lib/edgefleet) and /tmp
writable. There is no container runtime on the test machines, so chroot + setpriv stand in for
one; the image's configured user is checked from its config.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.packaging.debian_root import REPO

# scripts/setup --test installs Debian's buildah: a missing tool fails the run, never skips it.
assert shutil.which("buildah"), "buildah missing: run scripts/setup --test"

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: buildah (chroot isolation), mount"),
    pytest.mark.timeout(1800),
]

BUILDAH = ["buildah", "--storage-driver", "vfs"]
UID = "10001"


def _buildah(*args: str) -> str:
    done = subprocess.run(
        [*BUILDAH, *args], capture_output=True, text=True, check=False, timeout=600
    )
    assert done.returncode == 0, done.stderr
    return done.stdout.strip()


@pytest.fixture(scope="module")
def image() -> str:
    done = subprocess.run(
        [str(REPO / "packaging" / "image" / "build"), "--tag", "localhost/edgefleet:test"],
        capture_output=True,
        text=True,
        check=False,
        timeout=1500,
    )
    assert done.returncode == 0, done.stderr[-6000:]
    return done.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def _mounted(*argv: str) -> Iterator[None]:
    target = argv[-1]
    subprocess.run(["mount", *argv], check=True)
    try:
        yield
    finally:
        subprocess.run(["umount", "--lazy", target], check=True)


@pytest.fixture
def read_only_root(image: str, tmp_path: Path) -> Iterator[Path]:
    container = _buildah("from", "--pull-never", image)
    try:
        rootfs = _buildah("mount", container)
        root = tmp_path / "root"
        root.mkdir()
        with contextlib.ExitStack() as stack:
            stack.enter_context(_mounted("--bind", rootfs, str(root)))
            # The same mount, made read-only (unmounted with the bind above).
            subprocess.run(["mount", "-o", "remount,bind,ro", str(root)], check=True)
            stack.enter_context(_mounted("-t", "proc", "proc", str(root / "proc")))
            stack.enter_context(_mounted("-t", "tmpfs", "tmpfs", str(root / "tmp")))
            stack.enter_context(
                _mounted(
                    "-t",
                    "tmpfs",
                    "-o",
                    f"uid={UID},gid={UID},mode=0700",
                    "tmpfs",
                    str(root / "var/lib/edgefleet"),
                )
            )
            yield root
    finally:
        _buildah("rm", container)


def _run(root: Path, *argv: str) -> subprocess.CompletedProcess[str]:
    env = {
        "PATH": "/opt/edgefleet/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "PYTHONDONTWRITEBYTECODE": "1",
    }
    return subprocess.run(
        [
            "chroot",
            str(root),
            "setpriv",
            f"--reuid={UID}",
            f"--regid={UID}",
            "--clear-groups",
            "--",
            *argv,
        ],
        capture_output=True,
        text=True,
        env=env,
        check=False,
        timeout=120,
    )


def test_image_runs_as_non_root(image: str) -> None:
    config = json.loads(_buildah("inspect", "--type", "image", image))
    assert config["OCIv1"]["config"]["User"] == f"{UID}:{UID}"
    assert config["OCIv1"]["config"]["Cmd"][:2] == ["tunnel-server", "run"]


def test_server_and_agent_work_on_a_read_only_root(read_only_root: Path) -> None:
    root = read_only_root
    assert (root / "etc").stat().st_uid == 0
    assert _run(root, "touch", "/opt/edgefleet/x").returncode != 0  # the root is read-only
    for name in ("edge-agent", "tunnel-server"):
        done = _run(root, name, "--version")
        assert done.stdout.split() == [name, done.stdout.split()[-1]], done.stderr
    done = _run(
        root,
        "tunnel-server",
        "init",
        "--data-dir",
        "/var/lib/edgefleet",
        "--public-name",
        "127.0.0.1",
    )
    assert done.returncode == 0, done.stderr
    assert "sha256:" in done.stdout, done.stdout
    assert (root / "var/lib/edgefleet/ca.crt").stat().st_uid == int(UID)
