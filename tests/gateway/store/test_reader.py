"""RecordReader: batches, torn tails, flipped bytes, garbage, bytes that only look like records."""

from __future__ import annotations

import struct
import zlib

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.gateway.store.reader import CorruptRegion
from ferry.gateway.store.records import (
    MessageAdded,
    SessionDeleted,
    SubscriptionAdded,
    encode_batch,
    encode_record,
    encode_segment_header,
)
from tests.gateway.store.helpers import (
    ONE_OF_EACH,
    SALT,
    batch_bytes,
    read_segment,
    records,
    segment_bytes,
)

HEADER = len(encode_segment_header(SALT))
batch_lists = st.lists(st.lists(records, min_size=1, max_size=5), max_size=6)


def flat(batches: list[list]) -> list:
    return [record for batch in batches for record in batch]


def deleted(*client_ids: str) -> list[SessionDeleted]:
    return [SessionDeleted(client_id) for client_id in client_ids]


@settings(max_examples=300)
@given(batch_lists)
def test_segments_round_trip(batches: list[list]) -> None:
    data = segment_bytes(batches)
    decoded, reader = read_segment(data)
    assert decoded == flat(batches)
    assert (reader.batches, reader.records) == (len(batches), len(decoded))
    assert reader.corrupt_regions == [] and reader.tail_bytes == 0
    assert reader.good_end == len(data)


@settings(max_examples=300)
@given(st.lists(st.lists(records, min_size=1, max_size=4), min_size=3, max_size=6), st.data())
def test_one_damaged_byte_loses_exactly_that_batch(batches: list[list],
                                                   data: st.DataObject) -> None:
    framed = [batch_bytes(batch, sequence) for sequence, batch in enumerate(batches, 1)]
    victim = data.draw(st.integers(0, len(batches) - 2), label="victim")  # not the last one
    start = HEADER + sum(map(len, framed[:victim]))
    at = start + data.draw(st.integers(0, len(framed[victim]) - 1), label="byte")
    stream = bytearray(encode_segment_header(SALT) + b"".join(framed))
    stream[at] ^= data.draw(st.integers(1, 255), label="xor")
    decoded, reader = read_segment(bytes(stream))
    assert decoded == flat(batches[:victim] + batches[victim + 1:])
    assert reader.corrupt_regions == [CorruptRegion(start, len(framed[victim]))]
    assert reader.tail_bytes == 0


def test_a_torn_last_batch_is_the_tail_at_every_offset() -> None:
    batches = [ONE_OF_EACH[:6], ONE_OF_EACH[6:12], ONE_OF_EACH[12:]]
    data = segment_bytes(batches)
    last_start = len(segment_bytes(batches[:-1]))
    for cut in range(last_start, len(data)):
        decoded, reader = read_segment(data[:cut])
        assert decoded == flat(batches[:-1])
        assert reader.tail_bytes == cut - last_start and reader.good_end == last_start
        assert reader.corrupt_regions == []


def test_a_torn_segment_header_is_the_tail() -> None:
    for cut in range(1, HEADER + 1):
        decoded, reader = read_segment(encode_segment_header(SALT)[:cut])
        assert decoded == []
        assert reader.tail_bytes == (cut if cut < HEADER else 0)


def test_a_damaged_segment_header_costs_only_its_bytes() -> None:
    data = bytearray(segment_bytes([deleted("a"), deleted("b")]))
    data[3] ^= 0x01
    decoded, reader = read_segment(bytes(data))
    assert decoded == deleted("a", "b")
    assert reader.corrupt_regions == [CorruptRegion(0, HEADER)]


def test_garbage_between_batches_is_one_corrupt_region() -> None:
    first = segment_bytes([deleted("a")])
    junk = b"FBAT" + SALT[:8] + b"\x00\x00\x00\x05garbage\x03\xff" + bytes(100)
    data = first + junk + batch_bytes(deleted("b"), 2)
    decoded, reader = read_segment(data)
    assert decoded == deleted("a", "b")
    assert reader.corrupt_regions == [CorruptRegion(len(first), len(junk))]


def test_zero_filled_tail_is_a_tail() -> None:
    data = segment_bytes([deleted("a")])
    decoded, reader = read_segment(data + bytes(4096))
    assert decoded == deleted("a")
    assert reader.tail_bytes == 4096 and reader.corrupt_regions == []
    assert reader.good_end == len(data)


def test_a_batch_with_a_good_crc_but_a_bad_frame_is_dropped_whole() -> None:
    body = b"\x03\x00\x05ab"  # SessionDeleted whose string runs past the body
    bad_frame = struct.pack(">II", len(body), zlib.crc32(body)) + body
    bad_batch = encode_batch(SALT, 1, 2, encode_record(SessionDeleted("kept?")) + bad_frame)
    first = segment_bytes([deleted("a")])
    decoded, reader = read_segment(first + bad_batch + batch_bytes(deleted("b"), 3))
    assert decoded == deleted("a", "b")  # nothing of the bad batch, not even its good frame
    assert reader.corrupt_regions == [CorruptRegion(len(first), len(bad_batch))]


def test_frames_outside_a_batch_are_never_read() -> None:
    first = segment_bytes([deleted("a")])
    loose = b"".join(map(encode_record, deleted("loose-1", "loose-2")))
    decoded, reader = read_segment(first + loose + batch_bytes(deleted("b"), 2))
    assert decoded == deleted("a", "b")
    assert reader.corrupt_regions == [CorruptRegion(len(first), len(loose))]
    decoded, reader = read_segment(first + loose)
    assert decoded == deleted("a") and reader.tail_bytes == len(loose)


def test_a_batch_without_the_salt_is_never_read() -> None:
    """Whatever a payload holds, even a whole batch around forged records, is payload: a
    device cannot put the store's salt into it."""
    forged = [SessionDeleted("$ferry-bridge"),
              SubscriptionAdded("intruder", "#", 1, False, False, 0, None)]
    for guessed_salt in (bytes(16), b"\xff" * 16, SALT[::-1]):
        fake = batch_bytes(forged, 2, salt=guessed_salt)
        message = MessageAdded(1, "t", b"x" * 7 + fake + b"y" * 3, 1, False, b"", None, "dev")
        whole = segment_bytes([deleted("a"), [message]])
        assert read_segment(whole)[0] == deleted("a") + [message]
        for cut in range(len(segment_bytes([deleted("a")])), len(whole)):
            assert read_segment(whole[:cut])[0] == deleted("a")
        decoded, reader = read_segment(segment_bytes([deleted("a")]) + fake)  # in the clear
        assert decoded == deleted("a") and reader.tail_bytes == len(fake)


def test_a_batch_of_another_segment_or_an_old_sequence_is_skipped() -> None:
    """Stale blocks of a deleted segment that reappear in a file after a power cut carry the
    salt and a good crc, but not this segment's number or a sequence after the last one."""
    first = segment_bytes([deleted("a")])
    stale = batch_bytes(deleted("other-segment"), 2, segment=9) + batch_bytes(deleted("replay"), 1)
    decoded, reader = read_segment(first + stale + batch_bytes(deleted("b"), 2))
    assert decoded == deleted("a", "b")
    assert reader.corrupt_regions == [CorruptRegion(len(first), len(stale))]


def test_a_sequence_number_further_ahead_than_the_skipped_bytes_allow_is_skipped() -> None:
    first = segment_bytes([deleted("a")])
    gap = bytes(60)  # room for one lost batch at most
    decoded, reader = read_segment(first + gap + batch_bytes(deleted("too far"), 4))
    assert decoded == deleted("a") and reader.tail_bytes == len(gap) + len(
        batch_bytes(deleted("too far"), 4))
    decoded, reader = read_segment(first + gap + batch_bytes(deleted("b"), 3))
    assert decoded == deleted("a", "b")
    assert reader.corrupt_regions == [CorruptRegion(len(first), len(gap))]
