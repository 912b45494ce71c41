"""The SSE parser: the spec's line ends, fields and comments, and output independent of chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from nexus.core.adapters.sse import ServerEvent, SSEError, SSEParser, canonical


def parse(*chunks: bytes, **kw: object) -> list[ServerEvent]:
    p = SSEParser(**kw)  # type: ignore[arg-type]
    out = [e for c in chunks for e in p.feed(c)]
    return out + p.flush()


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        pytest.param(b"data: a\n\ndata: b\n\n", [(b"a", "message"), (b"b", "message")], id="lf"),
        pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", [(b"a", "message"), (b"b", "message")], id="crlf"),
        pytest.param(b"data: a\r\rdata: b\r\r", [(b"a", "message"), (b"b", "message")], id="cr"),
        pytest.param(b"data: a\r\n\ndata: b\r\r\n", [(b"a", "message"), (b"b", "message")], id="mixed"),
        pytest.param(b"data: 1\ndata: 2\n\n", [(b"1\n2", "message")], id="multi-line-data"),
        pytest.param(b": ping\n\ndata: x\n: mid\n\n", [(b"x", "message")], id="comments"),
        pytest.param(b"event: delta\ndata: x\n\n", [(b"x", "delta")], id="event-name"),
        pytest.param(b"data:x\ndata:  y\n\n", [(b"x\n y", "message")], id="one-space-dropped"),
        pytest.param(b"data\n\n", [(b"", "message")], id="field-without-colon"),
        pytest.param(b"id: 7\nretry: 10\n\n", [], id="no-data-no-event"),
        pytest.param(b"\xef\xbb\xbfdata: x\n\n", [(b"x", "message")], id="bom"),
        pytest.param(b"data: x\n\n\n\ndata: y\n\n", [(b"x", "message"), (b"y", "message")], id="extra-blank-lines"),
        pytest.param(b"data: cut", [], id="unterminated-event-dropped"),
        pytest.param(b"data: x\n\r", [(b"x", "message")], id="final-cr-is-a-line-end"),
        pytest.param(b"<html><body>oops</body></html>\n\n", [], id="html-is-no-event"),
    ],
)
def test_events(stream: bytes, events: list[ServerEvent]) -> None:
    assert parse(stream) == events


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.sampled_from([b"data: ", b"data:", b"event: e\ndata: ", b": c\ndata: "]),
                  st.binary(max_size=8).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                  st.sampled_from([b"\n", b"\r\n", b"\r"])),
        max_size=6,
    ),
    st.lists(st.integers(0, 200), max_size=8),
)
def test_output_does_not_depend_on_chunking(events: list[tuple[bytes, bytes, bytes]], cuts: list[int]) -> None:
    stream = b"".join(field + value + nl + nl for field, value, nl in events)
    whole = parse(stream)
    points = sorted({min(c, len(stream)) for c in cuts})
    chunks = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    assert parse(*chunks) == whole
    # after a bare "data:" one leading space of the value is the separator the spec drops
    expect = [v[1:] if not f.endswith(b" ") and v[:1] == b" " else v for f, v, _ in events]
    assert [data for data, _ in whole] == expect


def test_a_line_past_the_bound_is_an_error() -> None:
    p = SSEParser(max_line=64)
    with pytest.raises(SSEError, match="exceeds 64 bytes"):
        for _ in range(10):
            p.feed(b"data: " + b"x" * 20)


@pytest.mark.parametrize(
    ("chunk", "expected"),
    [
        pytest.param(b"data: a\n\ndata: b\n\n", True, id="canonical"),
        pytest.param(b"data: a\r\n\r\n", False, id="crlf"),
        pytest.param(b"data: a\n\n\n\ndata: b\n\n", False, id="extra-blank-line"),
        pytest.param(b"data: a\ndata: b\n\n", False, id="multi-line"),
        pytest.param(b"data: a\n: c\n\n", False, id="comment"),
        pytest.param(b"data: a\n\ndata: b", False, id="unfinished"),
        pytest.param(b"event: x\ndata: a\n\n", False, id="event-field"),
    ],
)
def test_canonical_framing_is_recognised_exactly(chunk: bytes, expected: bool) -> None:
    assert canonical(chunk) is expected
    if expected:  # the fast path's claim: parsing gives the payloads, re-framing gives the same bytes
        assert b"".join(b"data: " + d + b"\n\n" for d, _ in parse(chunk)) == chunk
