"""Settings of the cloud side of device twins. Every field gives its unit and its reason."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from daemon_support.twin_database import Durability


@dataclass(frozen=True, kw_only=True)
class CloudTwinsSettings:
    database: Path | None = None
    """The twins' SQLite file; None means ``<server data dir>/twins.sqlite3``. Its own file, so
    twin traffic (thousands of commits a minute) never contends with the node store's lock."""

    models_dir: Path | None = None
    """Folder of extra device models (``*.yaml``) beside the built-in ones; None means
    ``<server data dir>/models``. Agents with custom models need the same files here, or
    desired writes to those devices are refused (422) because they cannot be validated."""

    durability: Durability = Durability.FULL
    """``full``: an edge batch is acknowledged only once fsynced, because the agent deletes
    it from its outbox on that acknowledgement; a lost batch would be lost for good."""

    max_message_bytes: int = 4 * 1024 * 1024
    """Largest sync-stream message, in bytes. The agent's batches are at most 1 MiB plus one
    record (a record is at most ~200 KB: two 32 KB post-images with metadata, escaped)."""

    max_batch_records: int = 1024
    """Records per edge batch at most; the agent sends 256 by default."""

    max_depth: int = 24
    """JSON nesting depth of one sync message at most: a section (10 levels) and its
    metadata inside a change inside a record inside a batch."""

    downlink_window: int = 64
    """Cloud-to-edge changes in flight (sent, not yet acknowledged) per node at most, also
    capped by the window the agent announces: enough to hide a round trip, small enough
    that a reconnect resends little."""

    max_downlink_per_node: int = 10_000
    """Desired changes queued for one node at most while it is offline; beyond, a PATCH is
    answered 503 so an unreachable node cannot make the cloud's disk grow without end."""

    max_devices_per_node: int = 50_000
    """Devices one node may register at most (the agent serves 10,000 by default), so a
    misbehaving node cannot fill the cloud's store with device rows."""

    max_dead_letters: int = 10_000
    """Records kept in ``dead_letters`` (changes the cloud could not apply) at most; the
    oldest go first. They are for an operator's inspection, not for replay."""

    cache_devices: int = 20_000
    """Device rows (each with its twin replica, a few KB) kept in memory at most."""

    max_body_bytes: int = 128 * 1024
    """Largest REST request body, in bytes: a 32 KB desired patch, escaped, with room."""

    hello_timeout: float = 10.0
    """Seconds an agent has to send its hello after opening the sync stream."""

    max_wait: float = 30.0
    """Longest long-poll (``?wait=``) on ``GET .../twin``, in seconds: under common proxy and
    load-balancer idle timeouts (60 s)."""

    max_waiters: int = 1000
    """Long-polls waiting at once at most; more are answered 503."""

    page_limit: int = 1000
    """Most devices one ``GET /api/v1/devices`` page returns."""

    command_timeout: float = 15.0
    """Seconds a register, remove or revoke waits for the node's agent to answer: its broker
    admin round trip takes at most 10 s (the agent's ``admin_timeout``), plus the link."""
