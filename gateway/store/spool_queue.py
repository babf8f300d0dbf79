"""The spool as the broker core and the Kafka bridge use it, on the event loop: append, read in order,
acknowledge (the files and their format: :mod:`.spool`).

Memory does not grow with the depth: it holds the newest entries (up to ``recent_max_entries`` /
``recent_max_bytes``, and always those not yet on disk), the entries of one file read ahead
while a backlog drains, and what the bridge has in flight. A backlog is read back from disk
one file at a time, in a thread.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

from .records import SpoolHead
from .spool import ENTRY_HEADER_BYTES, NOT_CHECKED, SpoolEntry, encode_entry, list_files, read_file

__all__ = ["SpoolQueue"]

logger = logging.getLogger(__name__)

HEAD_RECORD_EVERY = 1024
"""Acknowledged entries after which the head is written to the journal at once (otherwise on the
next :meth:`SpoolQueue.tick`): a crash re-produces at most about this many, plus a second's worth."""
READ_AHEAD_LOW_ENTRIES = 4096
"""While a backlog drains from disk, the next file is read once fewer entries than this are left
read ahead (a 4 MiB file holds ~17,000 readings of the contract's size): the bridge never waits for
a file while Kafka could take more. Memory holds at most about one file's entries plus these."""
ENTRY_OVERHEAD_BYTES = ENTRY_HEADER_BYTES + 48
"""Frame and entry header, plus a share of a batch header: what an entry costs on disk beyond its
topic and payload (for the byte limit's check before it is written)."""


class SpoolJournal(Protocol):
    """The journal as the spool queue uses it (its writer thread owns the files)."""

    @property
    def spool_bytes_on_disk(self) -> int: ...

    def append(self, record: SpoolHead) -> int: ...

    def append_spool(self, frame: bytes, seq: int) -> int: ...

    def release_spool_below(self, head: int) -> None: ...


@dataclass(slots=True)
class _Unwritten:
    """Entries of one journal batch not committed yet."""

    batch: int
    end_seq: int
    bytes: int


class SpoolQueue:
    """A FIFO of spool entries with sequence numbers: the core appends, the bridge takes and acks.

    ``head``: the first entry not acknowledged; ``tail``: the next sequence number. Entries are
    handed out once each, in order (:meth:`take`), and again after :meth:`rewind`.
    """

    def __init__(self, journal: SpoolJournal, directory: Path | None, salt: bytes, head: int, tail: int, *,
                 max_messages: int, max_bytes: int, recent_max_entries: int = 20_000,
                 recent_max_bytes: int = 8 * 1024 * 1024) -> None:
        """``directory`` None: the journal keeps nothing on disk (``durability = "memory"``), so
        every entry stays in memory until acknowledged."""
        self._journal = journal
        self._directory = directory
        self._salt = salt
        self.head = head
        self.tail = tail
        self.max_messages = max_messages
        self.max_bytes = max_bytes
        self._recent_max_entries = recent_max_entries
        self._recent_max_bytes = recent_max_bytes
        self._next = head
        self._acked: set[int] = set()
        self._taken_received_ms: dict[int, int] = {}
        self._recorded_head = head
        self._recent: dict[int, SpoolEntry] = {}
        """The newest entries by sequence number: always exactly ``_recent_first`` up to the tail."""
        self._recent_first = tail
        self._recent_bytes = 0
        self._read_ahead: deque[SpoolEntry] = deque()
        self._unwritten: deque[_Unwritten] = deque()
        self._unwritten_bytes = 0
        """The sum of `_unwritten`'s bytes (asked twice per QoS 1/2 publish to the bridge)."""
        self._durable_tail = tail
        self._reading: asyncio.Task | None = None
        self.dropped = 0
        """Entries given up by the `drop_oldest` overflow policy."""
        self.on_append: Callable[[], None] | None = None
        """Called after each append (the bridge wakes up to take it)."""
        self.check: Callable[[str, bytes, int], int | None] | None = None
        """Called with each message appended (topic, payload, received ms): the bridge's verdict, kept
        with the entry (`SpoolEntry.checked_ts_ms`; None: nothing to keep)."""

    # ------------------------------------------------------------------ counts

    @property
    def depth(self) -> int:
        """Entries not acknowledged: waiting, read ahead, or in flight to Kafka."""
        return self.tail - self.head

    @property
    def bytes(self) -> int:
        """Bytes of the spool's files, plus entries of batches not written yet."""
        return self._journal.spool_bytes_on_disk + self._unwritten_bytes

    def has_room(self, size: int) -> bool:
        """Whether an entry with ``size`` bytes of topic and payload fits both limits."""
        return self.depth < self.max_messages and self.bytes + size + ENTRY_OVERHEAD_BYTES <= self.max_bytes

    def oldest_received_ms(self) -> int | None:
        """When the oldest unacknowledged entry reached the gateway, if it is in flight."""
        return self._taken_received_ms.get(self.head)

    # ------------------------------------------------------------------ writing

    def append(self, topic: str, payload: bytes, qos: int, received_ms: int) -> int:
        """Spool one message; returns the journal batch it is durable with (whose commit releases
        the publisher's acknowledgement)."""
        checked = self.check(topic, payload, received_ms) if self.check is not None else None
        entry = SpoolEntry(self.tail, topic, payload, qos, received_ms, NOT_CHECKED if checked is None else checked)
        frame = encode_entry(entry)
        batch = self._journal.append_spool(frame, entry.seq)
        self.tail += 1
        last = self._unwritten[-1] if self._unwritten else None
        if last is not None and last.batch == batch:
            last.end_seq = self.tail
            last.bytes += len(frame)
        else:
            self._unwritten.append(_Unwritten(batch, self.tail, len(frame)))
        self._unwritten_bytes += len(frame)
        self._recent[entry.seq] = entry
        self._recent_bytes += len(frame)
        self._trim_recent()
        if self.on_append is not None:
            self.on_append()
        return batch

    def committed(self, batch: int) -> None:
        """The journal committed every batch up to ``batch``: their entries are on disk."""
        while self._unwritten and self._unwritten[0].batch <= batch:
            written = self._unwritten.popleft()
            self._unwritten_bytes -= written.bytes
            self._durable_tail = written.end_seq
        if not self._unwritten:
            self._durable_tail = self.tail
        self._trim_recent()

    def _trim_recent(self) -> None:
        recent = self._recent
        while self._recent_first < self.head and recent:  # acknowledged: never needed again
            self._recent_bytes -= recent.pop(self._recent_first).size
            self._recent_first += 1
        if self._directory is None:
            return  # nothing on disk to read the others back from
        while recent and (len(recent) > self._recent_max_entries or self._recent_bytes > self._recent_max_bytes) \
                and self._recent_first < self._durable_tail:
            self._recent_bytes -= recent.pop(self._recent_first).size
            self._recent_first += 1
        if not recent:
            self._recent_first = self.tail

    # ------------------------------------------------------------------ reading

    def take(self, limit: int) -> list[SpoolEntry]:
        """Up to ``limit`` entries not handed out yet, in order, from memory; fewer when the next
        ones must first be read from disk (:attr:`needs_read`, :meth:`read_ahead`)."""
        taken: list[SpoolEntry] = []
        while len(taken) < limit and self._next < self.tail:
            seq = self._next
            if seq in self._acked:
                self._next += 1
                continue
            entry = self._in_memory(seq)
            if entry is None:
                break
            taken.append(entry)
            self._taken_received_ms[seq] = entry.received_ms
            self._next += 1
        return taken

    def _in_memory(self, seq: int) -> SpoolEntry | None:
        if seq >= self._recent_first:
            return self._recent.get(seq)
        ahead = self._read_ahead
        while ahead and ahead[0].seq < seq:
            ahead.popleft()
        if ahead and ahead[0].seq == seq:
            return ahead.popleft()
        return None

    @property
    def needs_read(self) -> bool:
        """The next file should be read from disk: the next entry to hand out is on disk only, or
        fewer than ``READ_AHEAD_LOW_ENTRIES`` are read ahead and more wait on disk only (read before
        the bridge runs dry, so that its window stays full while a file is read)."""
        if self._directory is None or self._read_from() >= self._recent_first:
            return False
        ahead = self._read_ahead
        return not ahead or ahead[-1].seq < self._next or len(ahead) < READ_AHEAD_LOW_ENTRIES

    def _read_from(self) -> int:
        """The first entry :meth:`read_ahead` reads: the one after those read ahead already."""
        ahead = self._read_ahead
        return ahead[-1].seq + 1 if ahead and ahead[-1].seq >= self._next else self._next

    async def read_ahead(self) -> None:
        """Read the file holding the next entry not in memory (in a thread); its entries from there
        on join those read ahead, for :meth:`take`."""
        directory = self._directory
        if directory is None:
            return
        seq = self._read_from()
        files = await asyncio.to_thread(list_files, directory)
        holding = [(first, path) for first, path in files if first <= seq]
        if not holding:
            return
        first, path = holding[-1]
        entries, _ = await asyncio.to_thread(read_file, path, first, self._salt)
        if self._read_from() != seq:  # rewound, taken or dropped meanwhile: read again when asked
            return
        self._read_ahead.extend(e for e in entries if seq <= e.seq < self._recent_first)

    # ------------------------------------------------------------------ acknowledging

    def ack(self, seq: int) -> None:
        """Kafka has entry ``seq`` (or the dead-letter file has it)."""
        if seq < self.head or seq >= self.tail:
            return
        self._taken_received_ms.pop(seq, None)
        self._acked.add(seq)
        self._advance_head()
        if self.head - self._recorded_head >= HEAD_RECORD_EVERY:
            self.record_head()

    def _advance_head(self) -> None:
        acked = self._acked
        while self.head in acked:
            acked.remove(self.head)
            self.head += 1
        if self._next < self.head:
            self._next = self.head
        self._trim_recent()

    def record_head(self) -> None:
        """Write the head to the journal (files it passed are deleted once that is committed)."""
        if self.head != self._recorded_head:
            self._journal.append(SpoolHead(self.head))
            self._journal.release_spool_below(self.head)
            self._recorded_head = self.head

    def tick(self) -> None:
        """Once a second: write a head that moved since."""
        self.record_head()

    def rewind(self) -> None:
        """Hand out again every entry not acknowledged (a new producer, a reconnect)."""
        self._next = self.head
        self._taken_received_ms.clear()
        self._read_ahead.clear()

    def drop_oldest(self) -> int:
        """Give up the oldest entries, in flight ones included, and return how many: up to the start
        of the next spool file (so that file can be deleted) when bytes are short, a tenth of the
        spool (at most to that file's end) when messages are. Those in flight may still reach Kafka."""
        if self.head >= self.tail:
            return 0
        end = self.tail
        if self._directory is not None:
            later = [first for first, _ in list_files(self._directory) if first > self.head]
            if later:
                end = later[0]
        if self.depth >= self.max_messages or self._directory is None:
            # Too many messages (or no files to free): a tenth of them is enough.
            end = min(end, self.head + max(1, self.depth // 10))
        count = end - self.head - sum(1 for seq in self._acked if seq < end)
        self._acked = {seq for seq in self._acked if seq >= end}
        self._taken_received_ms = {seq: ms for seq, ms in self._taken_received_ms.items() if seq >= end}
        self.head = end
        self.dropped += count
        self._advance_head()
        self.record_head()
        return count
