"""Hypothesis strategies shared by the device_models tests."""

from __future__ import annotations

from hypothesis import strategies as st

from device_models import JsonObject, JsonValue

# A few keys only, so that random patches collide and conflicts actually happen.
KEYS = st.sampled_from(["a", "b", "c", "temp", "mode"])

present_scalars: st.SearchStrategy[JsonValue] = st.one_of(
    st.booleans(),
    st.integers(min_value=-(2**63), max_value=2**63 - 1),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
)
scalars: st.SearchStrategy[JsonValue] = st.one_of(st.none(), present_scalars)


def json_values(*, null_members: bool) -> st.SearchStrategy[JsonValue]:
    """JSON values; objects use the small key set. Null members only in patches."""
    leaves = scalars if null_members else present_scalars
    return st.recursive(
        leaves,
        lambda children: st.one_of(
            st.lists(children, max_size=3),
            st.dictionaries(KEYS, children, max_size=3),
        ),
        max_leaves=8,
    )


patches: st.SearchStrategy[JsonObject] = st.dictionaries(
    KEYS, json_values(null_members=True), max_size=4
)

# Anything a decoder or a careless caller could hand over, including non-JSON Python objects.
anything: st.SearchStrategy[object] = st.recursive(
    st.one_of(
        scalars,
        st.floats(),
        st.integers(),
        st.binary(max_size=5),
        st.text(),
        st.just(object()),
        st.just("\ud800"),  # a lone surrogate: a str that is not Unicode text
        st.tuples(st.integers()),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=8), st.integers(), KEYS), children, max_size=4),
    ),
    max_leaves=12,
)
