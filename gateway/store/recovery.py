"""Rebuild :class:`DurableState` from a data directory after a start or a crash.

Segments are read batch by batch (:class:`~.reader.RecordReader`): a damaged
batch costs its records and nothing else, and no record is ever taken from
bytes outside a good batch.
"""

from __future__ import annotations

import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

from .layout import scan
from .reader import RecordReader
from .state import DurableState

__all__ = ["RecoveryReport", "recover"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class RecoveryReport:
    """What :func:`recover` found."""

    records: int
    """Records replayed."""
    batches: int
    """Batches replayed (the records of a batch are replayed all or none)."""
    segments: int
    """Segment files replayed."""
    bytes_dropped: int
    """Bytes not part of any replayed batch: corrupt regions plus truncated tails."""
    corrupt_regions: int
    """Damaged stretches skipped because a good batch followed them."""
    truncated_tail_bytes: int
    """Bytes after the last good batch of a segment (a write cut short)."""
    dangling_references: int
    """Records that referenced something missing (see :mod:`ferry.gateway.store.state`)."""
    duration_s: float
    garbage_messages: int = 0
    """Messages dropped at the end because nothing referenced them."""

    @property
    def clean(self) -> bool:
        """Nothing dropped and nothing dangling."""
        return not (self.bytes_dropped or self.dangling_references)


def recover(data_dir: Path) -> tuple[DurableState, RecoveryReport]:
    """Replay the journal in ``data_dir`` (missing: empty state).

    Never raises for damaged content: a corrupt batch is skipped by searching
    forward for the next batch header with the store's salt that checks out
    (logged as a WARNING with the offset and byte count), and a truncated tail
    is dropped.  The last segment's tail is also cut off on disk (``ftruncate``
    + fsync), so that the next recovery does not report it again and new
    batches follow good ones; that is the only write.  Raises
    :class:`~.layout.StoreFormatError`, changing nothing, for a data directory
    of another store format; OS errors (permission denied, I/O error) propagate.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    layout = scan(data_dir)
    state = DurableState()
    records = batches = corrupt_regions = corrupt_bytes = tail_bytes = 0
    for index, segment in enumerate(layout.live):
        if not segment.size_bytes:  # nothing to read (and no salt needed to read it)
            continue
        reader = RecordReader(segment.path.read_bytes(), layout.salt, segment.number)
        apply = state.apply
        for record in reader:
            apply(record)
        records += reader.records
        batches += reader.batches
        for region in reader.corrupt_regions:
            logger.warning("%s: skipped %d corrupt bytes at offset %d",
                           segment.path, region.length, region.offset)
            corrupt_regions += 1
            corrupt_bytes += region.length
        if reader.tail_bytes:
            tail_bytes += reader.tail_bytes
            logger.warning("%s: dropped a %d-byte incomplete or corrupt tail at offset %d",
                           segment.path, reader.tail_bytes, reader.good_end)
            if index == len(layout.live) - 1:
                _cut(segment.path, reader.good_end)
    garbage = state.collect_garbage()
    report = RecoveryReport(
        records=records,
        batches=batches,
        segments=len(layout.live),
        bytes_dropped=corrupt_bytes + tail_bytes,
        corrupt_regions=corrupt_regions,
        truncated_tail_bytes=tail_bytes,
        dangling_references=state.dangling_references,
        duration_s=time.perf_counter() - started,
        garbage_messages=garbage,
    )
    logger.info("recovered %s from %s in %.3f s: %s", state.summary(), data_dir,
                report.duration_s, report)
    return state, report


def _cut(path: Path, size: int) -> None:
    """Truncate ``path`` to ``size`` bytes.  Fsynced before returning."""
    fd = os.open(path, os.O_WRONLY)
    try:
        os.ftruncate(fd, size)
        os.fsync(fd)
    finally:
        os.close(fd)
