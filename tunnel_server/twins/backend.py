"""`TwinBackend`: what the twins part needs of the store that keeps devices and twins.

``store.TwinStore`` (one SQLite file per server, the default and today's only implementation)
satisfies it; a store on the Kubernetes API for ``--store kubernetes`` is designed in
docs/ha.md, "Twins in the Kubernetes API", and is to implement the same calls, so that
``CloudTwinReplica`` (service.py), the sync stream (sync.py) and the REST API (api.py) run
unchanged on either. The contract, whatever the backend:

- ``commit(txn)`` is all or nothing for what it says durable: device rows, their queued
  downlink changes and the uplink marks of the batch that produced them. A backend without
  multi-object transactions keeps whatever must be atomic in one object (docs/ha.md).
- ``uplink_mark(origin)`` never goes back; a record at or below it was applied.
- ``downlink_after(node, after, limit)`` is the node's queued changes in the order they were
  queued; an id is never reused for the node.
- A write that cannot be made durable raises ``TwinStoreError`` (SQLite raises
  ``sqlite3.Error``): the sync stream answers ``batch-error`` and the agent retries.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from device_models import Replica
    from tunnel_server.twins.store import DeviceKey, DeviceRow, DownlinkRow, Transaction

__all__ = ["TwinBackend", "TwinStoreError"]


class TwinStoreError(RuntimeError):
    """A twin write could not be made durable (the store unreachable or refusing)."""


class TwinBackend(Protocol):
    """Devices, their twins, the uplink marks and the downlink queue of every node."""

    @property
    def origin(self) -> str:
        """The cloud's sync origin (``cloud.<boot id>``): one for every replica of the cloud."""
        ...

    def new_replica(self) -> Replica: ...

    def close(self) -> None: ...

    # reads

    def device(self, key: DeviceKey) -> DeviceRow | None: ...

    def find(self, device: str) -> list[DeviceKey]: ...

    def list_devices(
        self,
        *,
        node: str | None,
        after: DeviceKey | None,
        limit: int,
        model: str | None = None,
        state: str | None = None,
    ) -> list[dict[str, Any]]: ...

    def count_listed(
        self,
        *,
        node: str | None,
        after: DeviceKey | None,
        model: str | None = None,
        state: str | None = None,
    ) -> int: ...

    def pending_move(self, key: DeviceKey) -> str | None: ...

    def moved_from(self, key: DeviceKey) -> str | None: ...

    def count_devices(self, node: str) -> int: ...

    def uplink_mark(self, origin: str) -> int: ...

    def downlink_count(self, node: str, device: str | None = None) -> int: ...

    def downlink_after(self, node: str, after: int, limit: int) -> list[DownlinkRow]: ...

    def downlink_row(self, row_id: int) -> DownlinkRow | None: ...

    def dead_letters(
        self, *, node: str | None = None, limit: int = 100
    ) -> list[dict[str, Any]]: ...

    def dead_letter_count(self) -> int: ...

    # writes

    def begin(self) -> Transaction: ...

    def commit(self, txn: Transaction) -> list[int]: ...

    def forget_origins(self, node: str, *, keep: str) -> None: ...

    def remove_downlink(self, ids: list[int]) -> None: ...
