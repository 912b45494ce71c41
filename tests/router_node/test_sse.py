"""The SSE parser: the spec's line ends, fields and comments, and output independent of chunking."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from router_node.sse import ServerEvent, SSEError, SSEParser


def parse(*chunks: bytes, **kw: object) -> list[ServerEvent]:
    p = SSEParser(**kw)  # type: ignore[arg-type]
    out = [e for c in chunks for e in p.feed(c)]
    return out + p.flush()


@pytest.mark.parametrize(
    ("stream", "events"),
    [
        pytest.param(b"data: a\n\ndata: b\n\n", [ServerEvent(b"a"), ServerEvent(b"b")], id="lf"),
        pytest.param(b"data: a\r\n\r\ndata: b\r\n\r\n", [ServerEvent(b"a"), ServerEvent(b"b")], id="crlf"),
        pytest.param(b"data: a\r\rdata: b\r\r", [ServerEvent(b"a"), ServerEvent(b"b")], id="cr"),
        pytest.param(b"data: a\r\n\ndata: b\r\r\n", [ServerEvent(b"a"), ServerEvent(b"b")], id="mixed"),
        pytest.param(b"data: 1\ndata: 2\n\n", [ServerEvent(b"1\n2")], id="multi-line-data"),
        pytest.param(b": ping\n\ndata: x\n: mid\n\n", [ServerEvent(b"x")], id="comments"),
        pytest.param(b"event: delta\ndata: x\n\n", [ServerEvent(b"x", "delta")], id="event-name"),
        pytest.param(b"data:x\ndata:  y\n\n", [ServerEvent(b"x\n y")], id="one-space-dropped"),
        pytest.param(b"data\n\n", [ServerEvent(b"")], id="field-without-colon"),
        pytest.param(b"id: 7\nretry: 10\n\n", [], id="no-data-no-event"),
        pytest.param(b"\xef\xbb\xbfdata: x\n\n", [ServerEvent(b"x")], id="bom"),
        pytest.param(b"data: x\n\n\n\ndata: y\n\n", [ServerEvent(b"x"), ServerEvent(b"y")], id="extra-blank-lines"),
        pytest.param(b"data: cut", [], id="unterminated-event-dropped"),
        pytest.param(b"data: x\n\r", [ServerEvent(b"x")], id="final-cr-is-a-line-end"),
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
    assert [e.data for e in whole] == expect


def test_a_line_past_the_bound_is_an_error() -> None:
    p = SSEParser(max_line=64)
    with pytest.raises(SSEError, match="exceeds 64 bytes"):
        for _ in range(10):
            p.feed(b"data: " + b"x" * 20)
