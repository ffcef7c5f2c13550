"""The incremental server-sent-events parser (`adapters.sse`): however the bytes are split, the
same events; every line ending; comments, multi-line data, a split BOM; `close()`; the bound.

The streams are the examples of the WHATWG HTML standard, "Server-sent events", section
9.2.6 "Interpreting an event stream" (html.spec.whatwg.org/multipage/server-sent-events.html).
"""

from __future__ import annotations

import pytest

from llm_worker.adapters.sse import SSEError, SSEEvent, SSEParser

# The standard's examples, one after another, each block ended by a blank line (the standard's
# own last blocks rely on that: the end of the stream does not dispatch).
DOCUMENTED = (
    # "The following event stream ... will fire three events" style blocks:
    ": test stream\n"
    "\n"
    "data: first event\n"
    "id: 1\n"
    "\n"
    "data:second event\n"
    "id\n"
    "\n"
    "data:  third event\n"
    "\n"
    # "...the data: YHOO\n+2\n10 ..." (lines of one event joined with LF)
    "data: YHOO\n"
    "data: +2\n"
    "data: 10\n"
    "\n"
    # "...the first block fires events with the data set to the empty string..."
    "data\n"
    "\n"
    "data\n"
    "data\n"
    "\n"
    # "...two identical events: the space after the colon is ignored if present"
    "data:test\n"
    "\n"
    "data: test\n"
    "\n"
    # a named event (the `event` field), as in the standard's `addEventListener('add', ...)`
    "event: add\n"
    "data: 73857293\n"
    "\n"
)

EXPECTED = [
    SSEEvent("message", "first event", "1"),
    SSEEvent("message", "second event", ""),  # `id` with no value resets it to ""
    SSEEvent("message", " third event", ""),  # only one leading space is dropped
    SSEEvent("message", "YHOO\n+2\n10", ""),
    SSEEvent("message", "", ""),
    SSEEvent("message", "\n", ""),
    SSEEvent("message", "test", ""),
    SSEEvent("message", "test", ""),
    SSEEvent("add", "73857293", ""),
]

ENDINGS = {"LF": "\n", "CR": "\r", "CRLF": "\r\n"}


def encoded(ending: str) -> bytes:
    return DOCUMENTED.replace("\n", ending).encode()


def parse(*chunks: bytes) -> list[SSEEvent]:
    parser = SSEParser()
    events: list[SSEEvent] = []
    for chunk in chunks:
        events.extend(parser.feed(chunk))
    last = parser.close()
    if last is not None:
        events.append(last)
    return events


def test_the_documented_stream_gives_its_events_in_one_read() -> None:
    assert parse(encoded("\n")) == EXPECTED


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_split_point_gives_the_same_events(ending: str) -> None:
    stream = encoded(ENDINGS[ending])
    for at in range(len(stream) + 1):
        assert parse(stream[:at], stream[at:]) == EXPECTED, f"split at {at}"


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_every_two_split_points_give_the_same_events(ending: str) -> None:
    # the first three blocks (a comment, then two events): every pair of cuts in them
    stream = DOCUMENTED[: DOCUMENTED.index("data:  third")].replace("\n", ENDINGS[ending])
    raw = stream.encode()
    for a in range(len(raw) + 1):
        for b in range(a + 1, len(raw) + 1):  # an empty read: the test below
            assert parse(raw[:a], raw[a:b], raw[b:]) == EXPECTED[:2], f"split at {a}, {b}"


@pytest.mark.parametrize("ending", list(ENDINGS))
def test_one_byte_at_a_time_gives_the_same_events(ending: str) -> None:
    stream = encoded(ENDINGS[ending])
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == EXPECTED


def test_mixed_line_endings_in_one_stream() -> None:
    stream = b"data: a\r\ndata: b\rdata: c\n\r\ndata: d\r\r"
    assert parse(stream) == [SSEEvent("message", "a\nb\nc"), SSEEvent("message", "d")]


def test_a_cr_and_its_lf_split_across_reads_are_one_line_end() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    # the LF pairs with the CR before it: not a blank line, so no event yet
    assert parser.feed(b"\ndata: b\r") == []
    assert parser.feed(b"\n\r") == [SSEEvent("message", "a\nb")]
    assert parser.feed(b"\n") == []  # the pair of the blank line's CR: nothing more
    assert parser.close() is None


def test_a_cr_then_a_cr_across_reads_are_two_line_ends() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\r") == [SSEEvent("message", "a")]


def test_an_empty_read_between_cr_and_lf_changes_nothing() -> None:
    assert parse(b"data: a\r", b"", b"\ndata: b\n\n") == [SSEEvent("message", "a\nb")]


def test_comments_and_keep_alives_give_no_event() -> None:
    stream = b": keep-alive\n\n:\n\n: another\r\n\r\ndata: x\n: inside an event\ndata: y\n\n"
    assert parse(stream) == [SSEEvent("message", "x\ny")]


def test_an_event_without_data_is_not_dispatched() -> None:
    assert parse(b"event: ping\n\nid: 7\n\nretry: 10\n\n") == []


def test_unknown_fields_are_ignored_and_retry_is_kept() -> None:
    parser = SSEParser()
    assert parser.feed(b"foo: bar\nretry: 2500\nretry: soon\ndata: x\n\n") == [
        SSEEvent("message", "x")
    ]
    assert parser.retry_ms == 2500


def test_an_id_with_nul_is_ignored_and_the_last_id_carries_over() -> None:
    events = parse(b"id: 5\ndata: a\n\nid: 6\x00\ndata: b\n\n")
    assert events == [SSEEvent("message", "a", "5"), SSEEvent("message", "b", "5")]


def test_the_event_name_applies_to_one_event_only() -> None:
    events = parse(b"event: delta\ndata: a\n\ndata: b\n\n")
    assert events == [SSEEvent("delta", "a"), SSEEvent("message", "b")]


def test_multi_line_data_keeps_json_whole() -> None:
    events = parse(b'data: {"a":\ndata: 1}\n\n')
    assert events == [SSEEvent("message", '{"a":\n1}')]


@pytest.mark.parametrize("at", [0, 1, 2, 3, 4])
def test_a_bom_at_the_start_is_skipped_wherever_the_read_splits_it(at: int) -> None:
    stream = b"\xef\xbb\xbfdata: x\n\n"
    assert parse(stream[:at], stream[at:]) == [SSEEvent("message", "x")]
    assert parse(*(stream[i : i + 1] for i in range(len(stream)))) == [SSEEvent("message", "x")]


def test_a_bom_later_in_the_stream_is_not_skipped() -> None:
    # only the stream's first bytes may be a BOM: later, it is part of a field name
    assert parse(b"data: a\n\n\xef\xbb\xbfdata: b\n\n") == [SSEEvent("message", "a")]


def test_a_short_stream_that_only_looks_like_a_bom_start() -> None:
    assert parse(b"\xef", b"\xbbX\ndata: y\n\n") == [SSEEvent("message", "y")]
    assert parse(b"d", b"ata: z\n\n") == [SSEEvent("message", "z")]


def test_close_gives_the_event_left_open_at_the_end_of_the_stream() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: done\n\ndata: tail") == [SSEEvent("message", "done")]
    assert parser.close() == SSEEvent("message", "tail")
    parser = SSEParser()
    assert parser.feed(b"data: a\ndata: b\n") == []
    assert parser.close() == SSEEvent("message", "a\nb")


def test_close_after_a_whole_stream_or_a_comment_gives_nothing() -> None:
    parser = SSEParser()
    assert parser.feed(b"data: x\n\n") == [SSEEvent("message", "x")]
    assert parser.close() is None
    parser = SSEParser()
    assert parser.feed(b": only a comment") == []
    assert parser.close() is None
    assert SSEParser().close() is None


def test_a_line_over_the_bound_raises() -> None:
    parser = SSEParser(max_line=16)
    assert parser.feed(b"data: 0123456789") == []  # 16 bytes: at the bound, waiting
    with pytest.raises(SSEError, match="longer than 16 bytes"):
        parser.feed(b"X")


def test_the_bound_counts_only_the_unfinished_line() -> None:
    parser = SSEParser(max_line=16)
    # many short lines, each ended, in one read: far more than 16 bytes, no error
    assert parser.feed(b"data: 0123\n" * 10 + b"\n") == [
        SSEEvent("message", "\n".join(["0123"] * 10))
    ]
    with pytest.raises(SSEError):
        parser.feed(b"data: " + b"x" * 20)


def test_the_default_bound_is_large_enough_for_one_big_event() -> None:
    big = b"x" * (1024 * 1024)
    assert parse(b"data: " + big + b"\n\n") == [SSEEvent("message", big.decode())]


def test_invalid_utf8_is_replaced_not_raised() -> None:
    assert parse(b"data: caf\xc3\n\n") == [SSEEvent("message", "caf\ufffd")]


def test_a_multibyte_character_split_across_reads_is_whole() -> None:
    stream = "data: héllo ✓\n\n".encode()
    for at in range(len(stream) + 1):
        assert parse(stream[:at], stream[at:]) == [SSEEvent("message", "héllo ✓")]
