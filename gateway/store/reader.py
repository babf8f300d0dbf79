"""Splitting a byte stream into records, and finding the way past damage.  Pure.

See :mod:`ferry.gateway.store.records` for the frame format.  :class:`RecordReader`
never raises for bad bytes: it reports them as :class:`CorruptRegion` s and a
tail, and carries on with the next frame that checks out.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from zlib import crc32

from .records import BODY_DECODERS, FRAME_HEAD, MALFORMED, MAX_RECORD_BYTES, Record

__all__ = ["CorruptRegion", "RecordReader"]

# Where a frame could start: length's first byte <= 0x0F and a known type byte.
_CANDIDATE = re.compile(
    rb"(?=[\x00-\x0f][\x00-\xff]{7}["
    + b"".join(re.escape(bytes([t])) for t in sorted(BODY_DECODERS))
    + rb"])"
)


@dataclass(frozen=True, slots=True)
class CorruptRegion:
    """Bytes skipped between two good frames (offsets count from the stream start)."""

    offset: int
    length: int


class RecordReader:
    """Splits a byte stream into records, skipping damage.

    Feed bytes with :meth:`feed`, iterate to get the records whose frames are
    complete and check out, call :meth:`end` when the stream is over and
    iterate once more.  A frame whose CRC, type or body is bad starts a
    corrupt region; the reader scans forward byte by byte for the next frame
    that checks out (CRC and body) and records the skipped bytes in
    :attr:`corrupt_regions`.  Bytes after the last good frame with no good
    frame following them are the *tail* (:attr:`tail_bytes`, known after
    :meth:`end`): normally a write cut short by a crash.

    Until :meth:`end`, a frame that runs past the bytes fed so far is awaited,
    not judged.
    """

    __slots__ = ("_buf", "_view", "_base", "_pos", "_scan", "_ended",
                 "corrupt_regions", "tail_bytes", "records")

    def __init__(self) -> None:
        self._buf = b""
        self._view = memoryview(b"")
        self._base = 0  # stream offset of _buf[0]
        self._pos = 0  # next unconsumed byte in _buf (start of the damage while scanning)
        self._scan: int | None = None  # next candidate frame start while scanning
        self._ended = False
        self.corrupt_regions: list[CorruptRegion] = []
        self.tail_bytes = 0
        self.records = 0

    @property
    def good_end(self) -> int:
        """Stream offset just after the last frame consumed (or damage skipped)."""
        return self._base + self._pos

    def feed(self, data: bytes) -> None:
        if self._ended:
            raise ValueError("feed() after end()")
        rest = self._buf[self._pos:]
        self._base += self._pos
        if self._scan is not None:
            self._scan -= self._pos
        self._pos = 0
        self._buf = bytes(data) if not rest else rest + data
        self._view = memoryview(self._buf)

    def end(self) -> None:
        """No more bytes will come: the next iteration judges what is left."""
        self._ended = True

    def __iter__(self) -> Iterator[Record]:
        while (record := self.next_record()) is not None:
            yield record

    def next_record(self) -> Record | None:
        """The next good record, or None until more bytes (or :meth:`end`)."""
        buf = self._buf
        size = len(buf)
        while True:
            if self._scan is not None and not self._resync():
                return None
            pos = self._pos
            if size - pos < 9:
                if not self._ended or size == pos:
                    return None
                self._scan = pos + 1  # a few stray bytes at the end
                continue
            length, crc, rtype = FRAME_HEAD.unpack_from(buf, pos)
            decoder = BODY_DECODERS.get(rtype)
            if decoder is not None and 0 < length <= MAX_RECORD_BYTES:
                stop = pos + 8 + length
                if stop > size:
                    if not self._ended:
                        return None
                elif crc32(self._view[pos + 8:stop]) == crc:
                    try:
                        record = decoder(buf, pos + 9, stop)
                    except MALFORMED:
                        pass
                    else:
                        self._pos = stop
                        self.records += 1
                        return record
            self._scan = pos + 1

    def _check(self, p: int) -> bool | None:
        """Does a good frame start at ``p``?  None: cannot tell before more bytes."""
        buf = self._buf
        length, crc, rtype = FRAME_HEAD.unpack_from(buf, p)
        if not 0 < length <= MAX_RECORD_BYTES:
            return False
        stop = p + 8 + length
        if stop > len(buf):
            return False if self._ended else None
        try:  # parsing rejects most false candidates before the CRC pass
            BODY_DECODERS[rtype](buf, p + 9, stop)
        except MALFORMED:
            return False
        return crc32(self._view[p + 8:stop]) == crc

    def _resync(self) -> bool:
        """Scan for the next good frame; True once found (``_pos`` moved there)."""
        buf = self._buf
        size = len(buf)
        p = self._scan
        assert p is not None
        while True:
            match = _CANDIDATE.search(buf, p, size)
            if match is None:
                if self._ended:  # nothing good follows: the rest is the tail
                    self.tail_bytes = size - self._pos
                    self._pos = size
                    self._scan = None
                    return False
                self._scan = max(p, size - 8)
                return False
            p = match.start()
            found = self._check(p)
            if found is None:
                self._scan = p
                return False
            if found:
                self.corrupt_regions.append(CorruptRegion(self._base + self._pos, p - self._pos))
                self._pos = p
                self._scan = None
                return True
            p += 1
