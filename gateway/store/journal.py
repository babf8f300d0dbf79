"""The append-only journal: group commit on one writer thread, segments, snapshots.

The broker appends records from its event loop (:meth:`Journal.append`, no
I/O) and calls :meth:`Journal.flush`; one writer thread frames the pending
batch (one batch header and crc for all its records, see :mod:`.records`),
writes it, fsyncs it (per :class:`Durability`) and reports the batch number
through ``on_commit``.  Records appended while a write is in flight form the
next batch, so under load one fsync covers many records.

Durability of each write path:

* batches: written with one ``os.write``; fdatasync'ed before ``on_commit``
  in ``FSYNC`` mode, never fsynced in ``OS`` mode, not written in ``MEMORY``;
* a new segment file: its header is written at once and made durable by the
  fdatasync of the first batch in it, and the directory is fsynced before
  that batch commits (``FSYNC`` mode only);
* snapshots and the manifest: always fsynced, file and directory, in both
  ``FSYNC`` and ``OS`` modes, because a snapshot deletes the segments it
  replaces and must never leave neither after a power cut.  A new store's
  manifest (with its salt) is written before its first segment.

If a write or fsync fails the journal stops for good (after a failed fsync
the page cache can no longer be trusted): no later batch commits, ``on_error``
is called, and ``append``/``flush``/``snapshot``/``close`` raise
:class:`JournalError`.  Restart and :func:`recover`.
"""

from __future__ import annotations

import logging
import os
import secrets
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from enum import Enum
from pathlib import Path

from .layout import (
    create_file,
    fsync_dir,
    scan,
    segment_path,
    sync_data,
    write_all,
    write_manifest,
)
from .records import SALT_BYTES, Record, encode_batch, encode_record, encode_segment_header
from .recovery import RecoveryReport, recover
from .spool import SPOOL_DIR, OpenedSpool, SpoolFiles, open_spool_files
from .state import DurableState

__all__ = ["Durability", "Journal", "JournalError", "JournalStats", "RecoveryReport",
           "recover"]

logger = logging.getLogger(__name__)

MIB = 1024 * 1024
SNAPSHOT_BATCH_BYTES = MIB
"""A snapshot is written as batches of about this many bytes of records, so that damage to
one costs only its records, not the whole base state."""


class Durability(Enum):
    """When a batch counts as committed."""

    FSYNC = "fsync"
    """After write + fdatasync (fsync where there is no fdatasync): survives a power cut."""
    OS = "os"
    """After write, no fsync: survives the process being killed, not a power cut."""
    MEMORY = "memory"
    """At once; nothing is written.  For tests and throwaway brokers."""


class _Phase(Enum):
    NEW = "new"
    OPEN = "open"
    CLOSED = "closed"


class JournalError(Exception):
    """The journal failed (see ``__cause__``) or is not open; nothing more will commit."""


@dataclass(frozen=True, slots=True)
class JournalStats:
    """Counters for the metrics endpoint; latency runs from handing a batch to the
    writer to its commit."""

    commits: int
    records: int
    records_last: int
    records_avg: float
    records_max: int
    latency_last_s: float
    latency_avg_s: float
    latency_max_s: float
    bytes_written: int
    snapshots: int
    pending_records: int


class _Batch:
    __slots__ = ("number", "chunks", "spool_first", "spool_chunks", "spool_release", "sealed_at")

    def __init__(self, number: int, chunks: list[bytes], spool_first: int, spool_chunks: list[bytes],
                 spool_release: int | None) -> None:
        self.number = number
        self.chunks = chunks
        self.spool_first = spool_first
        """Sequence number of the first spool entry in ``spool_chunks``."""
        self.spool_chunks = spool_chunks
        self.spool_release = spool_release
        """Delete spool files below this head once the batch (which records that head) is synced."""
        self.sealed_at = time.perf_counter()


class _SnapshotNotWritten(Exception):
    """The snapshot's ``.tmp`` could not be written; it is gone and nothing else changed."""


class _Snapshot:
    """Encoded records; the writer thread frames them into batches (it knows the segment)."""

    __slots__ = ("frames", "size_bytes")

    def __init__(self, frames: list[bytes]) -> None:
        self.frames = frames
        self.size_bytes = sum(map(len, frames))


class Journal:
    """Append-only, group-committed journal over a data directory.

    Call :func:`recover` first, then :meth:`open` with the recovered state.
    ``append``/``flush``/``snapshot`` are for one thread (the event loop);
    ``on_commit(batch_no)`` runs in the writer thread (``MEMORY``: inside
    ``flush``), always with increasing numbers; a commit of batch N means
    every batch up to N is committed.
    """

    def __init__(
        self,
        data_dir: Path,
        durability: Durability,
        *,
        segment_max_bytes: int = 64 * MIB,
        on_commit: Callable[[int], None],
        on_error: Callable[[BaseException], None] | None = None,
        open_snapshot_min_bytes: int = 8 * MIB,
        open_snapshot_max_segments: int = 16,
        spool_file_max_bytes: int = 4 * MIB,
    ) -> None:
        """
        Args:
            segment_max_bytes: start a new segment file once the current one is
                this large (a batch is never split, so a segment may exceed it).
            on_commit: called with the number of each committed batch.
            on_error: called once, in the writer thread, if a write fails.
            open_snapshot_min_bytes: :meth:`open` compacts when the segments to
                replay are at least this large and over twice the snapshot size.
            open_snapshot_max_segments: :meth:`open` also compacts when there
                are more segments than this.
            spool_file_max_bytes: start a new spool file beyond this size (the
                bridge reads a file whole when it drains a backlog).
        """
        if segment_max_bytes <= 0:
            raise ValueError("segment_max_bytes must be positive")
        self._dir = Path(data_dir)
        self._durability = durability
        self._segment_max_bytes = segment_max_bytes
        self._on_commit = on_commit
        self._on_error = on_error
        self._open_snapshot_min_bytes = open_snapshot_min_bytes
        self._open_snapshot_max_segments = open_snapshot_max_segments
        self._spool_file_max_bytes = spool_file_max_bytes
        self._lock = threading.Lock()
        self._cond = threading.Condition(self._lock)
        # Event-loop side, guarded by _lock.
        self._chunks: list[bytes] = []
        self._spool_chunks: list[bytes] = []
        self._spool_first = 0
        self._spool_release: int | None = None
        self._next_batch = 1
        self._committed = 0
        self._busy = False  # a job is being written or queued
        self._armed = False  # flush the pending batch when the writer goes idle
        self._jobs: deque[_Batch | _Snapshot] = deque()
        self._stop = False
        self._since_snapshot = 0
        self._error: BaseException | None = None
        self._phase = _Phase.NEW
        # Writer side: touched by open(), then only by the writer thread.
        self._fd: int | None = None
        self._spool: SpoolFiles | None = None
        self.spool_opened = OpenedSpool([], 0, 0)
        """What the spool folder held at :meth:`open` (its files and next sequence number)."""
        self._salt = b""
        self._segment = 0
        self._segment_bytes = 0
        self._sequence = 0  # the last batch written to the current segment
        self._thread: threading.Thread | None = None
        # Stats, guarded by _lock.
        self._commits = self._records = self._records_last = self._records_max = 0
        self._latency_total = self._latency_last = self._latency_max = 0.0
        self._bytes_written = self._snapshots = 0
        self._snapshot_error: BaseException | None = None

    # ------------------------------------------------------------- lifecycle

    def open(self, state: DurableState, *, compact: bool | None = None) -> None:
        """Start writing after :func:`recover` returned ``state``.

        Removes leftovers of an interrupted snapshot, then either writes a
        snapshot of ``state`` as the new base (``compact=True``, or ``None``
        and the old segments are large or many) or starts a fresh log segment.
        Fsynced: the new segment and the directory in ``FSYNC`` mode, a
        snapshot and any manifest rewrite always.
        """
        if self._phase is not _Phase.NEW:
            raise JournalError(f"open() on a {self._phase.value} journal")
        if self._durability is not Durability.MEMORY:
            try:
                self._open_files(state, compact)
            except BaseException:
                if self._fd is not None:
                    os.close(self._fd)
                    self._fd = None
                raise
            self._thread = threading.Thread(target=self._run, name="ferry-journal-writer",
                                            daemon=True)
            self._thread.start()
        self._phase = _Phase.OPEN

    def _open_files(self, state: DurableState, compact: bool | None) -> None:
        self._dir.mkdir(parents=True, exist_ok=True)
        layout = scan(self._dir)
        self._salt = secrets.token_bytes(SALT_BYTES) if layout.salt is None else layout.salt
        for path in layout.temporary:
            logger.info("%s: removing leftover %s", self._dir, path.name)
            path.unlink()
        self._segment = layout.next_number - 1
        spool_dir = self._dir / SPOOL_DIR
        fsync = self._durability is Durability.FSYNC
        self.spool_opened = open_spool_files(spool_dir, self._salt, state.spool_head, fsync)
        self._spool = SpoolFiles(spool_dir, self._salt, fsync, self._spool_file_max_bytes,
                                 self.spool_opened.files)
        live_bytes = layout.live_bytes
        snapshot = None
        many = len(layout.live) > self._open_snapshot_max_segments
        if compact or (compact is None and (many or live_bytes >= self._open_snapshot_min_bytes)):
            snapshot = self._encode_snapshot(state.records())
            if not (compact or many or 2 * snapshot.size_bytes <= live_bytes):
                snapshot = None
        if snapshot is not None:  # switches the manifest, removes all older segments
            logger.info("%s: compacting %d segments (%d bytes) into a snapshot of %d bytes "
                        "of records", self._dir, len(layout.live), live_bytes,
                        snapshot.size_bytes)
            try:
                self._write_snapshot(snapshot)
            except OSError as exc:  # a full disk must not stop the start: the segments are intact
                logger.error("%s: compaction at start failed (%s); starting without it", self._dir, exc)
            else:
                self._since_snapshot = 0
                return
        base = layout.next_number if layout.base is None else layout.base
        if layout.manifest_base != base:
            # Before the stale segments go; for a new store, the salt before any segment.
            write_manifest(self._dir, base, self._salt)
        for segment in layout.stale:
            logger.info("%s: removing segment %s older than the base", self._dir,
                        segment.path.name)
            segment.path.unlink()
        self._bytes_written += self._new_segment()
        self._since_snapshot = live_bytes

    def close(self) -> None:
        """Flush, wait for the last commit, stop the writer thread, close the file.

        Raises :class:`JournalError` if the journal had failed.
        """
        if self._phase is _Phase.CLOSED:
            return
        if self._durability is Durability.MEMORY or self._thread is None:
            if self._phase is _Phase.OPEN:
                self.flush()
            self._phase = _Phase.CLOSED
            return
        with self._cond:
            if self._error is None and self._has_pending():
                if self._busy:
                    self._armed = True
                else:
                    self._seal()
            while self._busy and self._error is None:
                self._cond.wait()
            self._stop = True
            self._cond.notify_all()
        self._thread.join()
        self._phase = _Phase.CLOSED
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        if self._spool is not None:
            self._spool.close()
        if self._error is not None:
            raise JournalError("the journal failed") from self._error

    def __enter__(self) -> Journal:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # ------------------------------------------------------------ event loop

    def append(self, record: Record) -> int:
        """Encode ``record`` into the pending batch.  No I/O; returns the number of that batch:
        the record is durable once it is committed."""
        return self.append_encoded(encode_record(record))

    def append_encoded(self, data: bytes) -> int:
        """Add one frame made by :func:`encode_record` to the pending batch.  No I/O; returns
        the batch's number.

        Take the number from here, not from :attr:`pending_batch` afterwards: the writer
        thread seals the pending batch by itself when a flush was asked for while it wrote
        (``_armed``), so ``pending_batch`` may already name the next batch, one nothing may
        ever seal (an acknowledgement waiting for it would wait for other traffic)."""
        if self._error is not None or self._phase is not _Phase.OPEN:
            self._raise_unusable()
        with self._lock:
            self._chunks.append(data)
            self._since_snapshot += len(data)
            return self._next_batch

    def append_spool(self, frame: bytes, seq: int) -> int:
        """Add one spool entry (made by :func:`~.spool.encode_entry`, sequence number ``seq``) to
        the pending batch.  No I/O; returns the batch's number (as :meth:`append_encoded`):
        durable once it is committed."""
        if self._error is not None or self._phase is not _Phase.OPEN:
            self._raise_unusable()
        with self._lock:
            if not self._spool_chunks:
                self._spool_first = seq
            self._spool_chunks.append(frame)
            return self._next_batch

    def release_spool_below(self, head: int) -> None:
        """Delete the spool files whose entries all come before ``head`` once the pending batch
        is committed (append the record that makes ``head`` durable to it first)."""
        with self._lock:
            self._spool_release = head

    @property
    def salt(self) -> bytes:
        """The store's salt (known once :meth:`open` returned; empty in ``MEMORY`` mode)."""
        return self._salt

    @property
    def spool_bytes_on_disk(self) -> int:
        """Bytes of the spool's files (0 in ``MEMORY`` mode)."""
        return 0 if self._spool is None else self._spool.bytes_on_disk

    @property
    def pending_batch(self) -> int:
        """The number of the batch that an append now lands in (the writer may seal it at any
        moment: what waits for a record uses the number its append returned)."""
        return self._next_batch

    @property
    def committed_batch(self) -> int:
        """The highest committed batch number (0: none yet)."""
        return self._committed

    @property
    def bytes_since_snapshot(self) -> int:
        """Bytes appended since the last snapshot (after :meth:`open` without a
        snapshot: the size of the segments it recovered from, plus appends)."""
        return self._since_snapshot

    @property
    def writable(self) -> bool:
        """Open and not failed: appends and flushes are accepted."""
        return self._phase is _Phase.OPEN and self._error is None

    @property
    def failed(self) -> BaseException | None:
        """The error that stopped the journal, if any."""
        return self._error

    def flush(self) -> None:
        """Hand the pending batch to the writer; returns at once.

        If a write is in flight, the pending batch (with whatever is appended
        until then) is handed over when it finishes.  ``FSYNC``: the batch is
        fdatasync'ed before ``on_commit``; ``OS``: written, not fsynced;
        ``MEMORY``: committed here, ``on_commit`` runs before ``flush`` returns.
        """
        if self._error is not None or self._phase is not _Phase.OPEN:
            self._raise_unusable()
        if self._durability is Durability.MEMORY:
            self._commit_in_memory()
            return
        with self._lock:
            if not self._has_pending():
                return
            if self._busy:
                self._armed = True
            else:
                self._seal()

    def snapshot(self, records: Iterable[Record]) -> None:
        """Compact: make a new base segment holding exactly ``records``.

        ``records`` (normally ``state.records()``) is encoded here, on the
        calling thread, before this returns; the pending batch is handed to the
        writer first, so the snapshot lands after every batch appended so far.
        In the writer thread the snapshot is framed into batches (segment header
        and batch headers carry the store's salt) and written to a ``.tmp`` file,
        fsynced, renamed to ``NNN.snap``, the directory fsynced, the manifest
        switched (tmp + fsync + rename + directory fsync), and only then are
        the older segments deleted.  Fsynced in ``FSYNC`` and ``OS`` modes;
        ``MEMORY`` encodes nothing and writes nothing.
        """
        if self._error is not None or self._phase is not _Phase.OPEN:
            self._raise_unusable()
        if self._durability is Durability.MEMORY:
            with self._lock:
                self._since_snapshot = 0
                self._snapshots += 1
            return
        job = self._encode_snapshot(records)
        with self._lock:
            if self._has_pending():
                self._seal()
            self._jobs.append(job)
            self._since_snapshot = 0
            if not self._busy:
                self._busy = True
                self._cond.notify()

    @property
    def stats(self) -> JournalStats:
        with self._lock:
            commits = self._commits
            return JournalStats(
                commits=commits,
                records=self._records,
                records_last=self._records_last,
                records_avg=self._records / commits if commits else 0.0,
                records_max=self._records_max,
                latency_last_s=self._latency_last,
                latency_avg_s=self._latency_total / commits if commits else 0.0,
                latency_max_s=self._latency_max,
                bytes_written=self._bytes_written,
                snapshots=self._snapshots,
                pending_records=len(self._chunks) + len(self._spool_chunks),
            )

    def _raise_unusable(self) -> None:
        if self._error is not None:
            raise JournalError("the journal failed; nothing more will commit") from self._error
        raise JournalError(f"the journal is {self._phase.value}, not open")

    def _has_pending(self) -> bool:
        """With the lock held: is there anything for a batch?"""
        return bool(self._chunks or self._spool_chunks or self._spool_release is not None)

    def _seal(self) -> None:
        """With the lock held: queue the pending batch for the writer."""
        self._jobs.append(_Batch(self._next_batch, self._chunks, self._spool_first, self._spool_chunks,
                                 self._spool_release))
        self._next_batch += 1
        self._chunks = []
        self._spool_chunks = []
        self._spool_release = None
        self._armed = False
        if not self._busy:
            self._busy = True
            self._cond.notify()

    def _commit_in_memory(self) -> None:
        with self._lock:
            if not self._has_pending():
                return
            number = self._next_batch
            self._next_batch += 1
            self._account(len(self._chunks) + len(self._spool_chunks), 0.0, 0)
            self._chunks = []
            self._spool_chunks = []
            self._spool_release = None
            self._committed = number
        self._on_commit(number)

    def _account(self, records: int, latency_s: float, written: int) -> None:
        """With the lock held: one more commit in the stats."""
        self._commits += 1
        self._records += records
        self._records_last = records
        self._records_max = max(self._records_max, records)
        self._latency_last = latency_s
        self._latency_total += latency_s
        self._latency_max = max(self._latency_max, latency_s)
        self._bytes_written += written

    @staticmethod
    def _encode_snapshot(records: Iterable[Record]) -> _Snapshot:
        return _Snapshot([encode_record(record) for record in records])

    # ---------------------------------------------------------- writer thread

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._jobs and not self._stop:
                    self._cond.wait()
                if not self._jobs:
                    return
                job = self._jobs.popleft()
            try:
                if isinstance(job, _Batch):
                    written = self._write_batch(job)
                else:
                    self._snapshot_or_skip(job)
            except BaseException as exc:  # noqa: BLE001 - fail-stop, reported below
                self._fail(exc)
                return
            with self._cond:
                if isinstance(job, _Batch):
                    self._committed = job.number
                    self._account(len(job.chunks) + len(job.spool_chunks),
                                  time.perf_counter() - job.sealed_at, written)
                if not self._jobs and self._armed and self._has_pending():
                    self._seal()
                if not self._jobs:
                    self._busy = False
                    self._armed = False
                    self._cond.notify_all()
            if isinstance(job, _Batch):
                try:
                    self._on_commit(job.number)
                except Exception:  # a bug in the callback must not stop commits
                    logger.exception("on_commit(%d) raised", job.number)

    def _fail(self, exc: BaseException) -> None:
        logger.error("%s: journal write failed; no later batch will commit", self._dir,
                     exc_info=exc)
        with self._cond:
            self._error = exc
            self._jobs.clear()
            self._busy = False
            self._cond.notify_all()
        if self._on_error is not None:
            try:
                self._on_error(exc)
            except Exception:
                logger.exception("on_error raised")

    def _write_batch(self, batch: _Batch) -> int:
        """Write one batch: its spool entries to the spool's files, its records to the current
        segment; the bytes written, a new file's header included.  Both fdatasync'ed in ``FSYNC``
        mode before the batch commits; spool files a committed head has passed are deleted after."""
        written = 0
        if batch.spool_chunks:
            written += self._spool.write(batch.spool_first, b"".join(batch.spool_chunks))
        if batch.chunks:
            if self._segment_bytes >= self._segment_max_bytes:
                written += self._new_segment()
            self._sequence += 1
            data = encode_batch(self._salt, self._segment, self._sequence, b"".join(batch.chunks))
            write_all(self._fd, data)
            self._segment_bytes += len(data)
            written += len(data)
        self._spool.sync()
        if batch.chunks and self._durability is Durability.FSYNC:
            sync_data(self._fd)
        if batch.spool_release is not None:
            self._spool.release_below(batch.spool_release)
        return written

    def _new_segment(self) -> int:
        """Start the next ``.seg`` file with its header; the bytes written.  The directory is
        fsynced in ``FSYNC`` mode, the header only with the first batch; the previous segment
        was synced with its last batch."""
        number = self._segment + 1
        fd = create_file(segment_path(self._dir, number, snapshot=False))
        try:
            header = encode_segment_header(self._salt)
            write_all(fd, header)
            if self._durability is Durability.FSYNC:
                fsync_dir(self._dir)
        except BaseException:
            os.close(fd)
            raise
        self._switch_to(fd, number, len(header), 0)
        return len(header)

    def _switch_to(self, fd: int, number: int, size: int, sequence: int) -> None:
        old, self._fd = self._fd, fd
        self._segment = number
        self._segment_bytes = size
        self._sequence = sequence
        if old is not None:
            os.close(old)

    def _snapshot_or_skip(self, snapshot: _Snapshot) -> None:
        """A snapshot that cannot be written (a full disk) is given up, its ``.tmp`` deleted, and
        the journal goes on in its current segment: the old segments are intact, and compaction
        is tried again later (:attr:`snapshot_error`).  A failure after the snapshot got its name
        still stops the journal, since batches must not go on into a segment it supersedes."""
        try:
            self._write_snapshot(snapshot)
        except _SnapshotNotWritten as exc:
            logger.error("%s: compaction failed (%s); going on without it", self._dir, exc.__cause__)
            with self._lock:
                self._snapshot_error = exc.__cause__
                self._since_snapshot += snapshot.size_bytes
        else:
            with self._lock:
                self._snapshot_error = None

    @property
    def snapshot_error(self) -> BaseException | None:
        """Why the last snapshot could not be written, None after one that was."""
        with self._lock:
            return self._snapshot_error

    def _write_snapshot(self, snapshot: _Snapshot) -> None:
        """Write ``snapshot`` as the new base segment, in batches of about
        :data:`SNAPSHOT_BATCH_BYTES`.  Always fsynced (file, directory, manifest)
        before the old segments are deleted."""
        number = self._segment + 1
        final = segment_path(self._dir, number, snapshot=True)
        tmp = final.with_name(final.name + ".tmp")
        try:
            fd = create_file(tmp, exclusive=False)
        except OSError as exc:
            raise _SnapshotNotWritten() from exc
        try:
            header = encode_segment_header(self._salt)
            write_all(fd, header)
            size = len(header)
            batches = 0
            for batch in _snapshot_batches(self._salt, number, snapshot.frames):
                write_all(fd, batch)
                size += len(batch)
                batches += 1
            sync_data(fd)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise _SnapshotNotWritten() from exc
        try:
            os.rename(tmp, final)
            fsync_dir(self._dir)
            write_manifest(self._dir, number, self._salt)
        except BaseException:
            os.close(fd)
            raise
        self._switch_to(fd, number, size, batches)
        removed = 0
        for segment in scan(self._dir).stale:
            segment.path.unlink()
            removed += 1
        if removed:
            fsync_dir(self._dir)
        with self._lock:
            self._snapshots += 1
            self._bytes_written += size
        logger.info("%s: snapshot %d written (%d records, %d bytes), %d old segments removed",
                    self._dir, number, len(snapshot.frames), size, removed)


def _snapshot_batches(salt: bytes, segment: int, frames: list[bytes]) -> Iterator[bytes]:
    """``frames`` as batches 1, 2, ... of ``segment``, each of about :data:`SNAPSHOT_BATCH_BYTES`
    (at least one frame, so a larger frame makes a larger batch)."""
    sequence = start = size = 0
    for index, frame in enumerate(frames):
        size += len(frame)
        if size >= SNAPSHOT_BATCH_BYTES or index == len(frames) - 1:
            sequence += 1
            yield encode_batch(salt, segment, sequence, b"".join(frames[start:index + 1]))
            start, size = index + 1, 0
