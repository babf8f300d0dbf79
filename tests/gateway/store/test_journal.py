"""Journal: group commit, durability modes, segments, snapshots, failures."""

from __future__ import annotations

import errno
import json
import os
import random
import threading
from pathlib import Path

import pytest

from ferry.gateway.store import journal as journal_module
from ferry.gateway.store.journal import Durability, Journal, JournalError
from ferry.gateway.store.layout import MANIFEST
from ferry.gateway.store.records import Dequeued, Enqueued, MessageAdded, SessionSaved
from ferry.gateway.store.recovery import recover
from ferry.gateway.store.state import DurableState
from tests.gateway.store.helpers import Commits, build_state, busy_state

DISK_MODES = [Durability.FSYNC, Durability.OS]


def message(msg_id: int, size: int = 32) -> MessageAdded:
    return MessageAdded(msg_id, "t/x", bytes([msg_id % 256]) * size, 1, False, b"", None, "p")


def opened(data_dir: Path, durability: Durability, commits: Commits, **kwargs) -> Journal:
    state, _ = recover(data_dir)
    compact = kwargs.pop("compact", None)
    journal = Journal(data_dir, durability, on_commit=commits, **kwargs)
    journal.open(state, compact=compact)
    return journal


def files(data_dir: Path, suffix: str) -> list[str]:
    return sorted(p.name for p in data_dir.iterdir() if p.name.endswith(suffix))


@pytest.mark.parametrize("durability", DISK_MODES, ids=lambda d: d.value)
def test_append_flush_close_then_recover(tmp_path: Path, durability: Durability) -> None:
    state, ops = busy_state()
    commits = Commits()
    journal = opened(tmp_path, durability, commits)
    for i, op in enumerate(ops):
        journal.append(op)
        if i % 10 == 9:
            journal.flush()
    journal.close()
    assert commits.numbers == sorted(set(commits.numbers))  # strictly increasing
    assert commits.numbers[-1] == journal.committed_batch == journal.pending_batch - 1
    assert commits.threads == {"ferry-journal-writer"}
    recovered, report = recover(tmp_path)
    assert recovered == state
    assert report.records == len(ops)
    assert report.clean and report.segments == 1
    assert journal.stats.records == len(ops)
    assert journal.stats.bytes_written == sum(p.stat().st_size for p in tmp_path.glob("*.seg"))


def test_group_commit_batches_appends_made_during_a_write(tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    in_write, release = threading.Event(), threading.Event()
    real_sync = journal_module.sync_data

    def slow_sync(fd: int) -> None:
        in_write.set()
        assert release.wait(10)
        real_sync(fd)

    monkeypatch.setattr(journal_module, "sync_data", slow_sync)
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits)
    journal.append(message(0))
    journal.flush()
    assert in_write.wait(10)  # batch 1 is in flight from here on
    for i in range(1, 1001):
        journal.append(message(i))
        assert journal.pending_batch == 2
        if i == 500:
            journal.flush()  # one flush during the in-flight write arms the next batch
    release.set()
    commits.wait_for(2)
    journal.close()
    assert commits.numbers == [1, 2]
    stats = journal.stats
    assert stats.commits == 2 and stats.records == 1001
    assert stats.records_last == 1000 and stats.records_max == 1000
    assert stats.records_avg == pytest.approx(500.5)
    assert len(recover(tmp_path)[0].messages) == 0  # never enqueued: garbage
    assert recover(tmp_path)[1].records == 1001


def test_flush_after_every_append_commits_every_record_in_order(tmp_path: Path) -> None:
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits)
    for i in range(1000):
        journal.append(message(i, 8))
        journal.flush()
    journal.close()
    assert journal.stats.records == 1000
    assert journal.stats.commits == len(commits.numbers) == journal.committed_batch
    assert commits.numbers == list(range(1, journal.committed_batch + 1))


def test_flush_with_nothing_pending_commits_nothing(tmp_path: Path) -> None:
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits)
    journal.flush()
    journal.close()
    assert commits.numbers == [] and journal.committed_batch == 0 and journal.pending_batch == 1


def test_memory_mode_writes_nothing_and_commits_inside_flush(tmp_path: Path) -> None:
    data_dir = tmp_path / "store"
    commits = Commits()
    journal = Journal(data_dir, Durability.MEMORY, on_commit=commits)
    journal.open(DurableState())
    journal.append(SessionSaved("c", 5, 0))
    assert journal.pending_batch == 1
    journal.flush()
    assert commits.numbers == [1] and journal.committed_batch == 1
    journal.snapshot([SessionSaved("c", 5, 0)])
    journal.append(SessionSaved("d", 5, 0))
    journal.close()  # flushes
    assert commits.numbers == [1, 2]
    assert not data_dir.exists()
    assert journal.stats.commits == 2 and journal.stats.bytes_written == 0


@pytest.mark.parametrize(("durability", "syncs_per_batch"),
                         [(Durability.FSYNC, 1), (Durability.OS, 0)], ids=["fsync", "os"])
def test_fsync_per_batch_only_in_fsync_mode(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                            durability: Durability, syncs_per_batch: int) -> None:
    calls: list[str] = []
    for name in ("fsync", "fdatasync"):
        real = getattr(os, name)
        monkeypatch.setattr(os, name, lambda fd, real=real, name=name: (calls.append(name),
                                                                         real(fd))[1])
    commits = Commits()
    journal = opened(tmp_path, durability, commits)
    calls.clear()
    for batch in range(1, 6):
        journal.append(message(batch))
        journal.flush()
        commits.wait_for(batch)
    journal.close()
    assert len(calls) == 5 * syncs_per_batch
    assert recover(tmp_path)[1].records == 5


def test_segments_roll_over_and_all_are_replayed(tmp_path: Path) -> None:
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits, segment_max_bytes=1000)
    ops = [SessionSaved("c", 5, 0)]
    for i in range(1, 201):
        ops += [message(i), Enqueued("c", i, 1, ())]
    for i, op in enumerate(ops):
        journal.append(op)
        if i % 7 == 0:
            journal.flush()
            commits.wait_for(journal.pending_batch - 1)
    journal.close()
    segments = files(tmp_path, ".seg")
    assert len(segments) > 10
    assert all(os.path.getsize(tmp_path / s) < 1000 + 7 * 80 for s in segments)
    state, report = recover(tmp_path)
    assert state == build_state(ops)
    assert report.segments == len(segments) and report.clean


@pytest.mark.parametrize("durability", DISK_MODES, ids=lambda d: d.value)
def test_snapshot_replaces_old_segments(tmp_path: Path, durability: Durability) -> None:
    commits = Commits()
    journal = opened(tmp_path, durability, commits, segment_max_bytes=2000)
    state = DurableState()

    def append(*records) -> None:
        for record in records:
            journal.append(record)
            state.apply(record)

    append(SessionSaved("c", 5, 0))
    for i in range(1, 301):  # churn: most messages come and go
        append(message(i), Enqueued("c", i, 1, ()))
        if i % 10:
            append(Dequeued("c", i))
        if i % 25 == 0:
            journal.flush()
    before = journal.bytes_since_snapshot
    assert before > 0
    append(message(301), Enqueued("c", 301, 1, ()))  # pending: goes before the snapshot
    journal.snapshot(state.records())
    assert journal.bytes_since_snapshot == 0
    append(message(302), Enqueued("c", 302, 1, ()), Dequeued("c", 10))
    assert journal.bytes_since_snapshot > 0
    journal.close()
    assert journal.stats.snapshots == 1
    snaps = files(tmp_path, ".snap")
    assert len(snaps) == 1 and files(tmp_path, ".tmp") == []
    base = int(snaps[0].split(".")[0])
    later = files(tmp_path, ".seg")  # the snapshot is over segment_max_bytes: appends roll over
    numbers = [int(name.split(".")[0]) for name in later]
    assert numbers == list(range(base + 1, base + 1 + len(later)))
    assert json.loads((tmp_path / MANIFEST).read_text())["base"] == base
    recovered, report = recover(tmp_path)
    assert recovered == state and report.clean and report.segments == 1 + len(later)
    assert recovered.max_msg_id == 302
    assert sorted(recovered.queues["c"]) == [i for i in range(20, 303, 10)] + [301, 302]


def test_open_compacts_many_or_large_segments(tmp_path: Path) -> None:
    commits = Commits()
    ops = [SessionSaved("c", 5, 0)]
    for round_no in range(4):
        journal = opened(tmp_path, Durability.OS, commits, open_snapshot_max_segments=3)
        for i in range(round_no * 50 + 1, round_no * 50 + 51):
            for op in (message(i), Enqueued("c", i, 1, ()), Dequeued("c", i)):
                ops.append(op)
                journal.append(op)
        journal.append(ops[0])
        journal.close()
    assert len(files(tmp_path, ".seg")) == 4
    journal = opened(tmp_path, Durability.OS, commits, open_snapshot_max_segments=3)
    assert len(files(tmp_path, ".snap")) == 1 and files(tmp_path, ".seg") == []
    assert journal.bytes_since_snapshot == 0
    journal.close()
    state, report = recover(tmp_path)
    assert state == build_state(ops) and state.max_msg_id == 200
    # Large but few segments: compacted when the snapshot is under half their size.
    journal = opened(tmp_path, Durability.OS, commits, open_snapshot_min_bytes=1)
    assert len(files(tmp_path, ".snap")) == 1  # snapshot is tiny but so is the journal
    journal.close()


def test_open_without_compaction_reports_bytes_to_replay(tmp_path: Path) -> None:
    commits = Commits()
    journal = opened(tmp_path, Durability.OS, commits)
    journal.append(message(1))
    journal.close()
    (segment,) = tmp_path.glob("*.seg")  # header + one batch header + the record
    assert segment.stat().st_size == 32 + 48 + len(journal_module.encode_record(message(1)))
    journal = opened(tmp_path, Durability.OS, commits, compact=False)
    assert journal.bytes_since_snapshot == segment.stat().st_size
    journal.close()


def test_a_failed_write_stops_the_journal(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    errors: list[BaseException] = []
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits, on_error=errors.append)
    journal.append(message(1))
    journal.flush()
    commits.wait_for(1)

    def no_space(fd: int, data: bytes) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(journal_module, "write_all", no_space)
    journal.append(message(2))
    journal.flush()
    with pytest.raises(JournalError) as failure:
        journal.close()
    assert isinstance(failure.value.__cause__, OSError)
    assert isinstance(journal.failed, OSError) and errors == [journal.failed]
    assert commits.numbers == [1] and journal.committed_batch == 1
    with pytest.raises(JournalError):
        journal.append(message(3))
    with pytest.raises(JournalError):
        journal.flush()
    assert recover(tmp_path)[1].records == 1


def test_a_raising_on_commit_does_not_stop_commits(tmp_path: Path) -> None:
    seen: list[int] = []

    def on_commit(batch_no: int) -> None:
        seen.append(batch_no)
        raise RuntimeError("callback bug")

    journal = Journal(tmp_path, Durability.OS, on_commit=on_commit)
    journal.open(DurableState())
    for i in range(3):
        journal.append(message(i))
        journal.flush()
    journal.close()
    assert seen and seen[-1] == journal.committed_batch == journal.pending_batch - 1
    assert journal.stats.records == 3


def test_use_before_open_or_after_close_is_an_error(tmp_path: Path) -> None:
    journal = Journal(tmp_path, Durability.OS, on_commit=Commits())
    with pytest.raises(JournalError):
        journal.append(message(1))
    journal.open(DurableState())
    with pytest.raises(JournalError):
        journal.open(DurableState())
    journal.close()
    journal.close()  # idempotent
    with pytest.raises(JournalError):
        journal.flush()
    with pytest.raises(ValueError):
        Journal(tmp_path, Durability.OS, on_commit=Commits(), segment_max_bytes=0)


def test_stats_track_latency_and_batches(tmp_path: Path) -> None:
    commits = Commits()
    with opened(tmp_path, Durability.FSYNC, commits) as journal:
        for batch in range(1, 4):
            for i in range(batch * 2):
                journal.append(message(i))
            journal.flush()
            commits.wait_for(batch)
        stats = journal.stats
    assert (stats.commits, stats.records, stats.records_last, stats.records_max) == (3, 12, 6, 6)
    assert stats.records_avg == 4.0
    assert 0 < stats.latency_last_s <= stats.latency_max_s
    assert stats.latency_avg_s <= stats.latency_max_s
    assert stats.pending_records == 0


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_snapshots_interleaved_with_group_commits(tmp_path: Path, seed: int) -> None:
    rng = random.Random(seed)
    commits = Commits()
    journal = opened(tmp_path, Durability.OS, commits, segment_max_bytes=rng.choice([512, 4096]))
    state = DurableState()
    queued: list[int] = []
    for client in ("a", "b"):
        journal.append(SessionSaved(client, 5, 0))
        state.apply(SessionSaved(client, 5, 0))
    for msg_id in range(1, 1500):
        ops = [message(msg_id, rng.randint(0, 60)), Enqueued(rng.choice("ab"), msg_id, 1, ())]
        queued.append(msg_id)
        if rng.random() < 0.6:
            victim = queued.pop(rng.randrange(len(queued)))
            ops.append(Dequeued("a" if victim in state.queues.get("a", {}) else "b", victim))
        for op in ops:
            journal.append(op)
            state.apply(op)
        roll = rng.random()
        if roll < 0.3:
            journal.flush()
        elif roll < 0.33:
            journal.snapshot(state.records())
        elif roll < 0.35 and journal.pending_batch > 1:
            commits.wait_for(journal.pending_batch - 1)
    journal.close()
    assert commits.numbers == sorted(set(commits.numbers))
    assert commits.numbers[-1] == journal.committed_batch == journal.pending_batch - 1
    recovered, report = recover(tmp_path)
    assert recovered == state
    assert report.clean
    assert journal.stats.snapshots > 10


def test_append_names_the_batch_the_writer_seals_it_into(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer seals the pending batch by itself when a flush came while it wrote; an append
    just before that lands in the batch it seals, and `pending_batch` then names the next one,
    which nothing may ever seal. What waits for a record waits for the number `append` returned:
    that batch commits with no further flush. (Seen as a CONNACK that never came: the gateway's
    first persistent session waited for the empty next batch.)"""
    writing = threading.Event()
    release = threading.Event()
    real_write = Journal._write_batch

    def slow_write(self: Journal, batch) -> int:
        writing.set()
        assert release.wait(10)
        return real_write(self, batch)

    monkeypatch.setattr(Journal, "_write_batch", slow_write)
    commits = Commits()
    journal = opened(tmp_path, Durability.FSYNC, commits)
    try:
        assert journal.append(message(1)) == 1
        journal.flush()  # batch 1 goes to the writer, which holds it
        assert writing.wait(10)
        assert journal.append(message(2)) == 2
        journal.flush()  # the writer is busy: it seals batch 2 itself when batch 1 is written
        batch = journal.append(message(3))  # lands in batch 2 ...
        release.set()
        commits.wait_for(2)  # ... which the writer sealed and committed with no flush from here
        assert batch == 2 and journal.pending_batch == 3 and journal.committed_batch == 2
    finally:
        release.set()
        journal.close()
