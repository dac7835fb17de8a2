"""placement: spec parsing and rules (placeholder, replaced by its owner in issue 14)."""

from __future__ import annotations

from fleet_model.problems import SpecError

__all__ = ["parse_spec"]


def parse_spec(spec: object) -> object:
    if not isinstance(spec, dict):
        raise SpecError([("/spec", "must be an object")])
    return spec
