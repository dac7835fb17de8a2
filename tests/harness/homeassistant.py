"""A real Home Assistant core (PyPI ``homeassistant``) with its MQTT integration on our broker.

It listens on a free loopback port; MQTT is configured to one of our mosquitto brokers.

Rules:

- The virtual environment is built outside the repository by ``scripts/homeassistant-build``
  (``scripts/setup --test`` runs it) in ``~/.cache/edgefleet/homeassistant/<version>/``;
  ``EDGEFLEET_HA_DIR`` names that folder. No build: the start fails loudly and says how to make
  one (no skip).
- Home Assistant must need nothing from the network at test time: pip's index is switched off
  for it (``PIP_NO_INDEX``) and `HomeAssistant.install_attempts` lists any requirement it tried
  to install all the same (the harness test asserts there is none).
- No browser: the owner account comes from the onboarding API, its authorization code is
  exchanged at ``/auth/token``, and a long-lived token is made over the websocket API. The MQTT
  integration is set up through its config flow over REST, as the UI does.
- Readiness is waited for by condition (``/api/config`` says RUNNING, the MQTT config entry is
  loaded), never by time. Every call has a timeout; a REST reply is read up to `MAX_REPLY`.
"""

from __future__ import annotations

import json
import logging
import os
import secrets
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from itertools import count
from pathlib import Path
from typing import Any

import websocket

from tests.harness.mqtt import Broker
from tests.harness.procs import ManagedProcess, ServiceError, free_port
from tests.harness.waiting import NotSeen, eventually

log = logging.getLogger("tests.harness.homeassistant")

CACHE_ROOT = Path.home() / ".cache" / "edgefleet" / "homeassistant"
START_TIMEOUT = 240.0
"""Seconds for Home Assistant to come up: about 20 s idle, far more on two busy cores."""
REQUEST_TIMEOUT = 30.0
"""Seconds for one REST or websocket call to our loopback instance."""
MAX_REPLY = 16 * 1024 * 1024
"""Bytes read from one REST reply at most: the state of a test instance is far smaller."""
CLIENT_ID_PATH = "/"
"""OAuth client id is a URL; the instance's own base URL is what its frontend uses."""


def ha_dir() -> Path:
    """The folder ``scripts/homeassistant-build`` printed.

    ``EDGEFLEET_HA_DIR``, or else the newest complete build in the cache.
    """
    if env := os.environ.get("EDGEFLEET_HA_DIR"):
        folder = Path(env)
    else:
        builds = sorted(
            (p for p in CACHE_ROOT.glob("*") if (p / ".complete").is_file()),
            key=lambda p: [int(part) for part in p.name.split(".") if part.isdigit()],
        )
        folder = builds[-1] if builds else CACHE_ROOT / "<version>"
    if not (folder / ".complete").is_file() or not (folder / "venv" / "bin" / "hass").is_file():
        raise ServiceError(
            f"no Home Assistant build in {folder}: run scripts/homeassistant-build "
            "(scripts/setup --test does) and set EDGEFLEET_HA_DIR to the folder it prints"
        )
    return folder


CONFIGURATION = """\
# Written by tests/harness/homeassistant.py. No default_config: only what the tests use (the
# integrations Home Assistant always sets up come on top, see its bootstrap module).
homeassistant:
  name: EdgeFleet test
  latitude: 52.52
  longitude: 13.40
  elevation: 34
  unit_system: metric
  currency: EUR
  country: DE
  time_zone: UTC
http:
  server_host: 127.0.0.1
  server_port: {port}
api:
config:
onboarding:
websocket_api:
logger:
  default: info
"""


@dataclass(kw_only=True)
class HomeAssistant:
    url: str
    """Base URL, http://127.0.0.1:port."""
    config_dir: Path
    process: ManagedProcess
    version: str
    """Home Assistant's own version (from /api/config)."""
    token: str = ""
    """A long-lived access token of the owner (empty until onboarded)."""

    # ------------------------------------------------------------------ REST

    def request(
        self,
        method: str,
        path: str,
        body: object = None,
        *,
        form: dict[str, str] | None = None,
        timeout: float = REQUEST_TIMEOUT,
    ) -> tuple[int, Any]:
        """One request: (status, decoded JSON body or text). Errors come back as their status."""
        headers = {"Accept": "application/json"}
        data = None
        if form is not None:
            data = urllib.parse.urlencode(form).encode()
            headers["Content-Type"] = "application/x-www-form-urlencoded"
        elif body is not None:
            data = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        if self.token:
            headers["Authorization"] = f"Bearer {self.token}"
        request = urllib.request.Request(  # noqa: S310 - always our own http URL
            self.url + path, data=data, method=method, headers=headers
        )
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:  # noqa: S310
                status, raw = int(response.status), response.read(MAX_REPLY)
        except urllib.error.HTTPError as error:
            with error:  # an unread error response keeps its socket open
                status, raw = error.code, error.read(MAX_REPLY)
        try:
            return status, json.loads(raw) if raw else None
        except ValueError:
            return status, raw.decode(errors="replace")

    def _ok(self, method: str, path: str, body: object = None) -> Any:
        status, reply = self.request(method, path, body)
        if status not in (200, 201):
            raise ServiceError(f"Home Assistant {method} {path}: {status} {reply!r}")
        return reply

    def states(self) -> list[dict[str, Any]]:
        """Every entity's state object (``GET /api/states``)."""
        reply: list[dict[str, Any]] = self._ok("GET", "/api/states")
        return reply

    def state(self, entity_id: str) -> dict[str, Any] | None:
        """One entity's state object, or None while Home Assistant does not know it."""
        status, reply = self.request("GET", f"/api/states/{entity_id}")
        if status == 404:
            return None
        if status != 200:
            raise ServiceError(f"Home Assistant GET /api/states/{entity_id}: {status} {reply!r}")
        result: dict[str, Any] = reply
        return result

    def call_service(
        self, domain: str, service: str, data: dict[str, Any] | None = None
    ) -> list[dict[str, Any]]:
        """Call a service; the states it changed (``POST /api/services/<domain>/<service>``)."""
        reply: list[dict[str, Any]] = self._ok(
            "POST", f"/api/services/{domain}/{service}", data or {}
        )
        return reply

    def render(self, template: str) -> str:
        """Render a template server-side (``POST /api/template``)."""
        return str(self._ok("POST", "/api/template", {"template": template}))

    # ------------------------------------------------------------- websocket

    def websocket(self, *commands: dict[str, Any]) -> list[Any]:
        """Send each command over one authenticated websocket; their results, in order."""
        ws = websocket.create_connection(
            self.url.replace("http://", "ws://") + "/api/websocket", timeout=REQUEST_TIMEOUT
        )
        try:
            if json.loads(ws.recv()).get("type") != "auth_required":
                raise ServiceError("Home Assistant's websocket did not ask for auth")
            ws.send(json.dumps({"type": "auth", "access_token": self.token}))
            if (reply := json.loads(ws.recv())).get("type") != "auth_ok":
                raise ServiceError(f"Home Assistant's websocket refused the token: {reply}")
            results = []
            for ident, command in zip(count(1), commands, strict=False):
                ws.send(json.dumps({"id": ident, **command}))
                while (reply := json.loads(ws.recv())).get("id") != ident:
                    continue  # events of earlier subscriptions; we make none
                if not reply.get("success"):
                    raise ServiceError(f"Home Assistant {command['type']}: {reply.get('error')}")
                results.append(reply.get("result"))
            return results
        finally:
            ws.close()

    def devices(self) -> list[dict[str, Any]]:
        """The device registry (``config/device_registry/list``)."""
        result: list[dict[str, Any]] = self.websocket({"type": "config/device_registry/list"})[0]
        return result

    def entity_registry(self) -> list[dict[str, Any]]:
        """The entity registry (``config/entity_registry/list``)."""
        result: list[dict[str, Any]] = self.websocket({"type": "config/entity_registry/list"})[0]
        return result

    def config_entries(self, domain: str) -> list[dict[str, Any]]:
        reply: list[dict[str, Any]] = self._ok(
            "GET", f"/api/config/config_entries/entry?domain={domain}"
        )
        return reply

    # --------------------------------------------------------------- checks

    def log_text(self) -> str:
        self.process.tail(1)  # flushes our side of the log file
        return self.process.log_path.read_text(errors="replace")

    def install_attempts(self) -> list[str]:
        """Log lines where Home Assistant tried to pip-install a requirement (should be none)."""
        return [
            line
            for line in self.log_text().splitlines()
            if "Attempting install of" in line or "Unable to install package" in line
        ]

    def stop(self) -> None:
        self.process.stop()


def _check_alive(ha: HomeAssistant) -> None:
    """Fail at once if Home Assistant died or tried to pip-install a requirement."""
    ha.process.check_running()
    if attempts := ha.install_attempts():
        raise ServiceError(
            "Home Assistant tried to install requirements that scripts/homeassistant-build did "
            "not (add them there and rebuild):\n" + "\n".join(attempts[:10])
        )


def _wait_onboarding(ha: HomeAssistant, *, within: float) -> None:
    """Wait for the onboarding view (the port opens before every integration is set up)."""

    def probe() -> int:
        _check_alive(ha)
        status, reply = ha.request("GET", "/api/onboarding", timeout=5.0)
        if status >= 500:  # a broken install, not a slow start: say so now
            raise ServiceError(
                f"Home Assistant answers {status} {reply!r}; log:\n{ha.process.tail()}"
            )
        return status

    try:
        eventually(
            probe,
            lambda status: status == 200,
            what="Home Assistant's onboarding API",
            within=within,
            every=0.5,
            ignore=(OSError,),
        )
    except NotSeen as error:
        raise ServiceError(f"{error}; log:\n{ha.process.tail()}") from error


def _onboard(ha: HomeAssistant) -> None:
    """Owner account, its auth code exchanged for a token, then a long-lived token."""
    client_id = ha.url + CLIENT_ID_PATH
    password = secrets.token_urlsafe(16)
    status, reply = ha.request(
        "POST",
        "/api/onboarding/users",
        {
            "client_id": client_id,
            "name": "EdgeFleet test",
            "username": "edgefleet",
            "password": password,
            "language": "en",
        },
    )
    if status != 200 or "auth_code" not in reply:
        raise ServiceError(f"onboarding the owner failed: {status} {reply!r}")
    status, tokens = ha.request(
        "POST",
        "/auth/token",
        form={
            "grant_type": "authorization_code",
            "code": reply["auth_code"],
            "client_id": client_id,
        },
    )
    if status != 200 or "access_token" not in tokens:
        raise ServiceError(f"exchanging the auth code failed: {status} {tokens!r}")
    ha.token = tokens["access_token"]
    # The access token lives 30 min; a session fixture may outlive that.
    (long_lived,) = ha.websocket(
        {"type": "auth/long_lived_access_token", "client_name": "edgefleet-tests", "lifespan": 30}
    )
    ha.token = str(long_lived)


def configure_mqtt(
    ha: HomeAssistant,
    broker: Broker,
    *,
    username: str | None = None,
    password: str | None = None,
    within: float = START_TIMEOUT,
) -> dict[str, Any]:
    """Set up the MQTT integration through its config flow; wait until its entry is loaded."""
    status, flow = ha.request("POST", "/api/config/config_entries/flow", {"handler": "mqtt"})
    if status != 200 or flow.get("type") != "form":
        raise ServiceError(f"starting the MQTT config flow failed: {status} {flow!r}")
    answer: dict[str, Any] = {"broker": broker.host, "port": broker.port}
    if username is not None:
        answer["username"] = username
    if password is not None:
        answer["password"] = password
    status, done = ha.request("POST", f"/api/config/config_entries/flow/{flow['flow_id']}", answer)
    if status != 200 or done.get("type") != "create_entry":
        raise ServiceError(f"the MQTT config flow did not create an entry: {status} {done!r}")
    try:
        entries = eventually(
            lambda: ha.config_entries("mqtt"),
            lambda entries: bool(entries) and entries[0]["state"] == "loaded",
            what="Home Assistant's MQTT config entry loaded",
            within=within,
        )
    except NotSeen as error:
        raise ServiceError(f"{error}; log:\n{ha.process.tail()}") from error
    return entries[0]


def start(
    workdir: Path,
    broker: Broker,
    *,
    username: str | None = None,
    password: str | None = None,
    within: float = START_TIMEOUT,
) -> HomeAssistant:
    """Start Home Assistant in ``workdir``, onboard it and connect MQTT to ``broker``."""
    venv = ha_dir() / "venv"
    workdir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    (workdir / "configuration.yaml").write_text(CONFIGURATION.format(port=port))
    # Onboarding's other steps marked done up front: the owner step (over the API, below) is
    # then the last, and HA's frontend shows its pages, not the wizard. Doing them over the API
    # instead would set up the integrations they suggest, which need packages from the network.
    storage = workdir / ".storage"
    storage.mkdir(exist_ok=True)
    (storage / "onboarding").write_text(
        json.dumps(
            {
                "version": 4,
                "minor_version": 1,
                "key": "onboarding",
                "data": {"done": ["core_config", "analytics", "integration"]},
            }
        )
    )
    process = ManagedProcess(
        "hass",
        [str(venv / "bin" / "hass"), "-c", str(workdir), "--log-no-color"],
        log_path=workdir / "hass.log",
        # No index: a requirement we did not install fails instead of reaching the network.
        env={
            "PIP_NO_INDEX": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "PATH": f"{venv / 'bin'}:{os.environ['PATH']}",
        },
    )
    ha = HomeAssistant(
        url=f"http://127.0.0.1:{port}", config_dir=workdir, process=process, version=""
    )
    try:
        _wait_onboarding(ha, within=within)
        _onboard(ha)
        try:
            config = eventually(
                lambda: ha._ok("GET", "/api/config"),
                lambda config: config.get("state") == "RUNNING",
                what="Home Assistant's /api/config state RUNNING",
                within=within,
            )
        except NotSeen as error:
            raise ServiceError(f"{error}; log:\n{process.tail()}") from error
        ha.version = str(config["version"])
        configure_mqtt(ha, broker, username=username, password=password, within=within)
    except BaseException:
        process.stop()
        raise
    log.info("Home Assistant %s at %s", ha.version, ha.url)
    return ha
