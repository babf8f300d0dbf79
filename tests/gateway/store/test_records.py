"""Record codec: golden vectors, round trips, and the reader's handling of damage."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gateway.store import records as rec
from gateway.store.records import (
    CorruptRegion,
    MessageAdded,
    RecordReader,
    SessionDeleted,
    decode_body,
    encode_record,
)
from tests.gateway.store.helpers import ONE_OF_EACH, records
from tests.vectors import load as load_vectors

VECTORS = load_vectors("store/records.json")["records"]
BYTES_FIELDS = {"payload", "properties"}


def vector_record(vector: dict) -> rec.Record:
    cls = getattr(rec, vector["type"])
    fields = {
        name: (bytes.fromhex(value) if name in BYTES_FIELDS
               else tuple(value) if isinstance(value, list) else value)
        for name, value in vector["fields"].items()
    }
    return cls(**fields)


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


@pytest.mark.parametrize("vector", VECTORS, ids=[f"{i}-{v['type']}" for i, v in enumerate(VECTORS)])
def test_golden_vectors_encode_and_decode(vector: dict) -> None:
    record = vector_record(vector)
    assert encode_record(record).hex() == vector["hex"]
    decoded, reader = read_all(bytes.fromhex(vector["hex"]))
    assert decoded == [record]
    assert reader.corrupt_regions == [] and reader.tail_bytes == 0


def test_vectors_cover_every_record_type() -> None:
    assert {v["type"] for v in VECTORS} == {cls.__name__ for cls in rec._ENCODERS}


@pytest.mark.parametrize("record", ONE_OF_EACH, ids=lambda r: type(r).__name__)
def test_every_record_type_round_trips(record: rec.Record) -> None:
    frame = encode_record(record)
    length, crc, rtype = struct.unpack_from(">IIB", frame)
    assert length == len(frame) - 8
    assert crc == zlib.crc32(frame[8:])
    assert rtype == type(record).record_type
    assert decode_body(rtype, frame[9:]) == record
    assert read_all(frame)[0] == [record]


def test_one_of_each_covers_every_type() -> None:
    assert {type(r) for r in ONE_OF_EACH} == set(rec._ENCODERS)


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


@pytest.mark.parametrize("bad", [
    SessionDeleted("x" * 65536),
    SessionDeleted("\ud800"),
    MessageAdded(-1, "t", b"", 1, False, b"", None, "o"),
    MessageAdded(1, "t", b"", 256, False, b"", None, "o"),
    rec.InflightAssigned("c", 1, 65536),
    rec.Enqueued("c", 1, 1, (2**32,)),
])
def test_unencodable_records_raise_value_error(bad: rec.Record) -> None:
    with pytest.raises(ValueError):
        encode_record(bad)


def test_non_records_raise_type_error() -> None:
    with pytest.raises(TypeError):
        encode_record("not a record")  # type: ignore[arg-type]


def test_decode_body_rejects_unknown_types_and_bad_bodies() -> None:
    with pytest.raises(ValueError):
        decode_body(99, b"")
    with pytest.raises(ValueError):
        decode_body(3, b"\x00\x05ab")
    with pytest.raises(ValueError):  # too short
        decode_body(15, b"\x00" * 7)
    with pytest.raises(ValueError):  # a presence flag other than 0/1
        decode_body(4, b"\x00\x01c\x00\x01#" + bytes([1, 0, 0, 0, 2]) + bytes(4))
