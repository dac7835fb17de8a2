"""The linear-time regex engine: same answers as Python's re on its subset, bounded, fast."""

from __future__ import annotations

import re
import time

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from fleet_model.gateway.regex import (
    MAX_DFA_STATES,
    MAX_PATTERN_CHARS,
    MAX_TRANSITIONS,
    Regex,
    RegexError,
    compile_regex,
)

ATOMS = st.sampled_from(["a", "b", "/", ".", "[ab]", "[^a]", "[a-c/]", "\\d", "\\w", "\\.", "\\D"])
QUANTIFIERS = st.sampled_from(["", "", "*", "+", "?", "{2}", "{0,2}", "{1,}", "*?", "+?"])


def _pattern(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return (
        st.lists(children, min_size=1, max_size=3).map("".join)
        | st.lists(children, min_size=2, max_size=3).map("|".join)
        | st.tuples(st.sampled_from(["(", "(?:"]), children, QUANTIFIERS).map(
            lambda t: f"{t[0]}{t[1]}){t[2]}"
        )
    )


PATTERNS = st.recursive(st.tuples(ATOMS, QUANTIFIERS).map("".join), _pattern, max_leaves=8).filter(
    lambda p: len(p) <= MAX_PATTERN_CHARS
)
TEXTS = st.text(alphabet="ab/1.c\n_", max_size=6)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(PATTERNS, st.lists(TEXTS, min_size=1, max_size=8))
def test_the_engine_answers_as_pythons_re_fullmatch(pattern: str, texts: list[str]) -> None:
    regex: Regex | None = None
    refusal = ""
    try:
        regex = compile_regex(pattern)
    except RegexError as error:
        refusal = str(error)
    if regex is None:
        assert "too complex" in refusal  # the only refusal this grammar can meet
        return
    reference = re.compile(pattern)
    for text in texts:
        assert regex.fullmatch(text) == (reference.fullmatch(text) is not None), (pattern, text)


@pytest.mark.parametrize(
    ("pattern", "text", "hit"),
    [
        ("^/api/v[0-9]+$", "/api/v12", True),
        ("^/api/v[0-9]+$", "/api/v", False),
        ("a\\$", "a$", True),
        ("[\\]x]+", "]x]", True),
        ("[-a]+", "-a-", True),
        ("[a-]+", "-a-", True),
        ("\\t\\n\\r", "\t\n\r", True),
        ("a||b", "", True),
    ],
)
def test_examples(pattern: str, text: str, *, hit: bool) -> None:
    assert compile_regex(pattern).fullmatch(text) is hit


@pytest.mark.parametrize(
    "pattern",
    [
        "",
        "x" * (MAX_PATTERN_CHARS + 1),
        "a**",
        "a+*",
        "a{2}{3}",
        "*a",
        "a{",
        "a}",
        "a{33}",
        "a{3,2}",
        "a{x}",
        "(?=a)",
        "(?!a)",
        "(?<=a)b",
        "(?P<n>a)",
        "(?i)a",
        "\\1",
        "\\b",
        "\\A",
        "a^",
        "$a",
        "(a",
        "a)",
        "[]",
        "[a",
        "[z-a]",
        "[\\d-z]",
        "[[]",
        "[\\D]",
        "a\\",
        "(a{32}){32}",
        "(" * 40 + ")" * 40,
    ],
)
def test_refusals(pattern: str) -> None:
    if pattern == "":
        with pytest.raises(RegexError, match=r"1\.\."):
            compile_regex(pattern)
        return
    with pytest.raises(RegexError):
        compile_regex(pattern)


def test_not_a_string_is_refused() -> None:
    with pytest.raises(RegexError):
        compile_regex(42)


@pytest.mark.parametrize(
    ("pattern", "char"),
    [("(a+)+b", "a"), ("(a|a)*b", "a"), ("(a*)*b", "a"), ("(.*){20}x", "a"), ("(x+x+)+y", "x")],
)
def test_catastrophic_patterns_run_in_linear_time(pattern: str, char: str) -> None:
    """These take Python's re exponential time (or n^20); here one cached step per character.

    Linear by construction: after the first few characters every step is a cached DFA move,
    so the count of DFA states built stays tiny however long the input. (The time bound is
    only a guard against a hang; it is far above the milliseconds this takes, even on a busy
    CI machine.)
    """
    regex = compile_regex(pattern)
    started = time.perf_counter()
    assert not regex.fullmatch(char * 65536)
    assert len(regex._states) <= 64
    assert regex._transitions <= 64
    assert time.perf_counter() - started < 60.0


def test_the_dfa_cache_starts_over_when_full_and_answers_stay_right() -> None:
    """(a|b)*a(a|b){11}: a DFA of 2^12 states, more than the cache holds."""
    regex = compile_regex("(a|b)*a(a|b){11}")
    reference = re.compile("(a|b)*a(a|b){11}")
    resets = 0
    for n in range(0, 65536, 13):
        text = format(n, "016b").replace("0", "b").replace("1", "a")
        before = len(regex._states)
        assert regex.fullmatch(text) == (reference.fullmatch(text) is not None)
        resets += len(regex._states) < before
    assert resets > 0, "the cache filled up and started over at least once"
    assert len(regex._states) <= MAX_DFA_STATES


def test_many_distinct_characters_do_not_grow_the_cache_without_bound() -> None:
    regex = compile_regex(".*")
    text = "".join(chr(code) for code in range(0x100, 0x100 + 70_000) if chr(code) != "\n")
    assert regex.fullmatch(text)
    assert regex._transitions <= MAX_TRANSITIONS
