"""The cloud's answer to a node's desired request (tunnel_server/twins/sync.py, rule 6).

A real CloudTwinReplica and store; the request is applied as an operator's PATCH is, audited,
and refused with the reason when the device is another node's, or the patch breaks the model.
"""

from __future__ import annotations

from pathlib import Path
from typing import cast

from device_models.sync_requests import DesiredAnswer, DesiredRequest
from tests.unit.twin_sync.edge_sim import NODE, EdgeSim, make_cloud
from tunnel_aio import TunnelStream
from tunnel_server.audit.log_store import AuditRecord
from tunnel_server.twins.sync import EdgeTwinLinks, _Link


class AuditList:
    def __init__(self) -> None:
        self.records: list[AuditRecord] = []

    def append(self, record: AuditRecord) -> int:
        self.records.append(record)
        return len(self.records)


def ask(link: _Link, device: str, patch: dict[str, object]) -> DesiredAnswer:
    request = DesiredRequest(id=1, device=device, patch=patch, source="home-assistant")
    return link._desired_request(request)


def test_requests_are_applied_audited_or_refused_with_the_reason(tmp_path: Path) -> None:
    cloud = make_cloud(tmp_path)
    edge, other = EdgeSim(), EdgeSim(node="node2")
    edge.onboard("r1", "relay-switch")
    other.onboard("r2", "relay-switch")
    cloud.apply_batch(node=edge.node, origin=edge.origin, records=edge.take())
    cloud.apply_batch(node=other.node, origin=other.origin, records=other.take())
    links = EdgeTwinLinks(cloud)
    audit = AuditList()
    links.audit = audit
    # No stream is used by a request's handling: it answers, the driver writes the answer.
    link = _Link(stream=cast("TunnelStream", None), node=NODE, cloud=cloud, links=links)

    answer = ask(link, "r1", {"on": True})
    assert answer == DesiredAnswer(id=1, accepted=True, version=1)
    row = cloud.device((NODE, "r1"))
    assert row is not None
    assert row.replica.twin.desired.values == {"on": True}
    assert cloud.store.downlink_count(NODE) == 1  # down the normal desired path
    [record] = audit.records
    assert (record.user, record.role, record.status) == (f"node:{NODE}", "home-assistant", 200)
    assert (record.action, record.target) == ("devices.twin.update", f"{NODE}:r1")

    refused = ask(link, "r1", {"switchCount": 3})
    assert not refused.accepted
    assert "switchCount" in refused.reason
    assert audit.records[-1].status == 400
    assert audit.records[-1].reason == "invalid_value"

    # Another node's device is not reachable by name: to this node it does not exist.
    foreign = ask(link, "r2", {"on": True})
    assert foreign == DesiredAnswer(id=1, accepted=False, reason="no such device on this node")
    row2 = cloud.device(("node2", "r2"))
    assert row2 is not None
    assert row2.replica.twin.desired.version == 0
    assert links.request_counters.accepted == 1
    assert links.request_counters.refused == 2
    link.close()
    cloud.store.close()
