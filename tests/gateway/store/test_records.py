"""Record codec, batches and segment headers: golden vectors, round trips, refusals."""

from __future__ import annotations

import struct
import zlib

import pytest
from hypothesis import given, settings

from ferry.gateway.store import records as rec
from ferry.gateway.store.records import (
    FORMAT_VERSION,
    MessageAdded,
    SegmentHeader,
    SessionDeleted,
    decode_body,
    decode_segment_header,
    encode_batch,
    encode_record,
    encode_segment_header,
)
from tests.gateway.store.helpers import ONE_OF_EACH, SALT, read_segment, records, segment_bytes
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


@pytest.mark.parametrize("vector", VECTORS,
                         ids=[f"{i}-{v['type']}" for i, v in enumerate(VECTORS)])
def test_golden_vectors_encode_and_decode(vector: dict) -> None:
    record = vector_record(vector)
    assert encode_record(record).hex() == vector["hex"]
    decoded, reader = read_segment(segment_bytes([[record]]))
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
    assert read_segment(segment_bytes([[record]]))[0] == [record]


@settings(max_examples=500)
@given(records)
def test_any_record_round_trips(record: rec.Record) -> None:
    frame = encode_record(record)
    assert decode_body(frame[8], frame[9:]) == record
    assert encode_record(decode_body(frame[8], frame[9:])) == frame


def test_one_of_each_covers_every_type() -> None:
    assert {type(r) for r in ONE_OF_EACH} == set(rec._ENCODERS)


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


def test_segment_header_golden_vector() -> None:
    header = encode_segment_header(SALT)
    assert header.hex() == ("4645525259534547" "00000002" "000102030405060708090a0b0c0d0e0f"
                            "df0954ec")  # "FERRYSEG", format 2, salt, crc32
    assert struct.unpack(">I", header[28:]) == (zlib.crc32(header[:28]),)
    assert decode_segment_header(header + b"batches follow") == SegmentHeader(FORMAT_VERSION, SALT)


def test_batch_golden_vector() -> None:
    frame = encode_record(SessionDeleted("x"))
    batch = encode_batch(SALT, 7, 3, frame)
    assert batch.hex() == (
        "46424154" "000102030405060708090a0b0c0d0e0f"  # "FBAT", salt
        "0000000000000007" "0000000000000003" "000000000000000c"  # segment, sequence, length
        "1b10f54b" + frame.hex())
    assert struct.unpack(">I", batch[44:48]) == (zlib.crc32(batch[20:44] + frame),)


@pytest.mark.parametrize("damage", [
    lambda header: header[:-1],  # torn
    lambda header: b"FERRYSEX" + header[8:],  # another magic
    lambda header: header[:12] + bytes([header[12] ^ 1]) + header[13:],  # a salt bit
    lambda header: bytes(len(header)),  # zeros, as a power cut can leave
], ids=["torn", "magic", "salt-bit", "zeros"])
def test_a_damaged_segment_header_is_no_header(damage) -> None:
    assert decode_segment_header(damage(encode_segment_header(SALT))) is None


def test_a_segment_header_of_another_version_still_decodes() -> None:
    """So that the store can say which format it found instead of calling it damage."""
    head = b"FERRYSEG" + struct.pack(">I", 3) + SALT
    header = head + struct.pack(">I", zlib.crc32(head))
    assert decode_segment_header(header) == SegmentHeader(3, SALT)
