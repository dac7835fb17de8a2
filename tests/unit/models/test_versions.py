"""Model versions only go forward: the order they are compared in, and ``ModelRegistry.offer``."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from device_models import DeviceModel, ModelRegistry, builtin_model, is_newer, version_key

NUMBER = st.integers(min_value=0, max_value=999)
PRE = st.lists(NUMBER.map(str) | st.sampled_from(["a", "rc", "beta"]), min_size=1, max_size=2)
VERSIONS = st.builds(
    lambda parts, pre: ".".join(map(str, parts)) + (f"-{'.'.join(pre)}" if pre else ""),
    st.lists(NUMBER, min_size=1, max_size=3),
    st.none() | PRE,
)


@pytest.mark.parametrize(
    ("older", "newer"),
    [
        ("1", "2"),
        ("1.9", "1.10"),
        ("1.2.3", "1.2.4"),
        ("1.0.0-rc.1", "1.0.0"),
        ("1.0.0-rc.1", "1.0.0-rc.2"),
        ("1.0.0-rc.2", "1.0.0-rc.10"),
        ("1.0.0-1", "1.0.0-alpha"),
        ("0.9.9", "1"),
    ],
)
def test_versions_compare_numerically_and_prereleases_come_first(older: str, newer: str) -> None:
    assert is_newer(newer, older)
    assert not is_newer(older, newer)


@pytest.mark.parametrize(("a", "b"), [("1", "1.0.0"), ("1.2", "1.2.0"), ("1.0.0+a", "1.0.0+b")])
def test_equal_versions_are_not_newer(a: str, b: str) -> None:
    assert not is_newer(a, b)
    assert not is_newer(b, a)


@given(VERSIONS, VERSIONS, VERSIONS)
def test_the_order_is_total_and_transitive(a: str, b: str, c: str) -> None:
    ka, kb, kc = version_key(a), version_key(b), version_key(c)
    assert (ka < kb) + (ka == kb) + (ka > kb) == 1
    if ka <= kb <= kc:
        assert ka <= kc


@pytest.mark.parametrize("bad", ["", "v1", "1.2.3.4", "1.", "x" * 40, "1-"])
def test_a_non_version_is_a_value_error(bad: str) -> None:
    with pytest.raises(ValueError, match="not a model version"):
        version_key(bad)


def _thermostat(version: str) -> DeviceModel:
    data = builtin_model("thermostat").to_dict()
    return DeviceModel.from_dict({**data, "version": version})


def test_offer_takes_only_a_higher_version_even_over_a_builtin() -> None:
    registry = ModelRegistry({"thermostat": builtin_model("thermostat")})  # 1.0.0
    assert not registry.offer(_thermostat("1.0.0"))
    assert not registry.offer(_thermostat("0.9"))
    assert registry.offer(_thermostat("1.1.0"))
    held = registry.get("thermostat")
    assert held is not None
    assert held.version == "1.1.0"
    assert not registry.offer(_thermostat("1.1.0-rc.1"))
