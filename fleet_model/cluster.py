"""ManagedCluster and ManagedClusterSet: spec parsing and the health rules (placeholder).

Owned by the model-placement helper of issue 14, who replaces this placeholder.
"""

from __future__ import annotations

from fleet_model.problems import SpecError

__all__ = ["parse_set_spec", "parse_spec"]


def parse_spec(spec: object) -> object:
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    return spec


def parse_set_spec(spec: object) -> object:
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    return spec
