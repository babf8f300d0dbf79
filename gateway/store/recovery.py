"""Rebuild :class:`DurableState` from a data directory after a start or a crash."""

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
    segments: int
    """Segment files replayed."""
    bytes_dropped: int
    """Bytes not part of any replayed record: corrupt regions plus truncated tails."""
    corrupt_regions: int
    """Damaged stretches skipped because a good record followed them."""
    truncated_tail_bytes: int
    """Bytes after the last good record of a segment (a write cut short)."""
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

    Never raises for bad content: a corrupt record is skipped by scanning
    forward to the next record that checks out (logged as a WARNING with the
    offset and byte count), and a truncated tail is dropped.  The last
    segment's tail is also cut off on disk (``ftruncate`` + fsync) so that the
    next recovery does not report it again; that is the only write.  OS errors
    (permission denied, I/O error) propagate.
    """
    started = time.perf_counter()
    data_dir = Path(data_dir)
    layout = scan(data_dir)
    state = DurableState()
    records = corrupt_regions = corrupt_bytes = tail_bytes = 0
    for index, segment in enumerate(layout.live):
        reader = RecordReader()
        reader.feed(segment.path.read_bytes())
        reader.end()
        apply = state.apply
        for record in reader:
            apply(record)
        records += reader.records
        for region in reader.corrupt_regions:
            logger.warning("%s: skipped %d corrupt bytes at offset %d",
                           segment.path, region.length, region.offset)
            corrupt_regions += 1
            corrupt_bytes += region.length
        if reader.tail_bytes:
            tail_bytes += reader.tail_bytes
            good_size = reader.good_end - reader.tail_bytes
            logger.warning("%s: dropped a %d-byte incomplete or corrupt tail at offset %d",
                           segment.path, reader.tail_bytes, good_size)
            if index == len(layout.live) - 1:
                _cut(segment.path, good_size)
    garbage = state.collect_garbage()
    report = RecoveryReport(
        records=records,
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
