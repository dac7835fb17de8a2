"""``devices``, ``twin``, ``models`` and ``audit`` over the API."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from tunnel_server.client import connection, exits
from tunnel_server.client.commands import SubParsers, fmt, group, leaf, list_handler, path
from tunnel_server.client.http import ApiClient
from tunnel_server.client.output import Column, show, show_document

MAX_FILE_BYTES = 1024 * 1024
"""A model document or a desired patch read from a file: the server bounds bodies lower."""

DEVICES = [
    Column("ID", "id"),
    Column("MODEL", "model"),
    Column("STATE", "state"),
    Column("AVAILABILITY", "availability"),
    Column("UPDATED", "updatedAt"),
    Column("NODE", "node", wide=True),
    Column("MODEL VERSION", "modelVersion", wide=True),
    Column("DESIRED", "desiredVersion", wide=True),
    Column("REPORTED", "reportedVersion", wide=True),
]
MODELS = [
    Column("NAME", "name"),
    Column("VERSION", "version"),
    Column("SOURCE", "source"),
    Column("PROPERTIES", "propertyCount"),
    Column("CREATED", "createdAt"),
    Column("CREATED BY", "createdBy", wide=True),
    Column("DESCRIPTION", "description", wide=True),
]
AUDIT = [
    Column("AT", "at"),
    Column("USER", "user"),
    Column("ROLE", "role"),
    Column("ACTION", "action"),
    Column("TARGET", "target"),
    Column("STATUS", "status"),
    Column("REASON", "reason"),
    Column("REQUEST", "requestId", wide=True),
    Column("PEER", "peer", wide=True),
]


def _read(file: Path, what: str) -> bytes:
    try:
        with file.open("rb") as handle:
            data = handle.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise exits.ClientError(f"{what} {file}: {exc.strerror or exc}", exits.USAGE) from None
    if len(data) > MAX_FILE_BYTES:
        raise exits.ClientError(f"{what} {file} is larger than 1 MiB", exits.USAGE)
    return data


# ---------------------------------------------------------------- devices


def cmd_devices_list(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    query = {
        key: value
        for key, value in (("node", args.node), ("model", args.model), ("state", args.state))
        if value
    }
    show(client.list_all("/api/v1/devices", query), fmt(args), DEVICES)
    return 0


def cmd_devices_get(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show(client.get(path("devices", args.id)), fmt(args), DEVICES)
    return 0


def cmd_devices_register(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    answer = client.post(
        "/api/v1/devices", {"node": args.node, "device": args.device, "model": args.model}
    )
    # The claim credential is shown this once: the whole answer, as a document.
    show_document(answer, fmt(args) if fmt(args) == "json" else "yaml")
    return 0


def _twin_choice(args: argparse.Namespace) -> str:
    return str(args.twin)


def cmd_devices_remove(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    answer = client.delete(path("devices", args.id), {"twin": _twin_choice(args)})
    if fmt(args) in ("json", "yaml") and answer is not None:
        show(answer, fmt(args), [])
    else:
        sys.stdout.write(f"device {args.id} removed (twin: {args.twin})\n")
    return 0


def cmd_devices_revoke(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    answer = client.post(path("devices", args.id, "revoke"), {"twin": _twin_choice(args)})
    if fmt(args) in ("json", "yaml") and answer is not None:
        show(answer, fmt(args), [])
    else:
        sys.stdout.write(f"device {args.id} revoked (twin: {args.twin})\n")
    return 0


def add_device_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(sub, "devices", "devices and their twins: list, get, register, remove, revoke")
    listing = leaf(inner, "list", cmd_devices_list, "list devices")
    listing.add_argument("--node", metavar="NAME", help="only devices of this node")
    listing.add_argument("--model", metavar="NAME", help="only devices of this model")
    listing.add_argument(
        "--state", choices=["active", "removed", "revoked"], help="only devices in this state"
    )
    leaf(inner, "get", cmd_devices_get, "one device").add_argument(
        "id", help="<node>:<device>, or a device id unique in the fleet"
    )
    register = leaf(
        inner,
        "register",
        cmd_devices_register,
        "register a device and print its one-time claim credential",
        description="POST /api/v1/devices: the answer holds the device's one-time claim"
        " credential, printed once (YAML, or JSON with -o json); keep it secret.",
    )
    register.add_argument("--node", required=True, help="the node the device talks to")
    register.add_argument("--device", required=True, help="the device's id on that node")
    register.add_argument("--model", required=True, help="its device model's name")
    for verb, handler, text in (
        ("remove", cmd_devices_remove, "remove a device from the fleet"),
        (
            "revoke",
            cmd_devices_revoke,
            "revoke a device: its broker credential is removed at once",
        ),
    ):
        command = leaf(inner, verb, handler, text)
        command.add_argument("id", help="<node>:<device>")
        command.add_argument(
            "--twin",
            choices=["keep", "delete"],
            default="keep",
            help="keep the device's twin or delete it (default: keep)",
        )


# ---------------------------------------------------------------- twins


def cmd_twin_get(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show_document(client.get(path("devices", args.id, "twin")), fmt(args))
    return 0


def cmd_twin_patch(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    text = args.desired if args.file is None else _read(args.file, "--file").decode()
    try:
        desired = json.loads(text)
    except ValueError as exc:
        raise exits.ClientError(f"the desired patch is no JSON ({exc})", exits.USAGE) from None
    if not isinstance(desired, dict):
        raise exits.ClientError(
            "the desired patch is a JSON object (a merge patch), such as '{\"setpoint\": 21}'",
            exits.USAGE,
        )
    headers = {"If-Match": f'"{args.if_match}"'} if args.if_match is not None else None
    answer = client.request(
        "PATCH", path("devices", args.id, "twin"), body={"desired": desired}, headers=headers
    ).json()
    show_document(answer, fmt(args))
    return 0


def add_twin_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(sub, "twin", "a device's twin: get, patch desired")
    leaf(inner, "get", cmd_twin_get, "a device's twin (YAML; -o json for JSON)").add_argument(
        "id", help="<node>:<device>"
    )
    patch = leaf(
        inner,
        "patch",
        cmd_twin_patch,
        "change a device's desired state (a JSON merge patch)",
        description='PATCH /api/v1/devices/ID/twin with {"desired": PATCH}; with --if-match'
        " only if the desired $version is still VERSION (else exit 6).",
    )
    patch.add_argument("id", help="<node>:<device>")
    source = patch.add_mutually_exclusive_group(required=True)
    source.add_argument("--desired", metavar="JSON", help="the merge patch, e.g. '{\"on\": true}'")
    source.add_argument("--file", type=Path, help="the merge patch from a JSON file")
    patch.add_argument(
        "--if-match",
        type=int,
        metavar="VERSION",
        help="only if the desired $version is this (optimistic concurrency)",
    )


# ---------------------------------------------------------------- device models


def cmd_models_upload(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    data = _read(args.file, "model file")
    is_json = args.file.suffix.lower() == ".json" or data.lstrip()[:1] == b"{"
    answer = client.request(
        "POST",
        "/api/v1/device-models",
        raw=data,
        content_type="application/json" if is_json else "application/yaml",
    ).json()
    if fmt(args) in ("json", "yaml"):
        show(answer, fmt(args), [])
    else:
        sys.stdout.write(f"model {answer.get('name')} version {answer.get('version')} uploaded\n")
    return 0


def cmd_models_get(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show_document(client.get(path("device-models", args.name)), fmt(args))
    return 0


def cmd_models_list(args: argparse.Namespace, _t: connection.Target, client: ApiClient) -> int:
    show(client.list_all("/api/v1/device-models"), fmt(args), MODELS)
    return 0


def add_model_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(sub, "models", "device models: list, get, upload a new version")
    leaf(inner, "list", cmd_models_list, "list device models")
    leaf(inner, "get", cmd_models_get, "one device model (YAML; -o json for JSON)").add_argument(
        "name"
    )
    upload = leaf(
        inner,
        "upload",
        cmd_models_upload,
        "upload a device model (YAML or JSON): a new version of its name",
        description="POST /api/v1/device-models; agents receive it through their tunnels.",
    )
    upload.add_argument("file", type=Path, help="the model document, .yaml or .json")


# ---------------------------------------------------------------- audit


def add_audit_commands(sub: SubParsers) -> None:  # type: ignore[type-arg]
    _, inner = group(sub, "audit", "the audit log of writes through the API (admin)")
    listing = leaf(
        inner,
        "list",
        list_handler(
            "audit", AUDIT, user="user", action="action", target_filter="target", result="result"
        ),
        "list audit entries, newest first",
    )
    listing.add_argument("--user", dest="user", metavar="NAME", help="only this caller's")
    listing.add_argument("--action", metavar="ACTION", help="only this action")
    listing.add_argument(
        "--target", dest="target_filter", metavar="TARGET", help="only this target"
    )
    listing.add_argument(
        "--result",
        metavar="RESULT",
        help="only this result: a status (201), a class (4xx) or a reason (forbidden)",
    )
