"""The bridge's spool on disk: entries written with the journal's batches, read back in order from
memory or from disk, acknowledged out of order with the head moving in order, files deleted once a
committed head passed them, and everything recovered after a crash."""

from __future__ import annotations

import asyncio
import struct
import threading
import zlib
from pathlib import Path

import pytest

from ferry.gateway.store import Durability, Journal, recover
from ferry.gateway.store.spool import (
    ENTRY_DECODERS, FIRST_ENTRY_TYPE, NOT_CHECKED, SPOOL_DIR, SpoolEntry, encode_entry, list_files, read_file,
)
from ferry.gateway.store.spool_queue import SpoolQueue


class Commits:
    """on_commit for a journal: the highest batch committed, waitable."""

    def __init__(self) -> None:
        self.batch = 0
        self._cond = threading.Condition()

    def __call__(self, batch: int) -> None:
        with self._cond:
            self.batch = batch
            self._cond.notify_all()

    def wait_for(self, batch: int) -> None:
        with self._cond:
            assert self._cond.wait_for(lambda: self.batch >= batch, timeout=10)


class Store:
    """A journal with its spool queue, as the gateway opens them."""

    def __init__(self, data_dir: Path, *, file_max_bytes: int = 4096, recent_max_entries: int = 20_000,
                 max_messages: int = 1_000_000, max_bytes: int = 1 << 30) -> None:
        state, _ = recover(data_dir)
        self.commits = Commits()
        self.journal = Journal(data_dir, Durability.FSYNC, on_commit=self.commits,
                               spool_file_max_bytes=file_max_bytes)
        self.journal.open(state)
        self.spool = SpoolQueue(self.journal, data_dir / SPOOL_DIR, self.journal.salt, state.spool_head,
                                self.journal.spool_opened.tail, max_messages=max_messages, max_bytes=max_bytes,
                                recent_max_entries=recent_max_entries, recent_max_bytes=1 << 20)

    def commit(self) -> None:
        self.journal.flush()
        self.commits.wait_for(self.journal.pending_batch - 1)
        self.spool.committed(self.commits.batch)

    def append(self, count: int, start: int = 0) -> None:
        """`count` entries, committed 25 at a time (a file holds whole batches)."""
        for n in range(start, start + count):
            self.spool.append(f"ferry/s/d{n % 7}/telemetry", b"reading %06d" % n, 1, 1_700_000_000_000 + n)
            if n % 25 == 24:
                self.commit()
        self.commit()

    def take_all(self) -> list[SpoolEntry]:
        """Everything the spool hands out now, reading files back when it must."""
        taken: list[SpoolEntry] = []
        while True:
            batch = self.spool.take(1000)
            taken += batch
            if self.spool.needs_read:
                asyncio.run(self.spool.read_ahead())
            elif not batch:
                return taken

    def close(self) -> None:
        self.journal.close()


def payloads(entries: list[SpoolEntry]) -> list[bytes]:
    return [e.payload for e in entries]


@pytest.mark.parametrize("checked_ts_ms", [NOT_CHECKED, 0, 1_732_480_000_000])
def test_entry_frames_round_trip_and_are_checked(checked_ts_ms: int) -> None:
    entry = SpoolEntry(2**40, "ferry/s/dév/telemetry", b"\x00\xff" * 10, 1, 1_732_480_000_123, checked_ts_ms)
    frame = encode_entry(entry)
    assert len(frame) == entry.size
    assert ENTRY_DECODERS[frame[8]](frame, 9, len(frame)) == entry


def test_an_entry_of_the_first_format_is_read_without_a_verdict() -> None:
    """Spool files written before entries kept the contract check's verdict still drain after an
    upgrade: their entries are checked when produced."""
    topic = "ferry/s/d/telemetry".encode()
    body = struct.pack(">BQQBH", FIRST_ENTRY_TYPE, 7, 1_732_480_000_123, 1, len(topic)) + topic + b"payload"
    frame = struct.pack(">II", len(body), zlib.crc32(body)) + body
    assert ENTRY_DECODERS[frame[8]](frame, 9, len(frame)) == SpoolEntry(
        7, "ferry/s/d/telemetry", b"payload", 1, 1_732_480_000_123, NOT_CHECKED)


def test_entries_come_back_in_order_from_memory_and_from_disk(tmp_path: Path) -> None:
    store = Store(tmp_path, recent_max_entries=50)  # most of them must be read back from files
    store.append(500)
    assert len(list_files(tmp_path / SPOOL_DIR)) > 1
    taken = store.take_all()
    assert payloads(taken) == [b"reading %06d" % n for n in range(500)]
    assert [e.seq for e in taken] == list(range(500))
    assert store.spool.depth == 500  # handed out, not acknowledged
    store.close()


def test_the_head_moves_in_order_and_files_go_once_a_committed_head_passed_them(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(300)
    files_before = list_files(tmp_path / SPOOL_DIR)
    assert len(files_before) >= 3
    taken = store.take_all()
    for entry in reversed(taken[:200]):  # Kafka acknowledges out of order
        store.spool.ack(entry.seq)
    assert store.spool.head == 200 and store.spool.depth == 100
    store.spool.ack(250)
    assert store.spool.head == 200  # 200..249 are not acknowledged yet
    store.spool.record_head()
    store.commit()
    remaining = list_files(tmp_path / SPOOL_DIR)
    assert remaining and remaining[0][0] <= 200 and len(remaining) < len(files_before)
    for first, path in remaining:
        entries, _ = read_file(path, first, store.journal.salt)
        assert entries[-1].seq >= 200  # only files with an entry not acknowledged are left
    store.close()


def test_a_crash_resends_from_the_recorded_head_and_keeps_the_tail(tmp_path: Path) -> None:
    store = Store(tmp_path)
    store.append(100)
    for entry in store.take_all()[:40]:
        store.spool.ack(entry.seq)
    store.spool.record_head()
    store.commit()
    store.append(10, start=100)
    store.close()  # (a SIGKILL is the journal tests' business; here: the files as left)
    again = Store(tmp_path)
    assert (again.spool.head, again.spool.tail) == (40, 110)
    assert payloads(again.take_all()) == [b"reading %06d" % n for n in range(40, 110)]
    again.spool.append("ferry/s/x/telemetry", b"after", 1, 0)
    assert again.spool.tail == 111  # sequence numbers go on, never reused
    again.close()


def test_a_torn_batch_at_the_end_of_the_last_file_is_cut(tmp_path: Path) -> None:
    store = Store(tmp_path, file_max_bytes=1 << 20)
    store.append(20)
    store.close()
    first, path = list_files(tmp_path / SPOOL_DIR)[-1]
    size = path.stat().st_size
    with open(path, "ab") as file:
        file.write(b"FBAT" + b"\x00" * 30)  # half a batch header: a write cut short
    again = Store(tmp_path)
    assert path.stat().st_size == size
    assert (again.spool.head, again.spool.tail) == (0, 20)
    assert len(again.take_all()) == 20
    again.close()


def test_limits_and_drop_oldest(tmp_path: Path) -> None:
    store = Store(tmp_path, max_messages=100)
    store.append(100)
    assert not store.spool.has_room(10)
    dropped = store.spool.drop_oldest()
    assert dropped == 10 and store.spool.head == 10 and store.spool.dropped == 10
    assert store.spool.has_room(10)
    assert [e.seq for e in store.take_all()][:1] == [10]
    store.commit()
    store.close()
    assert Store(tmp_path).spool.head == 10  # the drop was recorded like an acknowledgement


def test_bytes_count_the_files_and_what_is_not_written_yet(tmp_path: Path) -> None:
    store = Store(tmp_path, max_bytes=20_000)
    assert store.spool.bytes == 0
    store.spool.append("t", b"x" * 100, 1, 0)
    pending = store.spool.bytes
    assert pending >= 100
    store.commit()
    assert store.spool.bytes >= pending  # now the file's, header and batch included
    assert store.spool.bytes == store.journal.spool_bytes_on_disk  # what was pending is not counted twice
    while store.spool.has_room(100):
        store.spool.append("t", b"x" * 100, 1, 0)
    assert store.spool.bytes + 100 > 20_000 - 100
    store.commit()
    assert store.spool.bytes == store.journal.spool_bytes_on_disk
    store.close()


def test_memory_durability_keeps_entries_in_memory_until_acknowledged(tmp_path: Path) -> None:
    commits = Commits()
    journal = Journal(tmp_path, Durability.MEMORY, on_commit=commits)
    journal.open(recover(tmp_path)[0])
    spool = SpoolQueue(journal, None, b"", 0, 0, max_messages=1000, max_bytes=1 << 20, recent_max_entries=5)
    for n in range(50):
        spool.append("t", b"%d" % n, 1, 0)
    journal.flush()
    taken = spool.take(100)
    assert [e.payload for e in taken] == [b"%d" % n for n in range(50)]
    for entry in taken:
        spool.ack(entry.seq)
    assert spool.depth == 0
    journal.close()


@pytest.mark.parametrize("entries", [1, 257])
def test_rewind_hands_out_what_is_not_acknowledged_again(tmp_path: Path, entries: int) -> None:
    store = Store(tmp_path)
    store.append(entries)
    first = store.take_all()
    store.spool.ack(first[0].seq)
    store.spool.rewind()
    assert [e.seq for e in store.take_all()] == [e.seq for e in first[1:]]
    store.close()


def test_the_next_file_is_read_before_what_was_read_ahead_runs_out(tmp_path: Path) -> None:
    """A backlog drains without the bridge waiting for a file: while entries read ahead are still
    there to hand out, the next file is read too (the old spool read only once they ran out, and the
    bridge's window emptied meanwhile)."""
    store = Store(tmp_path, recent_max_entries=50)
    store.append(500)
    spool = store.spool
    assert spool.needs_read and not spool.take(10)  # the first entry is on disk only
    asyncio.run(spool.read_ahead())
    first_file = spool.take(1)
    assert [e.seq for e in first_file] == [0]
    assert spool.needs_read  # entries are still read ahead, and fewer than the low-water mark
    asyncio.run(spool.read_ahead())
    taken = first_file + spool.take(1000)
    files = list_files(tmp_path / SPOOL_DIR)
    assert taken[-1].seq >= files[1][0]  # one take reached into the second file read back
    taken += store.take_all()
    assert [e.seq for e in taken] == list(range(500))
    store.close()


def test_a_read_ahead_overtaken_by_a_rewind_is_dropped(tmp_path: Path) -> None:
    store = Store(tmp_path, recent_max_entries=50)
    store.append(300)
    spool = store.spool

    async def rewind_while_reading() -> None:
        await spool.read_ahead()
        spool.take(20)
        reading = asyncio.ensure_future(spool.read_ahead())  # reads from where the read-ahead ends
        await asyncio.sleep(0)
        spool.rewind()  # hands everything out again, from the head: that file's entries are not next
        await reading

    asyncio.run(rewind_while_reading())
    assert [e.seq for e in store.take_all()] == list(range(300))
    store.close()
