"""The Kafka bridge's spool: a FIFO of device messages on disk whose RAM does not grow with its depth.

A message for the bridge is not kept in the broker's memory as a session queue entry (1,000,000
of them took 629 MB). It becomes one *entry* with a sequence number in the spool's own files,
written by the journal's writer thread in the same batch, and fsynced with it, as the journal
records that go with it: the device's PUBACK waits for that commit exactly as for any record.
Memory holds only the newest entries (to hand them to the bridge without reading them back),
the entries read ahead from disk while a backlog drains, and the sequence numbers the bridge
has in flight to Kafka.

On disk, ``<store>/spool/`` holds files named by the sequence number of their first entry
(``00000000000000000042.spool``). Each is framed like a journal segment (``.records``): a
header with the store's salt, then batches whose header carries the salt, the file's first
sequence number, a batch sequence and a CRC; an entry is one frame. A power cut can only leave
a torn batch at the end of the last file, which :func:`open_spool_files` cuts off.

The *head* is the first entry Kafka has not acknowledged. It is kept in the journal
(``SpoolHead`` records, snapshots included) and moves on as acknowledgements come in, in
order: an entry Kafka acknowledged after a later one stays counted until the earlier one is
acknowledged too. After a crash the bridge produces again from the last recorded head, so
records Kafka already had come again (duplicates, which the server removes), never fewer. A
file is deleted by the writer thread once the head recorded in a committed batch is past its
last entry.
"""

from __future__ import annotations

import logging
import os
import struct
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import NamedTuple
from pathlib import Path
from zlib import crc32

from .layout import create_file, fsync_dir, sync_data, write_all
from .reader import RecordReader
from .records import SEGMENT_HEADER, decode_segment_header, encode_batch, encode_segment_header

__all__ = ["SPOOL_DIR", "SpoolEntry", "SpoolFiles", "encode_entry", "open_spool_files", "read_file"]

logger = logging.getLogger(__name__)

SPOOL_DIR = "spool"
ENTRY_TYPE = 2
"""An entry as written now: its fields, then the topic and the payload."""
_ENTRY_FIELDS = struct.Struct(">BQQBHq")  # type, sequence, received_ms, qos, topic length, checked_ts_ms
FIRST_ENTRY_TYPE = 1
"""An entry as the first spool wrote it (no `checked_ts_ms`): still read, never written."""
_FIRST_ENTRY_FIELDS = struct.Struct(">BQQBH")  # type, sequence, received_ms, qos, topic length
_FRAME_HEAD = struct.Struct(">II")  # length (type byte + body), crc32 of type byte + body
ENTRY_HEADER_BYTES = _FRAME_HEAD.size + _ENTRY_FIELDS.size
"""What an entry costs on disk beyond its topic and payload."""
_NAME_DIGITS = 20
NOT_CHECKED = -1
"""`SpoolEntry.checked_ts_ms` of an entry with no verdict kept: the bridge checks it when producing."""


class SpoolEntry(NamedTuple):
    """One spooled device message (a named tuple: one is made per message spooled and per message
    read back, and a frozen dataclass costs four times as much to make)."""

    seq: int
    topic: str
    payload: bytes
    qos: int
    received_ms: int
    """Wall-clock milliseconds when the broker received it (the record's `ferry-received-ms`)."""
    checked_ts_ms: int = NOT_CHECKED
    """For telemetry the contract accepted when it was spooled, its Kafka record's timestamp (so a
    backlog drains without each payload decoded and checked again); NOT_CHECKED for anything else."""

    @property
    def size(self) -> int:
        """Bytes of its frame on disk (what counts against `bridge.spool_max_bytes`)."""
        return ENTRY_HEADER_BYTES + len(self.topic.encode()) + len(self.payload)


def encode_entry(entry: SpoolEntry) -> bytes:
    topic = entry.topic.encode()
    body = _ENTRY_FIELDS.pack(ENTRY_TYPE, entry.seq, entry.received_ms, entry.qos, len(topic),
                              entry.checked_ts_ms) + topic + entry.payload
    return _FRAME_HEAD.pack(len(body), crc32(body)) + body


def _decode_entry(data: bytes, start: int, end: int) -> SpoolEntry:
    """The entry whose body (after the type byte) is ``data[start:end]``; raises what the reader
    counts as malformed (struct.error, UnicodeDecodeError)."""
    _, seq, received_ms, qos, topic_length, checked_ts_ms = _ENTRY_FIELDS.unpack_from(data, start - 1)
    topic_start = start - 1 + _ENTRY_FIELDS.size
    payload_start = topic_start + topic_length
    if payload_start > end:
        raise struct.error("topic runs past the entry")
    return SpoolEntry(seq, data[topic_start:payload_start].decode(), data[payload_start:end], qos, received_ms,
                      checked_ts_ms)


def _decode_first_entry(data: bytes, start: int, end: int) -> SpoolEntry:
    """An entry of the first format (written before `checked_ts_ms`): checked when produced."""
    _, seq, received_ms, qos, topic_length = _FIRST_ENTRY_FIELDS.unpack_from(data, start - 1)
    topic_start = start - 1 + _FIRST_ENTRY_FIELDS.size
    payload_start = topic_start + topic_length
    if payload_start > end:
        raise struct.error("topic runs past the entry")
    return SpoolEntry(seq, data[topic_start:payload_start].decode(), data[payload_start:end], qos, received_ms)


ENTRY_DECODERS: dict[int, Callable[[bytes, int, int], SpoolEntry]] = {
    ENTRY_TYPE: _decode_entry, FIRST_ENTRY_TYPE: _decode_first_entry}


def file_path(directory: Path, first_seq: int) -> Path:
    return directory / f"{first_seq:0{_NAME_DIGITS}d}.spool"


def _first_seq(path: Path) -> int | None:
    stem, dot, suffix = path.name.partition(".")
    return int(stem) if suffix == "spool" and len(stem) == _NAME_DIGITS and stem.isdigit() else None


def list_files(directory: Path) -> list[tuple[int, Path]]:
    """(first sequence number, path) of every spool file, oldest first."""
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    found = []
    for name in names:
        path = directory / name
        first = _first_seq(path)
        if first is not None:
            found.append((first, path))
    return sorted(found)


def read_file(path: Path, first_seq: int, salt: bytes) -> tuple[list[SpoolEntry], RecordReader]:
    """Every entry of one spool file in order, and the reader (for its tail and damage)."""
    reader = RecordReader(path.read_bytes(), salt, first_seq, ENTRY_DECODERS)
    return list(reader), reader


class SpoolFiles:
    """The spool's files, written by the journal's writer thread only (one owner).

    Write paths and when they are fsynced: a batch of entries is appended with one ``write`` and
    fdatasync'ed by :meth:`sync` before the journal batch it belongs to commits (``FSYNC``
    durability; ``OS``: never); a new file's header is written with its first batch and the
    folder is fsynced first (``FSYNC``); deleting consumed files fsyncs the folder (``FSYNC``).
    """

    def __init__(self, directory: Path, salt: bytes, fsync: bool, file_max_bytes: int,
                 files: list[tuple[int, Path]]) -> None:
        """``files`` as :func:`open_spool_files` left them; new entries go to a new file."""
        self.directory = directory
        self._salt = salt
        self._fsync = fsync
        self._file_max_bytes = file_max_bytes
        self._files = deque(files)  # (first seq, path), oldest first; the last one is appended to
        self._fd: int | None = None
        self._current_size = 0
        self._batch_sequence = 0
        self._dirty = False
        self._bytes_on_disk = sum(p.stat().st_size for _, p in files)
        """Changed by the writer thread only; read on the event loop (once per message spooled, by
        the byte limit's check) without a lock: reading an int attribute is atomic."""

    @property
    def bytes_on_disk(self) -> int:
        return self._bytes_on_disk

    def write(self, first_seq: int, frames: bytes) -> int:
        """Append one batch of entry frames whose first entry is ``first_seq``; the bytes written.
        Not fsynced here: :meth:`sync`."""
        written = 0
        if self._fd is None or self._current_size >= self._file_max_bytes:
            written += self._new_file(first_seq)
        self._batch_sequence += 1
        data = encode_batch(self._salt, self._files[-1][0], self._batch_sequence, frames)
        write_all(self._fd, data)
        self._current_size += len(data)
        self._dirty = True
        self._bytes_on_disk += written + len(data)
        return written + len(data)

    def _new_file(self, first_seq: int) -> int:
        path = file_path(self.directory, first_seq)
        fd = create_file(path)
        header = encode_segment_header(self._salt)
        try:
            write_all(fd, header)
            if self._fsync:
                fsync_dir(self.directory)
        except BaseException:
            os.close(fd)
            raise
        if self._fd is not None:
            if self._dirty and self._fsync:
                sync_data(self._fd)  # the previous file's last batch, before it is left behind
            os.close(self._fd)
        self._fd = fd
        self._files.append((first_seq, path))
        self._current_size = len(header)
        self._batch_sequence = 0
        return len(header)

    def sync(self) -> None:
        """fdatasync what :meth:`write` appended since the last call (``FSYNC`` durability)."""
        if self._dirty and self._fsync and self._fd is not None:
            sync_data(self._fd)
        self._dirty = False

    def release_below(self, head: int) -> None:
        """Delete every file whose entries all come before ``head`` (the head is durable by now).
        The file being appended to is kept."""
        removed = 0
        while len(self._files) > 1 and self._files[1][0] <= head:
            _, path = self._files.popleft()
            size = path.stat().st_size
            path.unlink()
            removed += 1
            self._bytes_on_disk -= size
        if removed and self._fsync:
            fsync_dir(self.directory)

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


@dataclass(frozen=True, slots=True)
class OpenedSpool:
    """What :func:`open_spool_files` found: the files to keep and where the spool ends."""

    files: list[tuple[int, Path]]
    tail: int
    """The sequence number the next entry gets."""
    dropped_bytes: int
    """Bytes of a torn batch cut off the last file."""


def open_spool_files(directory: Path, salt: bytes, head: int, fsync: bool) -> OpenedSpool:
    """Recover the spool folder after a start or a crash: delete files the head has passed, cut a
    torn batch off the last file (fsynced), find the next sequence number. A missing folder is
    created (fsynced with its parent)."""
    if not directory.is_dir():
        directory.mkdir(parents=True, exist_ok=True)
        if fsync:
            fsync_dir(directory.parent)
    files = list_files(directory)
    removed = 0
    while len(files) > 1 and files[1][0] <= head:
        files.pop(0)[1].unlink()
        removed += 1
    tail, dropped = head, 0
    while files:
        first, path = files[-1]
        header = decode_segment_header(path.read_bytes()[:SEGMENT_HEADER.size])
        if header is not None and header.salt != salt:
            raise ValueError(f"{path}: a spool file of another store (its salt is not this store's)")
        entries, reader = read_file(path, first, salt)
        if reader.tail_bytes:
            logger.warning("%s: dropped a %d-byte incomplete or corrupt tail", path, reader.tail_bytes)
            dropped = reader.tail_bytes
            with open(path, "r+b") as file:
                file.truncate(reader.good_end)
                os.fsync(file.fileno())
        if entries:
            tail = max(head, entries[-1].seq + 1)
            break
        path.unlink()  # no entry survived (a header, or a batch cut off)
        files.pop()
        removed += 1
    if fsync and (removed or dropped):
        fsync_dir(directory)
    return OpenedSpool(files, tail, dropped)
