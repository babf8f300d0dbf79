"""Reading a segment file back, batch by batch, and finding the way past damage.  Pure.

See :mod:`ferry.gateway.store.records` for the format.  A segment is read from
its header on, one batch after the other.  A batch counts only if it carries
the store's salt and its segment's number, its sequence number is plausible
and its crc checks out; its frames are then decoded in order from its start,
and if one of them does not decode the whole batch is dropped (a writer bug or
a crc collision: nothing of such a batch is trusted).  So the records of a
batch are replayed all or none.

Damage (a bad segment header, a bad crc, a batch running past the end of the
file) is never searched for record frames.  The reader looks for the next
``"FBAT"`` + salt and tries a batch there; its sequence number is plausible
if it is above the last good batch's and no further ahead than the skipped
bytes could hold batches (a batch header alone is 48 bytes).  The skipped
bytes are a :class:`CorruptRegion`; bytes after the last good batch with no
good batch after them are the *tail*, normally a write cut short by a crash.

Why: a device chooses its payload bytes, and a payload can hold anything,
whole encoded records with good crcs included.  Format 1 resynchronised at
any frame whose crc checked out, so a payload torn by a power cut could
replay records nobody wrote (a ``SessionDeleted`` of the bridge's session,
a ``SubscriptionAdded`` for ``#``).  A payload cannot hold the salt: it never
left the gateway's disk.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from zlib import crc32

from .records import (
    BATCH_HEADER,
    BATCH_MAGIC,
    BODY_DECODERS,
    FRAME_HEAD,
    MALFORMED,
    Record,
    batch_crc,
    encode_segment_header,
)

__all__ = ["CorruptRegion", "RecordReader"]


@dataclass(frozen=True, slots=True)
class CorruptRegion:
    """Bytes skipped between two good batches (offsets count from the start of the file)."""

    offset: int
    length: int


class RecordReader:
    """The records of one segment file, batch by batch, skipping damage.

    Iterate once to get the records of every good batch in order; the counts,
    :attr:`corrupt_regions`, :attr:`tail_bytes` and :attr:`good_end` are
    complete when the iteration ends.
    """

    __slots__ = ("_data", "_salt", "_segment", "_decoders", "batches", "records", "corrupt_regions",
                 "tail_bytes", "good_end")

    def __init__(self, data: bytes, salt: bytes, segment: int,
                 decoders: Mapping[int, Callable[[bytes, int, int], object]] = BODY_DECODERS) -> None:
        """``data`` is the whole file; ``salt`` the store's; ``segment`` the file's number (the
        spool's files: the first entry's sequence number, with the spool's entry decoders)."""
        self._data = data
        self._decoders = decoders
        self._salt = salt
        self._segment = segment
        self.batches = 0
        self.records = 0
        self.corrupt_regions: list[CorruptRegion] = []
        self.tail_bytes = 0
        """Bytes after the last good batch that no good batch follows."""
        self.good_end = 0
        """Offset just after the last good batch (or the segment header): where the file
        may be cut."""

    def __iter__(self) -> Iterator[Record]:
        data = self._data
        size = len(data)
        marker = BATCH_MAGIC + self._salt
        header = encode_segment_header(self._salt)
        pos = len(header) if data.startswith(header) else 0
        damage_at = None if pos or not size else 0  # start of the bytes being skipped
        last_sequence = 0
        while pos < size:
            skipped = 0 if damage_at is None else pos - damage_at
            batch = self._batch_at(pos, last_sequence, skipped)
            if batch is None:
                if damage_at is None:
                    damage_at = pos
                pos = data.find(marker, pos + 1)
                if pos < 0:
                    break
                continue
            if damage_at is not None:
                if pos > damage_at:  # not a missing segment header alone
                    self.corrupt_regions.append(CorruptRegion(damage_at, pos - damage_at))
                damage_at = None
            last_sequence, pos, records = batch
            self.batches += 1
            self.records += len(records)
            yield from records
        if damage_at is None:
            self.good_end = size
        else:
            self.good_end = damage_at
            self.tail_bytes = size - damage_at

    def _batch_at(self, pos: int, last_sequence: int,
                  skipped: int) -> tuple[int, int, list[Record]] | None:
        """(sequence, end, records) of a good batch starting at ``pos``, or None."""
        data = self._data
        if len(data) - pos < BATCH_HEADER.size:
            return None
        magic, salt, segment, sequence, length, crc = BATCH_HEADER.unpack_from(data, pos)
        plausible = last_sequence < sequence <= last_sequence + 1 + skipped // BATCH_HEADER.size
        if magic != BATCH_MAGIC or salt != self._salt or segment != self._segment or not plausible:
            return None
        start = pos + BATCH_HEADER.size
        end = start + length
        if end > len(data) or batch_crc(segment, sequence, memoryview(data)[start:end]) != crc:
            return None
        records = self._decode(start, end)
        return None if records is None else (sequence, end, records)

    def _decode(self, pos: int, end: int) -> list[Record] | None:
        """The frames between ``pos`` and ``end``, in order; None if any does not decode."""
        data = self._data
        view = memoryview(data)
        records = []
        while pos < end:
            if end - pos < FRAME_HEAD.size:
                return None
            length, crc, record_type = FRAME_HEAD.unpack_from(data, pos)
            stop = pos + 8 + length
            decoder = self._decoders.get(record_type)
            if decoder is None or length == 0 or stop > end or crc32(view[pos + 8:stop]) != crc:
                return None
            try:
                records.append(decoder(data, pos + 9, stop))
            except MALFORMED:
                return None
            pos = stop
        return records
