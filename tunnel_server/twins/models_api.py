"""REST routes of device models: list, show, list versions, upload a new version.

- Reads need any role; an upload needs operator or admin (``access.require(..., "write")``):
  a model changes what every node accepts from its devices, like a desired write does, and
  operators run the devices. Models are fleet-wide: no cluster scope.
- ``POST /api/v1/device-models`` takes the model as YAML (``application/yaml``) or JSON, at most
  64 KiB, validated by ``device_models`` (every problem named with its path). Its version must
  be higher than the latest of that name (409 ``version_not_higher`` otherwise); ``If-Match``
  with the latest version's ETag makes the upload conditional (412). The upload is stored
  durably, used for twin validation in the cloud at once and pushed to every connected agent
  (``model_push``); agents that are offline get it when they reconnect.
- Where uploads are kept: the data dir's ``device-models.sqlite3``, or with ``--store
  kubernetes`` the ``DeviceModel`` custom resources of the store's namespace
  (``model_store_kube``), shared by every replica. An upload taken by another replica reaches
  this one through the store's watch: used for validation here and pushed to the agents this
  replica holds, like an upload taken here. A store that cannot write answers 503
  ``store_unavailable``.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from aiohttp import web

from device_models import MAX_MODEL_YAML_BYTES, DeviceModel, DeviceModelsError
from device_models import model_wire as wire
from tunnel_server.api import access
from tunnel_server.api.paging import page, sort_items
from tunnel_server.api.preconditions import check_if_match, etag
from tunnel_server.api.views import iso
from tunnel_server.app_keys import AGENT_SERVICES_KEY, SETTINGS_KEY, STORE_KEY, TWINS_KEY
from tunnel_server.kubestore.settings import KubeStoreSettings
from tunnel_server.store import ApiUnreachableError
from tunnel_server.twins.model_push import ModelPush
from tunnel_server.twins.model_store import (
    MODELS_FILE,
    LimitError,
    ModelCatalogue,
    ModelStore,
    ModelStoreError,
    ModelVersion,
    NotNewerError,
    UploadStore,
)
from tunnel_server.web.bodies import BodyError, decode_json_object, read_bounded
from tunnel_server.web.errors import ApiError

__all__ = ["CATALOGUE_KEY", "PUSH_KEY", "add_routes", "detail_json", "setup", "summary_json"]

log = logging.getLogger("tunnel_server.twins.models_api")

CATALOGUE_KEY = web.AppKey("device_model_catalogue", ModelCatalogue)
PUSH_KEY = web.AppKey("device_model_push", ModelPush)

_HEADERS = {"X-Content-Type-Options": "nosniff", "Cache-Control": "no-store"}
YAML_TYPES = frozenset({"application/yaml", "application/x-yaml", "text/yaml", "text/x-yaml"})
JSON_TYPES = frozenset({"application/json"})
MAX_BODY = MAX_MODEL_YAML_BYTES


def summary_json(entry: ModelVersion) -> dict[str, Any]:
    model = entry.model
    return {
        "name": model.name,
        "version": model.version,
        "source": entry.source,
        "description": model.description,
        "propertyCount": _count(model.to_dict().get("properties")),
        "createdAt": iso(entry.created),
        "createdBy": entry.created_by,
    }


def detail_json(entry: ModelVersion) -> dict[str, Any]:
    return {**summary_json(entry), "model": entry.model.to_dict()}


def _count(properties: object) -> int:
    if not isinstance(properties, list):
        return 0
    return sum(1 + _count(p.get("properties")) for p in properties if isinstance(p, dict))


def _catalogue(request: web.Request) -> ModelCatalogue:
    return request.app[CATALOGUE_KEY]


def _name(request: web.Request) -> str:
    name = request.match_info["name"]
    if _catalogue(request).latest(name) is None:
        raise ApiError(
            404, "model_not_found", f"no device model {name[:64]!r}: see GET /api/v1/device-models"
        )
    return name


async def list_models(request: web.Request) -> web.Response:
    access.require(request, "read")
    catalogue = _catalogue(request)
    entries = [e for name in catalogue.names() if (e := catalogue.latest(name)) is not None]
    key = lambda e: (e.name,)  # noqa: E731 - the one sort key, used twice
    body = page(request, sort_items(entries, key=key), key=key, render=summary_json)
    return web.json_response(body, headers=_HEADERS)


async def get_model(request: web.Request) -> web.Response:
    access.require(request, "read")
    name = _name(request)
    catalogue = _catalogue(request)
    version = request.query.get("version")
    entry = catalogue.latest(name) if version is None else catalogue.find(name, version)
    if entry is None:
        raise ApiError(
            404,
            "model_not_found",
            f"device model {name} has no version {str(version)[:32]!r}: see "
            f"GET /api/v1/device-models/{name}/versions",
        )
    return web.json_response(detail_json(entry), headers={**_HEADERS, "ETag": etag(entry.version)})


async def list_versions(request: web.Request) -> web.Response:
    access.require(request, "read")
    name = _name(request)
    entries = _catalogue(request).versions(name)
    order = {e.version: position for position, e in enumerate(entries)}
    key = lambda e: (order[e.version],)  # noqa: E731 - the one sort key, used twice
    ordered = sort_items(entries, key=key, reverse=True)
    body = page(request, ordered, key=key, render=summary_json, reverse=True)
    return web.json_response(body, headers=_HEADERS)


async def upload_model(request: web.Request) -> web.Response:
    caller = access.require(request, "write")
    model = _parse(request.content_type, await read_bounded(request, limit=MAX_BODY))
    catalogue = _catalogue(request)
    current = catalogue.latest(model.name)
    check_if_match(request, current.version if current is not None else None)
    try:
        entry = catalogue.add(model, now=time.time(), by=caller.name)
    except NotNewerError as refused:
        raise ApiError(
            409,
            "version_not_higher",
            f"device model {model.name} is at version {refused.current} already: upload a "
            f"higher version (versions only go forward; 1.2.0 > 1.1.9 > 1.1.0-rc.1)",
            extra={"currentVersion": refused.current},
        ) from None
    except LimitError as refused:
        raise ApiError(409, refused.reason, f"{refused}; ask the project to raise it") from None
    except ApiUnreachableError:
        raise  # the store is down: api.unavailable answers 503 with Retry-After
    except ModelStoreError as error:
        raise ApiError(
            503, "store_unavailable", f"the upload was not stored: {error}; try again"
        ) from None
    # The catalogue's listener (the push) sends it to every agent connected here.
    log.info("device model %s %s uploaded by %s", model.name, model.version, caller.name)
    location = f"/api/v1/device-models/{model.name}"
    return web.json_response(
        detail_json(entry),
        status=201,
        headers={**_HEADERS, "ETag": etag(entry.version), "Location": location},
    )


def _parse(content_type: str, raw: bytes) -> DeviceModel:
    """The uploaded model; ApiError 400 ``invalid_model`` (with problems) or 415."""
    try:
        if content_type in JSON_TYPES:
            model = DeviceModel.from_dict(decode_json_object(raw))
        elif content_type in YAML_TYPES:
            model = DeviceModel.from_yaml(raw)
        else:
            raise ApiError(
                415,
                "unsupported_media_type",
                "send the model as YAML (Content-Type: application/yaml) or JSON "
                "(Content-Type: application/json)",
            )
        wire.parse_model(wire.model_message(model))  # it must fit an agent's models folder
    except BodyError as error:
        raise ApiError(
            400, "invalid_model", f"the body is not a JSON model: {error.message}"
        ) from None
    except DeviceModelsError as error:
        raise ApiError(
            400,
            "invalid_model",
            f"{error.summary}: fix the fields named in problems and upload again "
            "(docs/device-models.md describes the format)",
            problems=tuple(error.problems),
        ) from None
    return model


def add_routes(app: web.Application) -> None:
    app.router.add_get("/api/v1/device-models", list_models)
    app.router.add_post("/api/v1/device-models", upload_model)
    app.router.add_get("/api/v1/device-models/{name}", get_model)
    app.router.add_get("/api/v1/device-models/{name}/versions", list_versions)


def _kube_settings(app: web.Application) -> KubeStoreSettings | None:
    """The Kubernetes store's settings when the server's store is the Kubernetes one."""
    found = getattr(app.get(STORE_KEY), "settings", None)
    return found if isinstance(found, KubeStoreSettings) else None


def open_upload_store(app: web.Application) -> UploadStore:
    """The data dir's SQLite file, or the ``DeviceModel`` resources with ``--store kubernetes``."""
    kube = _kube_settings(app)
    if kube is None:
        return ModelStore(app[SETTINGS_KEY].data_dir / MODELS_FILE)
    # Imported here: the client costs about a second of imports a SQLite server never needs.
    from tunnel_server.twins.model_store_kube import KubeModelStore  # noqa: PLC0415

    return KubeModelStore.open(kube)


def setup(app: web.Application) -> None:
    """The model store and catalogue, the routes, and the ``models`` agent service.

    Call after ``twins.setup`` (its model registry is the one kept at the latest versions).
    """
    if TWINS_KEY not in app:
        raise RuntimeError("models_api.setup(app) must come after twins.setup(app)")
    store = open_upload_store(app)
    catalogue = ModelCatalogue(store=store, registry=app[TWINS_KEY].models)
    push = ModelPush(catalogue)
    catalogue.listen(push.publish)
    app[CATALOGUE_KEY] = catalogue
    app[PUSH_KEY] = push
    app[AGENT_SERVICES_KEY][wire.MODELS_TARGET] = push.serve
    add_routes(app)

    async def follow(_app: web.Application) -> None:
        # Another replica's upload arrives on the store's watch thread: follow it on the loop.
        loop = asyncio.get_running_loop()

        def changed(name: str) -> None:
            loop.call_soon_threadsafe(catalogue.changed, name)

        store.on_change = changed
        catalogue.refresh()  # what arrived between the store's open and now

    async def close(_app: web.Application) -> None:
        store.on_change = None
        store.close()

    app.on_startup.append(follow)
    app.on_cleanup.append(close)
