"""The hub's works, applied by the cluster agent to its member cluster (issue 14).

* ``applier``: ``WorkApplier``, the interface the ``fleet`` stream drives, and its rules;
* ``apply``: one manifest with its update strategy (ServerSideApply, Update, CreateOnly,
  ReadOnly), hand edits put back, conflicts reported;
* ``kube``: the requests the applier makes and resource discovery (kind -> resource);
* ``manifests``: the parts of a Work document the applier acts on, checked;
* ``conditions``: per-manifest and per-work conditions;
* ``state``: works and what they applied, on disk;
* ``settings``: ``WorkSettings`` (``[cluster.works]``).

Status feedback and health come from ``fleet_model.feedback`` (pure). See docs/fleet/agent-works.md.
"""

from edge_agent.cluster.works.applier import StatusCallback, WorkApplier
from edge_agent.cluster.works.manifests import WorkError
from edge_agent.cluster.works.settings import (
    FIELD_MANAGER,
    WorkSettings,
    WorkSettingsError,
    work_settings,
)

__all__ = [
    "FIELD_MANAGER",
    "StatusCallback",
    "WorkApplier",
    "WorkError",
    "WorkSettings",
    "WorkSettingsError",
    "work_settings",
]
