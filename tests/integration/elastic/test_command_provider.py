"""The command provider runs real executables the test writes: success, failures, bounds, kills.

Each test writes a small script, makes a NodePool naming it (``spec.provider.command``), and
calls ``CommandNodes`` as the autoscaler's driver will. Scripts note what they saw (argv,
stdin, the pid of a child they started) in files the test reads afterwards.
"""

from __future__ import annotations

import asyncio
import json
import stat
import sys
from pathlib import Path
from typing import Any

import psutil
import pytest

from edge_agent.cluster.elastic.process import run_command
from edge_agent.cluster.elastic.providers import CommandNodes, CommandSettings, PoolProviders
from fleet_model.elastic.autoscaler import MAX_MESSAGE, CreateResult, DeleteResult, Outcome
from fleet_model.elastic.nodepool import POOL_LABEL, NodePool, parse_node_pool
from tests.harness.waiting import eventually, eventually_async

pytestmark = pytest.mark.timeout(60)


def script(folder: Path, name: str, body: str) -> Path:
    """An executable Python script ``name`` in ``folder`` running ``body``."""
    path = folder / name
    path.write_text(f"#!{sys.executable}\nimport json, os, sys, subprocess\n{body}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def pool(path: Path, *, args: list[str] | None = None, timeout: int = 30) -> NodePool:
    return parse_node_pool(
        {
            "apiVersion": "elastic.edgefleet.io/v1alpha1",
            "kind": "NodePool",
            "metadata": {"name": "cloud"},
            "spec": {
                "max": 10,
                "node": {
                    "labels": {"tier": "burst"},
                    "taints": [{"key": "burst", "value": "yes", "effect": "NoSchedule"}],
                    "capacity": {"cpu": "2", "memory": "4Gi", "pods": 30},
                },
                "provider": {
                    "command": {"path": str(path), "args": args or [], "timeoutSeconds": timeout}
                },
            },
        }
    )


RECORD = """
seen = {"argv": sys.argv[1:], "stdin": json.loads(sys.stdin.read())}
with open(os.path.join(os.path.dirname(sys.argv[0]), "seen.json"), "w") as out:
    json.dump(seen, out)
"""


async def test_create_passes_the_request_and_reads_the_names(tmp_path: Path) -> None:
    path = script(tmp_path, "provider", RECORD + 'print(json.dumps({"nodes": ["c-1", "c-2"]}))')
    result = await CommandNodes().create(pool(path, args=["--region", "eu"]), 2)
    assert result == CreateResult(
        pool="cloud", outcome=Outcome.CREATED, nodes=("c-1", "c-2"), message=result.message
    )
    assert "2 of 2" in result.message
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["--region", "eu", "create"]
    request = seen["stdin"]
    assert request["operation"] == "create"
    assert request["count"] == 2
    assert request["pool"] == "cloud"
    assert request["node"]["labels"] == {"tier": "burst", POOL_LABEL: "cloud"}
    assert request["node"]["taints"] == [{"key": "burst", "value": "yes", "effect": "NoSchedule"}]
    assert request["node"]["capacity"] == {"cpu": "2", "memory": str(4 * 2**30), "pods": "30"}


async def test_delete_passes_the_node_and_succeeds_on_exit_0(tmp_path: Path) -> None:
    path = script(tmp_path, "provider", RECORD + "print('whatever, not read')")
    result = await CommandNodes().delete(pool(path), "c-7")
    assert result == DeleteResult(node="c-7", outcome=Outcome.DELETED, message="deleted")
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["delete"]
    assert seen["stdin"]["operation"] == "delete"
    assert seen["stdin"]["nodeName"] == "c-7"


async def test_exit_1_is_failed_with_the_end_of_stderr(tmp_path: Path) -> None:
    body = (
        "for i in range(30):\n"
        "    print(f'line {i}', file=sys.stderr)\n"
        "print('quota exceeded in eu', file=sys.stderr)\n"
        "sys.exit(1)"
    )
    path = script(tmp_path, "provider", body)
    created = await CommandNodes().create(pool(path), 1)
    assert created.outcome is Outcome.FAILED
    assert created.nodes == ()
    assert "exited with status 1" in created.message
    assert created.message.endswith("quota exceeded in eu")
    assert "line 29" in created.message
    assert "line 21" in created.message
    assert "line 20" not in created.message  # only the last ten lines are quoted
    deleted = await CommandNodes().delete(pool(path), "c-1")
    assert deleted.outcome is Outcome.FAILED
    assert "quota exceeded in eu" in deleted.message


@pytest.mark.parametrize(
    ("stdout", "expected"),
    [
        ("Created two nodes!", "not JSON"),
        ('{"nodes": "c-1"}', "not JSON"),
        ('{"nodes": ["c-1", "c-2", "c-3"]}', "3 node names, 2 were asked for"),
        ('{"nodes": ["Not_A_Name"]}', "DNS-1123"),
    ],
)
async def test_garbage_output_is_failed_and_says_why(
    tmp_path: Path, stdout: str, expected: str
) -> None:
    path = script(tmp_path, "provider", f"print({stdout!r})")
    result = await CommandNodes().create(pool(path), 2)
    assert result.outcome is Outcome.FAILED
    assert expected in result.message
    assert str(path) in result.message


async def test_a_hang_is_killed_at_the_timeout_with_its_children(tmp_path: Path) -> None:
    # A shell script: it starts in milliseconds, so it has written its child's pid long
    # before the timeout even on a busy machine.
    path = tmp_path / "provider"
    path.write_text(
        "#!/bin/sh\n"
        'sleep 600 & echo $! > "$(dirname "$0")/child"\n'
        "echo 'asking the cloud...' >&2\n"
        "wait\n"
    )
    path.chmod(0o755)
    result = await CommandNodes().create(pool(path, timeout=5), 1)
    assert result.outcome is Outcome.TIMED_OUT
    assert "did not finish within 5 s" in result.message
    assert "asking the cloud" in result.message
    child = int((tmp_path / "child").read_text())
    eventually(
        lambda: alive(child), lambda running: not running, what="the provider's child killed"
    )


async def test_cancelling_the_caller_kills_the_command(tmp_path: Path) -> None:
    path = tmp_path / "provider"
    path.write_text('#!/bin/sh\nsleep 600 & echo $! > "$(dirname "$0")/child"\nwait\n')
    path.chmod(0o755)
    child_file = tmp_path / "child"
    async with asyncio.TaskGroup() as tasks:
        creating = tasks.create_task(
            CommandNodes().create(pool(path, timeout=600), 1), name="test.create"
        )
        await eventually_async(
            lambda: asyncio.sleep(0, child_file.exists() and child_file.read_text().strip()),
            what="the provider's child started",
        )
        creating.cancel()
    assert creating.cancelled()
    child = int(child_file.read_text())
    eventually(lambda: alive(child), lambda running: not running, what="the child killed")


def alive(pid: int) -> bool:
    try:
        return psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False


async def test_huge_stderr_is_bounded(tmp_path: Path) -> None:
    body = (
        "sys.stderr.write('noise ' * 2_000_000 + '\\n')\n"
        "sys.stderr.write('the real reason\\n')\n"
        "sys.exit(3)"
    )
    path = script(tmp_path, "provider", body)
    result = await CommandNodes().create(pool(path), 1)
    assert result.outcome is Outcome.FAILED
    assert len(result.message) <= MAX_MESSAGE
    assert "exited with status 3" in result.message
    assert "bytes before]" in result.message
    assert "the real reason" in result.message


async def test_huge_stdout_is_bounded_and_refused(tmp_path: Path) -> None:
    body = "sys.stdout.write('{\"nodes\": [' + '\"c-1\", ' * 3_000_000 + ']}')"
    path = script(tmp_path, "provider", body)
    result = await CommandNodes(CommandSettings(max_stdout_bytes=4096)).create(pool(path), 1)
    assert result.outcome is Outcome.FAILED
    assert "more than 4096 bytes" in result.message


async def test_a_child_left_holding_the_output_does_not_hang_it(tmp_path: Path) -> None:
    body = (
        "child = subprocess.Popen(['sleep', '600'])\n"  # inherits stdout and stderr
        "open(os.path.join(os.path.dirname(sys.argv[0]), 'child'), 'w').write(str(child.pid))\n"
        'print(json.dumps({"nodes": ["c-1"]}), flush=True)'
    )
    path = script(tmp_path, "provider", body)
    settings = CommandSettings(pipe_grace_seconds=0.5)
    result = await CommandNodes(settings).create(pool(path, timeout=600), 1)
    assert result.outcome is Outcome.CREATED
    assert result.nodes == ("c-1",)
    child = int((tmp_path / "child").read_text())
    eventually(lambda: alive(child), lambda running: not running, what="the leftover child killed")


async def test_a_command_that_cannot_run_is_failed(tmp_path: Path) -> None:
    missing = await CommandNodes().create(pool(tmp_path / "nowhere"), 1)
    assert missing.outcome is Outcome.FAILED
    assert "cannot run" in missing.message
    plain = tmp_path / "plain"
    plain.write_text("not executable")
    refused = await CommandNodes().delete(pool(plain), "c-1")
    assert refused.outcome is Outcome.FAILED
    assert "cannot run" in refused.message
    assert "ermission denied" in refused.message


async def test_no_shell_reads_the_arguments(tmp_path: Path) -> None:
    path = script(tmp_path, "provider", RECORD + 'print(json.dumps({"nodes": []}))')
    result = await CommandNodes().create(pool(path, args=["$(touch pwned)", "; rm -rf ~"]), 1)
    assert result.outcome is Outcome.CREATED
    assert result.nodes == ()
    seen = json.loads((tmp_path / "seen.json").read_text())
    assert seen["argv"] == ["$(touch pwned)", "; rm -rf ~", "create"]
    assert not (tmp_path / "pwned").exists()


async def test_a_kill_by_signal_is_failed(tmp_path: Path) -> None:
    path = script(tmp_path, "provider", "import signal\nos.kill(os.getpid(), signal.SIGTERM)")
    result = await CommandNodes().delete(pool(path), "c-1")
    assert result.outcome is Outcome.FAILED
    assert "signal 15" in result.message


class Recorder:
    def __init__(self, name: str) -> None:
        self.name = name
        self.calls: list[tuple[str, Any]] = []

    async def create(self, pool: NodePool, count: int) -> CreateResult:
        self.calls.append(("create", count))
        return CreateResult(pool=pool.name, outcome=Outcome.CREATED, message=self.name)

    async def delete(self, pool: NodePool, node: str) -> DeleteResult:
        self.calls.append(("delete", f"{pool.name}/{node}"))
        return DeleteResult(node=node, outcome=Outcome.DELETED, message=self.name)


async def test_pool_providers_dispatch_on_the_pools_provider(tmp_path: Path) -> None:
    kwok, command = Recorder("kwok"), Recorder("command")
    providers = PoolProviders(kwok=kwok, command=command)
    command_pool = pool(tmp_path / "provider")
    kwok_pool = parse_node_pool(
        {
            "metadata": {"name": "fake"},
            "spec": {
                "max": 1,
                "node": {"capacity": {"cpu": "1", "memory": "1Gi", "pods": 10}},
                "provider": {"kwok": {}},
            },
        }
    )
    assert (await providers.create(command_pool, 2)).message == "command"
    assert (await providers.delete(kwok_pool, "fake-1")).message == "kwok"
    assert command.calls == [("create", 2)]
    assert kwok.calls == [("delete", "fake/fake-1")]
    # A pool given to the wrong provider is a failure, not a crash.
    wrong = await CommandNodes().create(kwok_pool, 1)
    assert wrong.outcome is Outcome.FAILED
    assert "not a command" in wrong.message


async def test_run_command_keeps_the_head_of_stdout_and_the_tail_of_stderr(
    tmp_path: Path,
) -> None:
    body = "sys.stdout.write('a' * 100 + 'b' * 100)\nsys.stderr.write('c' * 100 + 'd' * 100)"
    path = script(tmp_path, "chatty", body)
    run = await run_command(
        [str(path)],
        stdin=b"",
        seconds=30,
        max_stdout=100,
        max_stderr=100,
        pipe_grace=5,
        kill_wait=5,
    )
    assert run.returncode == 0
    assert (run.stdout, run.stdout_dropped) == (b"a" * 100, 100)
    assert (run.stderr, run.stderr_dropped) == (b"d" * 100, 100)
    assert not run.timed_out
    assert not run.left_running
