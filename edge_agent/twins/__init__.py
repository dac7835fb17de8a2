"""Device twins at the edge: onboarding over MQTT, the edge replica of every twin, the outbox.

Names say what each part is (docs/twins.md §1):

- `TwinMqttService` (mqtt_service.py), the MQTT device service, is what the daemon runs:
  construct it with `TwinMqttSettings` and a `Sender`, then ``await run()``. It owns the
  broker session, onboarding and the outbox, and takes changes from the cloud
  (`TwinMqttService.apply_cloud_change`).
- `EdgeTwinReplica` (replica.py) is the edge replica of every device twin: it applies device
  requests and cloud changes and commits them with the outbox records.
- `Sender` (outbox.py) is the one interface the tunnel implements: ``deliver(batch)``.
- simulator.py onboards and drives simulated devices (``edge-agent simulate``).

docs/mqtt.md describes the topics and payloads devices use.
"""

from typing import TYPE_CHECKING

from daemon_support.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the names' types, for mypy; at run time __getattr__ loads them
    from edge_agent.twins.mqtt_service import TwinMqttService, TwinMqttSettings
    from edge_agent.twins.outbox import Metrics, OutboxSettings, Sender
    from edge_agent.twins.payloads import Code
    from edge_agent.twins.replica import CloudChangeError, CloudChangeResult
    from edge_agent.twins.twin_store import Durability


_WHERE = {
    "TwinMqttService": "edge_agent.twins.mqtt_service",
    "TwinMqttSettings": "edge_agent.twins.mqtt_service",
    "Metrics": "edge_agent.twins.outbox",
    "OutboxSettings": "edge_agent.twins.outbox",
    "Sender": "edge_agent.twins.outbox",
    "Code": "edge_agent.twins.payloads",
    "CloudChangeError": "edge_agent.twins.replica",
    "CloudChangeResult": "edge_agent.twins.replica",
    "Durability": "edge_agent.twins.twin_store",
}
"""Each public name and the module that defines it: loaded on first use (issue 18)."""

__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "CloudChangeError",
    "CloudChangeResult",
    "Code",
    "Durability",
    "Metrics",
    "OutboxSettings",
    "Sender",
    "TwinMqttService",
    "TwinMqttSettings",
]
