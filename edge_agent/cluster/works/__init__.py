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

from typing import TYPE_CHECKING

from daemon_support.lazy_exports import lazy_exports

if TYPE_CHECKING:  # the names' types, for mypy; at run time __getattr__ loads them
    from edge_agent.cluster.works.applier import StatusCallback, WorkApplier
    from edge_agent.cluster.works.manifests import WorkError
    from edge_agent.cluster.works.settings import (
        FIELD_MANAGER,
        WorkSettings,
        WorkSettingsError,
        work_settings,
    )


_WHERE = {
    "StatusCallback": "edge_agent.cluster.works.applier",
    "WorkApplier": "edge_agent.cluster.works.applier",
    "WorkError": "edge_agent.cluster.works.manifests",
    "FIELD_MANAGER": "edge_agent.cluster.works.settings",
    "WorkSettings": "edge_agent.cluster.works.settings",
    "WorkSettingsError": "edge_agent.cluster.works.settings",
    "work_settings": "edge_agent.cluster.works.settings",
}
"""Each public name and the module that defines it: loaded on first use (issue 18)."""

__getattr__ = lazy_exports(__name__, _WHERE)


__all__ = [
    "FIELD_MANAGER",
    "StatusCallback",
    "WorkApplier",
    "WorkError",
    "WorkSettings",
    "WorkSettingsError",
    "work_settings",
]
