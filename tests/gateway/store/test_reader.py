"""RecordReader: chunked streams, torn tails, flipped bytes, garbage."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.gateway.store.reader import CorruptRegion, RecordReader
from ferry.gateway.store.records import SessionDeleted, encode_record
from tests.gateway.store.helpers import ONE_OF_EACH, records


def read_all(data: bytes, chunk: int | None = None) -> tuple[list, RecordReader]:
    reader = RecordReader()
    out = []
    step = chunk or max(len(data), 1)
    for start in range(0, len(data), step):
        reader.feed(data[start:start + step])
        out.extend(reader)
    reader.end()
    out.extend(reader)
    return out, reader


@settings(max_examples=300)
@given(st.lists(records, max_size=12), st.integers(1, 50))
def test_streams_round_trip_in_any_chunking(items: list, chunk: int) -> None:
    data = b"".join(map(encode_record, items))
    decoded, reader = read_all(data, chunk)
    assert decoded == items
    assert reader.records == len(items)
    assert reader.corrupt_regions == [] and reader.tail_bytes == 0
    assert reader.good_end == len(data)


@settings(max_examples=200)
@given(st.lists(records, min_size=3, max_size=8), st.data())
def test_one_damaged_byte_loses_exactly_that_record(items: list, data: st.DataObject) -> None:
    frames = [encode_record(r) for r in items]
    victim = data.draw(st.integers(0, len(items) - 2), label="victim")  # not the last one
    start = sum(map(len, frames[:victim]))
    at = start + data.draw(st.integers(0, len(frames[victim]) - 1), label="byte")
    flip = data.draw(st.integers(1, 255), label="xor")
    stream = bytearray(b"".join(frames))
    stream[at] ^= flip
    decoded, reader = read_all(bytes(stream), data.draw(st.sampled_from([None, 7])))
    assert decoded == items[:victim] + items[victim + 1:]
    assert reader.corrupt_regions == [CorruptRegion(start, len(frames[victim]))]
    assert reader.tail_bytes == 0


def test_truncated_stream_keeps_whole_records_and_reports_the_tail() -> None:
    frames = [encode_record(r) for r in ONE_OF_EACH]
    data = b"".join(frames)
    last_start = len(data) - len(frames[-1])
    for cut in range(last_start, len(data)):
        decoded, reader = read_all(data[:cut])
        assert decoded == ONE_OF_EACH[:-1]
        assert reader.tail_bytes == cut - last_start
        assert reader.corrupt_regions == []


def test_reader_waits_for_the_rest_of_a_frame_until_end() -> None:
    frame = encode_record(SessionDeleted("x"))
    reader = RecordReader()
    reader.feed(frame[:-1])
    assert list(reader) == []
    reader.feed(frame[-1:])
    assert list(reader) == [SessionDeleted("x")]
    reader.end()
    assert list(reader) == [] and reader.tail_bytes == 0


def test_garbage_between_frames_is_one_corrupt_region() -> None:
    a, b = encode_record(SessionDeleted("a")), encode_record(SessionDeleted("b"))
    junk = b"\x00\x00\x00\x05garbage\x03\xff" + bytes(100)
    decoded, reader = read_all(a + junk + b, 3)
    assert decoded == [SessionDeleted("a"), SessionDeleted("b")]
    assert reader.corrupt_regions == [CorruptRegion(len(a), len(junk))]


def test_zero_filled_tail_is_a_tail() -> None:
    a = encode_record(SessionDeleted("a"))
    decoded, reader = read_all(a + bytes(4096))
    assert decoded == [SessionDeleted("a")]
    assert reader.tail_bytes == 4096 and reader.corrupt_regions == []


def test_a_frame_with_a_good_crc_but_a_bad_body_is_skipped() -> None:
    body = b"\x03\x00\x05ab"  # SessionDeleted whose string runs past the body
    bad = struct.pack(">II", len(body), zlib.crc32(body)) + body
    good = encode_record(SessionDeleted("ok"))
    decoded, reader = read_all(bad + good)
    assert decoded == [SessionDeleted("ok")]
    assert reader.corrupt_regions == [CorruptRegion(0, len(bad))]


def test_feed_after_end_is_an_error() -> None:
    reader = RecordReader()
    reader.end()
    with pytest.raises(ValueError):
        reader.feed(b"x")
