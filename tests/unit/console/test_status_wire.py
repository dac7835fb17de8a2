"""The status wire format: the agent's encoder and the server's parser agree.

Bad input is refused with a ReportError, never another exception.
"""

from __future__ import annotations

import contextlib
import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from edge_agent.node_status import ReportEncoder, Scalar, diff
from tunnel_server.status.history import StatusHistory, StatusSettings
from tunnel_server.status.service import ReportError, parse_report

keys = st.from_regex(r"[a-z0-9_.-]{1,20}", fullmatch=True)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=50),
)
samples: st.SearchStrategy[dict[str, Scalar]] = st.dictionaries(keys, scalars, max_size=30)


def test_first_report_is_full_then_deltas_then_full_again() -> None:
    encoder = ReportEncoder(interval=10, full_every=300)
    first = parse_report(encoder.encode({"a": 1, "b": "x"}, now=0).rstrip(b"\n"))
    second = parse_report(encoder.encode({"a": 2, "b": "x"}, now=10).rstrip(b"\n"))
    third = parse_report(encoder.encode({"a": 2}, now=20).rstrip(b"\n"))
    again = parse_report(encoder.encode({"a": 2}, now=300).rstrip(b"\n"))
    assert (first.kind, first.metrics) == ("full", {"a": 1, "b": "x"})
    assert (second.kind, second.metrics) == ("delta", {"a": 2})
    assert (third.kind, third.metrics, third.removed) == ("delta", {}, ["b"])
    assert again.kind == "full"
    assert [first.seq, second.seq, third.seq, again.seq] == [1, 2, 3, 4]
    assert second.interval == 10


@settings(max_examples=25, deadline=None)
@given(st.lists(samples, min_size=1, max_size=6))
def test_server_state_equals_the_last_sample(
    tmp_path_factory: pytest.TempPathFactory, sequence: list[dict[str, Scalar]]
) -> None:
    history = StatusHistory.open(tmp_path_factory.mktemp("h"), settings=StatusSettings(), now=0.0)
    encoder = ReportEncoder(interval=10, full_every=1000)
    for step, metrics in enumerate(sequence):
        report = parse_report(encoder.encode(dict(metrics), now=step * 10).rstrip(b"\n"))
        history.report(
            "n", kind=report.kind, metrics=report.metrics, removed=report.removed, now=step
        )
    live = history.live("n")
    assert live is not None
    assert live.metrics == sequence[-1]


@settings(max_examples=40)
@given(samples, samples)
def test_diff_applied_gives_the_new_sample(old: dict[str, Scalar], new: dict[str, Scalar]) -> None:
    changed, removed = diff(old, new)
    merged = {k: v for k, v in old.items() if k not in removed}
    merged.update(changed)
    assert merged == new


@pytest.mark.parametrize(
    ("line", "complaint"),
    [
        (b"not json", "not valid JSON"),
        (b"[]", "JSON object"),
        (b'{"v": 2, "type": "full"}', "version"),
        (b'{"v": 1, "type": "half"}', "'type'"),
        (b'{"v": 1, "type": "full", "seq": -1}', "'seq'"),
        (b'{"v": 1, "type": "full", "interval": 0}', "'interval'"),
        (b'{"v": 1, "type": "full", "metrics": {"BAD KEY": 1}}', "metric key"),
        (b'{"v": 1, "type": "full", "metrics": {"a": [1]}}', "string, number"),
        (b'{"v": 1, "type": "full", "metrics": {"a": "' + b"x" * 300 + b'"}}', "longer"),
        (b'{"v": 1, "type": "full", "metrics": {"a": 1e999}}', "finite"),
        (b'{"v": 1, "type": "delta", "removed": ["OK?"]}', "'removed'"),
        (b"[" * 100_000, "not valid JSON"),
    ],
)
def test_bad_lines_are_refused_with_a_reason(line: bytes, complaint: str) -> None:
    with pytest.raises(ReportError, match=complaint):
        parse_report(line)


def test_too_many_keys() -> None:
    line = json.dumps({"v": 1, "type": "full", "metrics": {f"k{i}": i for i in range(600)}})
    with pytest.raises(ReportError, match="more than 512"):
        parse_report(line.encode())


@given(st.binary(max_size=300))
def test_fuzz_bytes_never_crash_the_parser(data: bytes) -> None:
    with contextlib.suppress(ReportError):
        parse_report(data)


@settings(max_examples=40)
@given(st.recursive(scalars, lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner)))
def test_fuzz_json_never_crashes_the_parser(value: object) -> None:
    with contextlib.suppress(ReportError):
        parse_report(json.dumps({"v": 1, "type": "full", "metrics": value}).encode())
