"""``tunnel-server migrate --from sqlite:DIR --to kubernetes``: the command line of the move.

The work is ``tunnel_server.kubestore.migrate``; here are the flags, the checks before any
write (a folder with a CA and a store, no server holding it), the output and the exit codes
(docs/cli.md): 0 done (or nothing left to do), 1 failed, 2 usage, 6 objects in conflict in the
target (left alone: ``--force`` replaces them) or the folder's server is running.
Progress (counts per kind) goes to stderr; a dry run prints each object's fate on stdout.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from daemon_support import arguments
from tunnel_server.kubestore.settings import KubeStoreSettings

if TYPE_CHECKING:
    from collections.abc import Callable

    from tunnel_server.kubestore.store import ImportOutcome

FAILED_EXIT = 1
CONFLICT_EXIT = 6
_SOURCE = "sqlite:"
_CA_FILES = ("ca.crt", "ca.key")


def _source(value: str) -> Path:
    if not value.startswith(_SOURCE) or len(value) == len(_SOURCE):
        raise argparse.ArgumentTypeError(f"expected sqlite:DIR (the data folder), got {value!r}")
    return Path(value.removeprefix(_SOURCE))


def add_migrate_command(
    sub: argparse._SubParsersAction[arguments.Parser],
    *,
    namespace_type: Callable[[str], str],
) -> None:
    defaults = KubeStoreSettings()
    migrate = sub.add_parser(
        "migrate",
        help="copy a single-machine install (SQLite store and CA) into the Kubernetes store",
        description="Copy every control object of the SQLite store of DIR (tokens, nodes with"
        " their certificates and join requests, users and their tokens, revoked sessions, the"
        " admin token and meta) and its CA, as the Secret edgefleet-ca, into the Kubernetes"
        " store, exactly (hashes, times). Re-running completes a partial move; an object the"
        " target holds with other content is reported and left alone (exit 6) unless --force."
        " Stop the server of DIR first (docs/ha.md).",
    )
    migrate.add_argument(
        "--from",
        dest="source",
        type=_source,
        required=True,
        metavar="sqlite:DIR",
        help="the data folder of the single-machine server",
    )
    migrate.add_argument(
        "--to", choices=("kubernetes",), required=True, help="the target store (kubernetes)"
    )
    migrate.add_argument(
        "--kubeconfig",
        type=Path,
        default=None,
        metavar="PATH",
        help="the kubeconfig to use (default: in-cluster, the pod's service account)",
    )
    migrate.add_argument(
        "--namespace",
        type=namespace_type,
        default=defaults.namespace,
        help="the namespace of the store's objects (default: %(default)s)",
    )
    migrate.add_argument(
        "--dry-run",
        action="store_true",
        help="write nothing: print what each object would become (create, unchanged, conflict)",
    )
    migrate.add_argument(
        "--force",
        action="store_true",
        help="replace objects (and the CA Secret) the target holds with other content",
    )


def _say(line: str) -> None:
    print(f"migrate: {line}", file=sys.stderr)  # noqa: T201 - progress, on stderr


def _fail(message: str, code: int) -> int:
    print(f"tunnel-server: error: {message}", file=sys.stderr)  # noqa: T201 - the CLI's answer
    return code


def run(args: argparse.Namespace) -> int:
    """The command's exit code; StoreError and OSError are left to ``cli.main`` (exit 1)."""
    from tunnel_server import backup  # noqa: PLC0415 - only this command needs it

    data_dir: Path = args.source
    if not data_dir.is_dir():
        return _fail(f"{data_dir} is not a folder (--from sqlite:DIR)", arguments.USAGE_EXIT)
    if args.kubeconfig is not None and not args.kubeconfig.is_file():
        return _fail(f"--kubeconfig {args.kubeconfig} is no file", arguments.USAGE_EXIT)
    missing = [n for n in (*_CA_FILES, "store.db") if not (data_dir / n).is_file()]
    if missing:
        return _fail(
            f"{data_dir} holds no {', '.join(missing)}: no server's data folder", FAILED_EXIT
        )
    busy = backup.server_running(data_dir)
    if busy is not None:
        message = f"a process holds {data_dir / busy} open: stop the server of {data_dir} first"
        return _fail(message, CONFLICT_EXIT)
    # Imported here: the client costs about a second of imports (see app.bootstrap).
    from tunnel_server.kubestore import migrate  # noqa: PLC0415
    from tunnel_server.kubestore.store import KubeStore  # noqa: PLC0415

    the_plan = migrate.plan(migrate.read_sqlite(data_dir), now=time.time())
    settings = KubeStoreSettings(namespace=args.namespace, kubeconfig=args.kubeconfig)
    verb = "would be " if args.dry_run else ""
    dry = " (dry run: nothing is written)" if args.dry_run else ""
    _say(
        f"{data_dir} -> namespace {args.namespace}: {len(the_plan.objects)} objects, the CA"
        f" and {len(the_plan.meta)} meta keys{dry}"
    )
    if the_plan.skipped_sessions:
        _say(f"{the_plan.skipped_sessions} revoked sessions past their expiry are not copied")

    def step(label: str, outcome: ImportOutcome) -> None:
        if args.dry_run:
            print(f"{label} {verb}{outcome}")  # noqa: T201 - the dry run's output

    store = KubeStore.open(settings)
    try:
        summary = migrate.migrate(
            store,
            the_plan,
            data_dir,
            force=args.force,
            dry_run=args.dry_run,
            progress=_say,
            step=step,
        )
    finally:
        store.close()
    for label in summary.conflicts:
        _say(f"conflict: {label} is in the target with other content: left as it is")
    if summary.conflicts:
        _say(f"{len(summary.conflicts)} conflicts: compare them, then --force to overwrite")
        return CONFLICT_EXIT
    _say("dry run: nothing written" if args.dry_run else "done")
    return 0
