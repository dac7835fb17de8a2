"""Node names of a kwok pool: valid hostnames, per pool, whatever the pool's name."""

from __future__ import annotations

import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.elastic.providers import name_prefix, node_name

DNS_LABEL = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?")
pool_names = st.from_regex(r"[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?", fullmatch=True)
indices = st.integers(min_value=1, max_value=999_999)


@given(pool_names, indices)
def test_a_node_name_is_a_hostname_label_of_its_pool(pool: str, index: int) -> None:
    name = node_name(pool, index)
    assert len(name) <= 63  # the kubernetes.io/hostname label value
    assert DNS_LABEL.fullmatch(name)
    assert name == f"{name_prefix(pool)}-{index}"
    assert node_name(pool, index) == name  # deterministic


@given(pool_names, pool_names)
def test_different_pools_have_different_prefixes(first: str, second: str) -> None:
    if first != second:
        assert name_prefix(first) != name_prefix(second)


def test_short_names_are_kept_and_long_ones_hashed() -> None:
    assert node_name("gpu", 7) == "gpu-7"
    long_a, long_b = "a" * 62 + "x", "a" * 62 + "y"
    assert name_prefix(long_a) != name_prefix(long_b)
    assert name_prefix(long_a).startswith("a" * 49 + "-")
    assert len(node_name(long_a, 999_999)) == 63


@pytest.mark.parametrize("index", [0, -1, 1_000_000])
def test_an_index_out_of_range_is_refused(index: int) -> None:
    with pytest.raises(ValueError, match=re.escape("out of 1..999999")):
        node_name("gpu", index)


def test_a_hashed_head_is_never_a_short_pools_name() -> None:
    hashed = name_prefix("b" * 60)
    assert len(hashed) == 56
    assert name_prefix(hashed) != hashed  # a pool named like it is hashed in turn
