"""Backend choice: exact smooth weighted round robin, failover, slow start, affinity, mirrors."""

from __future__ import annotations

import math
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_model.gateway.balancer import Balancer, BalancerSettings, Mirror, rendezvous

FAST = settings(max_examples=100, deadline=None, suppress_health_check=[HealthCheck.too_slow])
WARM = -math.inf
NO_SLOW_START = BalancerSettings(slow_start_seconds=0)


def picks(
    balancer: Balancer, count: int, available: dict[str, float], now: float = 0.0
) -> list[str]:
    out = []
    for _ in range(count):
        chosen = balancer.pick(now=now, available=available)
        assert chosen is not None
        out.append(chosen)
    return out


def test_ninety_ten_is_exact_over_a_thousand_picks() -> None:
    balancer = Balancer({"a": 90, "b": 10})
    counts = Counter(picks(balancer, 1000, {"a": WARM, "b": WARM}))
    assert counts == {"a": 900, "b": 100}


def test_smooth_round_robin_interleaves() -> None:
    """The example of nginx: weights 5, 1, 1 give a a b a c a a, not a a a a a b c."""
    balancer = Balancer({"a": 5, "b": 1, "c": 1})
    assert picks(balancer, 7, {"a": WARM, "b": WARM, "c": WARM}) == list("aabacaa")


@FAST
@given(st.lists(st.integers(0, 1000), min_size=1, max_size=8), st.integers(1, 3))
def test_every_cycle_of_total_picks_is_exact(weights: list[int], cycles: int) -> None:
    mapping = {f"b{i}": w for i, w in enumerate(weights)}
    total = sum(weights)
    balancer = Balancer(mapping)
    available = dict.fromkeys(mapping, WARM)
    if total == 0:
        assert balancer.pick(now=0.0, available=available) is None
        return
    counts = Counter(picks(balancer, total * cycles, available))
    assert counts == {key: w * cycles for key, w in mapping.items() if w > 0}


@FAST
@given(
    st.lists(st.integers(1, 100), min_size=2, max_size=6),
    st.lists(st.sets(st.integers(0, 5)), min_size=1, max_size=20),
)
def test_an_unavailable_backend_is_never_picked(weights: list[int], downs: list[set[int]]) -> None:
    keys = [f"b{i}" for i in range(len(weights))]
    balancer = Balancer(dict(zip(keys, weights, strict=True)))
    for now, down in enumerate(downs):
        available = {key: WARM for i, key in enumerate(keys) if i not in down}
        for _ in range(5):
            chosen = balancer.pick(now=float(now), available=available)
            if available:
                assert chosen in available
            else:
                assert chosen is None


def test_weight_moves_to_the_healthy_backends_at_once_and_back() -> None:
    balancer = Balancer({"a": 90, "b": 10}, settings=NO_SLOW_START)
    both = {"a": WARM, "b": WARM}
    picks(balancer, 37, both)  # anywhere in a cycle
    assert Counter(picks(balancer, 100, {"b": WARM})) == {"b": 100}
    counts = Counter(picks(balancer, 1000, {"a": 5.0, "b": WARM}, now=6.0))
    assert abs(counts["a"] - 900) <= 1


def test_zero_weight_and_excluded_backends_get_nothing() -> None:
    balancer = Balancer({"a": 1, "b": 0, "c": 1})
    available = dict.fromkeys("abc", WARM)
    for _ in range(10):
        assert balancer.pick(now=0.0, available=available, exclude={"a"}) == "c"
    assert balancer.pick(now=0.0, available=available, exclude={"a", "c"}) is None


def test_slow_start_ramps_in_steps_and_says_when_the_next_one_begins() -> None:
    balancer = Balancer(
        {"a": 100, "b": 100}, settings=BalancerSettings(slow_start_seconds=10, slow_start_steps=10)
    )
    available = {"a": WARM, "b": 100.0}
    assert balancer.effective_weights(now=100.0, available=available) == {"a": 100, "b": 10}
    assert balancer.next_change(now=100.0, available=available) == pytest.approx(101.0)
    assert balancer.effective_weights(now=104.5, available=available)["b"] == 50
    assert balancer.next_change(now=104.5, available=available) == pytest.approx(105.0)
    assert balancer.effective_weights(now=110.0, available=available)["b"] == 100
    assert balancer.next_change(now=110.0, available=available) is None
    counts = Counter(picks(balancer, 110, available, now=100.0))
    assert counts == {"a": 100, "b": 10}


def test_slow_start_keeps_a_tiny_weight_at_least_one() -> None:
    balancer = Balancer({"a": 3}, settings=BalancerSettings(slow_start_seconds=60))
    assert balancer.effective_weights(now=0.0, available={"a": 0.0}) == {"a": 1}


def test_affinity_is_stable_and_leaves_the_round_robin_alone() -> None:
    balancer = Balancer({"a": 1, "b": 1, "c": 1})
    available = dict.fromkeys("abc", WARM)
    first = {
        f"user-{i}": balancer.pick(now=0.0, available=available, affinity_key=f"user-{i}")
        for i in range(300)
    }
    assert set(first.values()) == {"a", "b", "c"}
    for key, chosen in first.items():
        assert balancer.pick(now=1.0, available=available, affinity_key=key) == chosen
    assert picks(balancer, 3, available) == ["a", "b", "c"]


@FAST
@given(
    st.dictionaries(st.sampled_from("abcdef"), st.integers(1, 100), min_size=2),
    st.lists(st.text(max_size=12), min_size=1, max_size=50),
    st.data(),
)
def test_affinity_moves_only_the_keys_of_the_backend_that_left(
    weights: dict[str, int], keys: list[str], data: st.DataObject
) -> None:
    gone = data.draw(st.sampled_from(sorted(weights)))
    rest = {k: w for k, w in weights.items() if k != gone}
    for key in keys:
        before = rendezvous(key, weights)
        after = rendezvous(key, rest)
        assert after in rest
        if before != gone:
            assert after == before


@FAST
@given(
    st.dictionaries(st.sampled_from("abcd"), st.integers(1, 100), min_size=2),
    st.lists(st.text(max_size=12), min_size=1, max_size=50),
    st.data(),
)
def test_affinity_weight_change_moves_keys_only_to_or_from_that_backend(
    weights: dict[str, int], keys: list[str], data: st.DataObject
) -> None:
    changed = data.draw(st.sampled_from(sorted(weights)))
    other = {**weights, changed: data.draw(st.integers(1, 100))}
    for key in keys:
        before, after = rendezvous(key, weights), rendezvous(key, other)
        if before != after:
            assert changed in (before, after)


def test_affinity_follows_the_weights_roughly() -> None:
    counts = Counter(rendezvous(f"k{i}", {"a": 90, "b": 10}) for i in range(5000))
    assert 0.87 < counts["a"] / 5000 < 0.93


@pytest.mark.parametrize("percent", [0, 1, 5, 33, 50, 99, 100])
def test_mirror_share_is_exact_over_every_hundred(percent: int) -> None:
    mirror = Mirror(percent)
    taken = [mirror.take() for _ in range(1000)]
    assert sum(taken) == 10 * percent
    for start in range(0, 1000, 100):
        assert sum(taken[start : start + 100]) == percent


def test_mirror_refuses_a_bad_share() -> None:
    with pytest.raises(ValueError, match="percent"):
        Mirror(101)


def test_a_retry_exclusion_does_not_disturb_the_round_robin() -> None:
    """A retry's pick among the rest leaves the excluded backend's place in the cycle alone."""
    available = {"a": WARM, "b": WARM}
    plain, retried = Balancer({"a": 90, "b": 10}), Balancer({"a": 90, "b": 10})
    for _ in range(7):  # a's current is not 0 here
        plain.pick(now=0.0, available=available)
        retried.pick(now=0.0, available=available)
    assert retried.pick(now=0.0, available=available, exclude={"a"}) == "b"
    assert picks(retried, 200, available) == picks(plain, 200, available)
