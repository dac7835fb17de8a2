"""Kubernetes quantities: ``parse_quantity`` follows ``resource.ParseQuantity``'s grammar.

The expected values are computed apart, with ``Fraction``, from the parts hypothesis draws.
"""

from __future__ import annotations

from decimal import Decimal
from fractions import Fraction

import pytest
from hypothesis import given
from hypothesis import strategies as st

from edge_agent.cluster.status import QuantityError, cores, parse_quantity, whole_bytes

BINARY = {"Ki": 1024, "Mi": 1024**2, "Gi": 1024**3, "Ti": 1024**4, "Pi": 1024**5, "Ei": 1024**6}
DECIMAL_SI = {
    "n": Fraction(1, 10**9),
    "u": Fraction(1, 10**6),
    "m": Fraction(1, 1000),
    "": Fraction(1),
    "k": Fraction(10**3),
    "M": Fraction(10**6),
    "G": Fraction(10**9),
    "T": Fraction(10**12),
    "P": Fraction(10**15),
    "E": Fraction(10**18),
}


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("100m", Fraction(1, 10)),
        ("1", Fraction(1)),
        ("0.5", Fraction(1, 2)),
        (".5", Fraction(1, 2)),
        ("5.", Fraction(5)),
        ("+2", Fraction(2)),
        ("-250m", Fraction(-1, 4)),
        ("1Ki", Fraction(1024)),
        ("1.5Gi", Fraction(3 * 1024**3, 2)),
        ("129M", Fraction(129 * 10**6)),
        ("1e3", Fraction(1000)),
        ("1E3", Fraction(1000)),
        ("12e-3", Fraction(12, 1000)),
        ("1E", Fraction(10**18)),  # exa, not an exponent without digits
        ("5n", Fraction(5, 10**9)),
        ("7u", Fraction(7, 10**6)),
        ("0", Fraction(0)),
    ],
)
def test_known_quantities(text: str, value: Fraction) -> None:
    assert Fraction(parse_quantity(text)) == value


@pytest.mark.parametrize(
    "text",
    ["", "Mi", "1e", "1 Gi", "1gi", "1KI", "1.2.3", "--1", "1Mi ", "0x10", "1e3.5", "1Qi", "."],
)
def test_not_quantities(text: str) -> None:
    with pytest.raises(QuantityError):
        parse_quantity(text)


def test_exponent_beyond_int32_is_refused_like_kubernetes() -> None:
    with pytest.raises(QuantityError):
        parse_quantity(f"1e{2**31}")
    assert parse_quantity(f"1e{2**31 - 1}") > 0  # huge, but exact and no trap


def test_conversions_round_up_and_saturate_like_kubernetes() -> None:
    assert cores(parse_quantity("1n")) == 0.001  # MilliValue rounds up
    assert cores(parse_quantity("1500m")) == 1.5
    assert whole_bytes(parse_quantity("1.5")) == 2  # Value rounds up
    assert whole_bytes(parse_quantity("1e100")) == 2**63 - 1  # saturates at int64


digits = st.text(alphabet="0123456789", min_size=1, max_size=15)


@st.composite
def quantities(draw: st.DrawFn) -> tuple[str, Fraction]:
    sign = draw(st.sampled_from(["", "+", "-"]))
    whole = draw(st.one_of(st.just(""), digits))
    fraction = draw(st.one_of(st.none(), st.text(alphabet="0123456789", max_size=9)))
    if not whole and not fraction:
        whole = "0"
    number = whole + ("" if fraction is None else "." + fraction)
    value = Fraction(int(whole or "0")) + (
        Fraction(int(fraction), 10 ** len(fraction)) if fraction else 0
    )
    kind = draw(st.sampled_from(["binary", "decimal", "exponent"]))
    if kind == "binary":
        suffix = draw(st.sampled_from(sorted(BINARY)))
        value *= BINARY[suffix]
    elif kind == "decimal":
        suffix = draw(st.sampled_from(sorted(DECIMAL_SI)))
        value *= DECIMAL_SI[suffix]
    else:
        exponent = draw(st.integers(-30, 30))
        letter = draw(st.sampled_from("eE"))
        shown = draw(st.sampled_from(["", "+"])) if exponent >= 0 else ""
        suffix = f"{letter}{shown}{exponent}"
        value *= Fraction(10) ** exponent
    return sign + number + suffix, -value if sign == "-" else value


@given(quantities())
def test_every_quantity_of_the_grammar_parses_exactly(case: tuple[str, Fraction]) -> None:
    text, value = case
    assert Fraction(parse_quantity(text)) == value


@given(st.text(max_size=80))
def test_any_text_is_a_quantity_or_a_quantity_error(text: str) -> None:
    try:
        value = parse_quantity(text)
    except QuantityError:
        return
    assert isinstance(value, Decimal)
    assert value.is_finite()


@given(st.decimals(min_value=0, max_value=10**12, places=3, allow_nan=False))
def test_cores_of_millicores_are_exact(value: Decimal) -> None:
    assert cores(parse_quantity(str(value))) == float(value)
