"""``edge-agent``: the command line of the EdgeFleet daemon for edge machines.

The parser and one function per command; ``run`` builds the settings (config file, then the
flags on top) and hands them to :mod:`edge_agent.daemon`, which wires the parts together.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import dataclasses
import json
import socket
import sqlite3
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from daemon_support import arguments, event_loop, logs
from daemon_support.schema import SchemaError
from edge_agent import __version__, config
from edge_agent.join import EXIT_CODES, INTERRUPTED, JoinError, JoinOptions, join
from edge_agent.settings import AgentSettings

if TYPE_CHECKING:
    from edge_agent import daemon

# The daemon, the cache tools and the simulator are imported by the command that uses them:
# `edge-agent run` then loads only the parts its config switches on (issue 18).

DESCRIPTION = """\
EdgeFleet edge agent: runs on an edge machine (systemd unit edge-agent) or as a Deployment
in a registered cluster. It keeps one outbound tunnel to the cloud, caches Kubernetes objects
so the node keeps working offline, manages device twins over MQTT and reports node status.

Its own health, metrics and status are served on http://127.0.0.1:10267.
"""

RUN_EXIT_CODES = """\
exit codes:
  0  stopped by SIGTERM or SIGINT
  1  could not run: the local API port in use, a data dir it may not write
  2  configuration error: a bad flag or config key, a --data-dir that is not a folder,
     an unusable [kube] kubeconfig or [twins] password file
"""

EXIT_CODES_ALL = """\
exit codes: 0 done; 1 the command failed (the message says why); 2 usage or configuration
error (a bad flag or value). `edge-agent join --help` lists the join's own codes.
"""

CACHE_DESCRIPTION = """\
Inspect or clear the local kube proxy's object cache (default <data-dir>/kubecache).

  stats   objects per component and resource, complete lists, pending heartbeats, bytes
  verify  SQLite integrity, and every entry decodes under the key that names it
          (exit 0 when sound, 1 when problems were found)
  purge   delete one component's entries (--component), or the whole cache folder;
          stop the agent before purging the whole cache

stats and verify are safe while the agent runs (SQLite WAL).

exit codes: 0 done (purge without a cache: nothing to do); 1 verify found problems;
2 no cache (stats, verify), a cache that cannot be opened, or an unusable config
"""

JOIN_DESCRIPTION = """\
Join a tunnel server: pin its CA by hash (never the system trust store), make a private
key that never leaves this machine, send a CSR with the bootstrap token, and store the
signed client certificate in the data dir. If the token requires approval, wait (showing
progress) until an operator runs `tunnel-server nodes approve NAME`.
"""


def build_parser() -> argparse.ArgumentParser:
    parser = arguments.Parser(
        prog="edge-agent",
        description=DESCRIPTION,
        epilog=EXIT_CODES_ALL,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"edge-agent {__version__}")
    arguments.add_log_level(parser)
    logs.add_log_format(parser)
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    defaults = AgentSettings()
    run = sub.add_parser(
        "run",
        help="run the agent in the foreground",
        description="Run the agent until SIGTERM or SIGINT; tells systemd when it is ready.",
        epilog=RUN_EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    run.add_argument(
        "--config",
        type=Path,
        help="TOML config file; see docs/agent-config.md (default: built-in defaults)",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        help=f"folder for keys, certificate, cache and outbox (default: {defaults.data_dir})",
    )
    run.add_argument(
        "--status-interval",
        type=arguments.seconds(low=1.0, high=86400.0),
        metavar="SECONDS",
        help="seconds between node status reports to the cloud, 1 to 86400 "
        f"(default: {defaults.node_status.interval:g}; [node_status] interval in the config)",
    )
    run.add_argument(
        "--local-api-port",
        type=arguments.port,
        metavar="PORT",
        help="loopback port of the agent's own API, 1 to 65535 "
        f"(default: {defaults.local_api.port}; [local_api] port in the config)",
    )
    _add_join_command(sub, defaults)
    _add_cache_command(sub, defaults)
    sub.add_parser(
        "simulate",
        help="onboard simulated devices through the broker and report values",
        description="Everything after 'simulate' goes to the device simulator: "
        "see `edge-agent simulate --help`.",
        add_help=False,
    )
    return parser


def _add_cache_command(
    sub: argparse._SubParsersAction[arguments.Parser], defaults: AgentSettings
) -> None:
    command = sub.add_parser(
        "cache",
        help="inspect, verify or purge the kube object cache",
        description=CACHE_DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("action", choices=("stats", "verify", "purge"))
    command.add_argument(
        "--config", type=Path, help="the agent's TOML config, if it sets [kube] cache_dir"
    )
    command.add_argument(
        "--data-dir",
        type=Path,
        help=f"the agent's data dir; the cache is its kubecache folder (default: "
        f"{defaults.data_dir})",
    )
    command.add_argument(
        "--component",
        help="only this component (User-Agent up to the first /, e.g. kubelet): stats, purge",
    )
    command.add_argument("--json", action="store_true", help="print one JSON object")


def _add_join_command(
    sub: argparse._SubParsersAction[arguments.Parser], defaults: AgentSettings
) -> None:
    command = sub.add_parser(
        "join",
        help="join a tunnel server with a bootstrap token",
        description=JOIN_DESCRIPTION,
        epilog=EXIT_CODES,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    command.add_argument("--server", required=True, help="server URL, e.g. https://cloud:8443")
    command.add_argument(
        "--token", required=True, help="bootstrap token from `tunnel-server token create`"
    )
    command.add_argument(
        "--ca-hash",
        required=True,
        metavar="sha256:HEX",
        help="the server CA's hash from `tunnel-server ca-hash`",
    )
    command.add_argument(
        "--name",
        default=socket.gethostname().lower(),
        help="node name the token was created for (default: this host's name, %(default)s)",
    )
    command.add_argument(
        "--data-dir",
        type=Path,
        default=defaults.data_dir,
        help="where the key and certificate are stored (default: %(default)s)",
    )
    command.add_argument(
        "--wait-approval",
        type=arguments.seconds(low=0.0, high=7 * 86400.0),
        default=defaults.join.wait_approval,
        metavar="SECONDS",
        help="how long to wait if the token requires approval, 0 to 604800 (default: %(default)gs)",
    )


def cmd_join(args: argparse.Namespace) -> int:
    options = JoinOptions(
        server=args.server,
        token=args.token,
        ca_hash=args.ca_hash,
        name=args.name,
        data_dir=args.data_dir,
        wait_approval=args.wait_approval,
    )

    def progress(message: str) -> None:
        print(f"edge-agent: {message}", file=sys.stderr, flush=True)  # noqa: T201 - progress

    try:
        identity = asyncio.run(join(options, settings=AgentSettings().join, progress=progress))
    except JoinError as exc:
        print(f"edge-agent: join failed: {exc}", file=sys.stderr)  # noqa: T201 - the answer
        return exc.exit_code
    except KeyboardInterrupt:
        print(  # noqa: T201 - the answer
            "edge-agent: join interrupted; a join that waits for approval resumes when the same"
            " command runs again",
            file=sys.stderr,
        )
        return INTERRUPTED
    except PermissionError as exc:
        print(f"edge-agent: join failed: {exc} (run as root?)", file=sys.stderr)  # noqa: T201
        return 1
    except OSError as exc:  # a full or read-only disk under the data dir
        print(f"edge-agent: join failed: {exc}", file=sys.stderr)  # noqa: T201 - the answer
        return 1
    print(  # noqa: T201 - the command's answer
        f"joined {identity.server} as {identity.kind} {identity.name};"
        f" certificate valid until {identity.not_after.isoformat(timespec='seconds')},"
        f" stored in {identity.data_dir}"
    )
    return 0


def _run_settings(args: argparse.Namespace) -> AgentSettings:
    """The config file with the flags on top, checked; ConfigError says what is unusable."""
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    settings = config.load(args.config, overrides=overrides)
    if args.local_api_port is not None:
        # Only the port: a [local_api] host (or any other key) in the config stays.
        local_api = dataclasses.replace(settings.local_api, port=args.local_api_port)
        settings = dataclasses.replace(settings, local_api=local_api)
    if args.status_interval is not None:
        settings = dataclasses.replace(
            settings,
            node_status=dataclasses.replace(settings.node_status, interval=args.status_interval),
        )
    from edge_agent import daemon  # noqa: PLC0415 - see the imports on top

    daemon.check_startable(settings)
    return settings


def cmd_run(args: argparse.Namespace, *, local_api_hook: daemon.LocalApiHook | None = None) -> int:
    """``edge-agent run``; ``local_api_hook`` is for test launchers only. See RUN_EXIT_CODES."""
    from edge_agent import daemon  # noqa: PLC0415 - see the imports on top

    try:
        settings = _run_settings(args)
    except config.ConfigError as error:
        print(f"edge-agent: {error}", file=sys.stderr)  # noqa: T201 - the CLI's answer
        return 2
    try:
        with contextlib.suppress(KeyboardInterrupt):
            # asyncio's loop unless EDGEFLEET_EVENT_LOOP says otherwise (see event_loop.py).
            event_loop.run(daemon.run(settings, local_api_hook=local_api_hook))
    except SchemaError as error:  # a newer release's database: a restart cannot help
        print(f"edge-agent: {error}", file=sys.stderr)  # noqa: T201 - the CLI's answer
        return 2
    except (
        daemon.StartError,
        OSError,
        event_loop.EventLoopError,
    ) as error:  # a port in use, a data dir we may not write
        print(f"edge-agent: {error}", file=sys.stderr)  # noqa: T201 - the CLI's answer
        return 1
    return 0


def _cache_dir(args: argparse.Namespace) -> Path:
    overrides: dict[str, object] = {}
    if args.data_dir is not None:
        overrides["data_dir"] = args.data_dir
    settings = config.load(args.config, overrides=overrides)
    return settings.kube.proxy_settings(settings.data_dir).cache_dir


def _stats(directory: Path, component: str | None) -> tuple[dict[str, Any], str, int]:
    from edge_agent.kubecache import cache_stats  # noqa: PLC0415 - see the imports on top

    answer = cache_stats(directory)
    if component:
        prefix = f"{component}/"
        per = {k: v for k, v in answer["by_component_resource"].items() if k.startswith(prefix)}
        answer["by_component_resource"] = per
        answer["objects"] = sum(per.values())
        answer["complete_lists"] = [
            c for c in answer["complete_lists"] if c["key"].startswith(f"c/{prefix}")
        ]
    head = (
        f"cache {directory}: {answer['objects']} objects, "
        f"{len(answer['complete_lists'])} complete lists, "
        f"{answer['pending_heartbeats']} pending heartbeats, {answer['bytes']} bytes"
    )
    rows = [f"  {name}: {count}" for name, count in answer["by_component_resource"].items()]
    return answer, "\n".join([head, *rows]), 0


def _verify(directory: Path) -> tuple[dict[str, Any], str, int]:
    from edge_agent.kubecache import cache_verify  # noqa: PLC0415 - see the imports on top

    report = cache_verify(directory)
    answer = {
        "directory": str(directory),
        "checked": report.checked,
        "ok": report.ok,
        "problems": report.problems,
    }
    verdict = "sound" if report.ok else f"{len(report.problems)} problem(s)"
    lines = [f"cache {directory}: {report.checked} entries checked, {verdict}"]
    lines += [f"  {problem}" for problem in report.problems]
    return answer, "\n".join(lines), 0 if report.ok else 1


def _purge(directory: Path, component: str | None) -> tuple[dict[str, Any], str, int]:
    """Purge; ``removed`` counts entries, null when the whole folder went (never opened)."""
    answer: dict[str, Any] = {"directory": str(directory), "component": component}
    if not directory.is_dir():  # nothing to do, and a component purge must not create one
        answer["removed"] = 0
        return answer, f"no cache at {directory}: nothing to purge", 0
    from edge_agent.kubecache import cache_purge  # noqa: PLC0415 - see the imports on top

    removed = cache_purge(directory, component=component)
    if component:
        answer["removed"] = removed
        return answer, f"removed {removed} entries of {component} from {directory}", 0
    answer["removed"] = None
    return answer, f"removed the cache folder {directory}", 0


def cmd_cache(args: argparse.Namespace) -> int:
    """``edge-agent cache stats|verify|purge``: exit 0 done, 1 problems found, 2 unusable."""
    try:
        directory = _cache_dir(args)
    except config.ConfigError as error:
        print(f"edge-agent: {error}", file=sys.stderr)  # noqa: T201 - the CLI's answer
        return 2
    if args.action != "purge" and not directory.is_dir():
        print(f"edge-agent: no cache at {directory}", file=sys.stderr)  # noqa: T201
        return 2
    try:
        if args.action == "stats":
            answer, text, code = _stats(directory, args.component)
        elif args.action == "verify":
            answer, text, code = _verify(directory)
        else:
            answer, text, code = _purge(directory, args.component)
    except (sqlite3.Error, OSError, SchemaError) as error:  # verify reports this itself
        print(  # noqa: T201 - the CLI's answer
            f"edge-agent: cannot open the cache at {directory}: {error}; stop the agent and"
            " purge the whole cache (`edge-agent cache purge` without --component)",
            file=sys.stderr,
        )
        return 2
    print(json.dumps(answer, sort_keys=True) if args.json else text)  # noqa: T201 - the answer
    return code


def main(argv: list[str] | None = None) -> int:
    """The command line; exit codes in each command's ``--help`` (and docs/agent-config.md)."""
    parser = build_parser()
    given = sys.argv[1:] if argv is None else argv
    args, rest = parser.parse_known_args(arguments.join_negative_values(parser, given))
    logs.setup(args.log_level, log_format=args.log_format)
    if args.command == "simulate":
        from edge_agent.twins import simulator  # noqa: PLC0415 - see the imports on top

        try:
            return simulator.main(arguments.join_negative_values(simulator.build_parser(), rest))
        except KeyboardInterrupt:  # the way to stop `--reports 0`
            print("edge-agent simulate: interrupted", file=sys.stderr)  # noqa: T201 - the answer
            return INTERRUPTED
    if rest:
        parser.error(f"unrecognized arguments: {' '.join(rest)}")
    if args.command == "run":
        return cmd_run(args)
    if args.command == "join":
        return cmd_join(args)
    if args.command == "cache":
        return cmd_cache(args)
    return 2


if __name__ == "__main__":
    sys.exit(main())
