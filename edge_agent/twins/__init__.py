"""Device twins at the edge: onboarding over MQTT, the edge replica of every twin, the outbox.

- `TwinsService` (service.py) is what the daemon runs: construct it with `TwinsSettings` and a
  `Sender`, then ``await run()``. It also takes changes from the cloud
  (`TwinsService.apply_cloud_change`).
- `Sender` (outbox.py) is the one interface the tunnel implements: ``deliver(batch)``.
- simulator.py onboards and drives simulated devices (``edge-agent simulate``).

docs/mqtt.md describes the topics and payloads devices use.
"""

from edge_agent.twins.outbox import Metrics, OutboxSettings, Sender
from edge_agent.twins.payloads import Code
from edge_agent.twins.service import TwinsService, TwinsSettings
from edge_agent.twins.twin_service import CloudChangeError, CloudChangeResult
from edge_agent.twins.twin_store import Durability

__all__ = [
    "CloudChangeError",
    "CloudChangeResult",
    "Code",
    "Durability",
    "Metrics",
    "OutboxSettings",
    "Sender",
    "TwinsService",
    "TwinsSettings",
]
