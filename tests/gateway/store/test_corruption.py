"""Recovery from damaged stores: torn tails, flipped bytes, bad manifests, interrupted snapshots."""

from __future__ import annotations

import json
import logging
import os
import threading
from pathlib import Path

import pytest

from ferry.gateway.store.journal import Durability, Journal, JournalError
from ferry.gateway.store.layout import MANIFEST, scan, write_manifest
from ferry.gateway.store.records import (
    Enqueued,
    MessageAdded,
    SessionSaved,
    SubscriptionAdded,
    encode_segment_header,
)
from ferry.gateway.store.recovery import recover
from ferry.gateway.store.state import DurableState
from tests.gateway.store.helpers import Commits, batch_bytes, build_state, busy_state

FLUSH_EVERY = 8


def write_store(data_dir: Path, ops: list, *, flush_every: int = FLUSH_EVERY) -> None:
    """One batch of ``flush_every`` records after the other (the last one may be shorter)."""
    commits = Commits()
    journal = Journal(data_dir, Durability.FSYNC, on_commit=commits)
    journal.open(recover(data_dir)[0])
    for i, op in enumerate(ops):
        journal.append(op)
        if i % flush_every == flush_every - 1:
            journal.flush()
            commits.wait_for(journal.pending_batch - 1)
    journal.close()


def only_segment(data_dir: Path) -> Path:
    (segment,) = data_dir.glob("*.seg")
    return segment


@pytest.fixture
def store(tmp_path: Path) -> tuple[Path, list]:
    _, ops = busy_state(clients=3, messages=12)
    write_store(tmp_path, ops)
    return tmp_path, ops


def batches_of(ops: list) -> list[list]:
    """The records of each batch :func:`write_store` wrote."""
    return [ops[start:start + FLUSH_EVERY] for start in range(0, len(ops), FLUSH_EVERY)]


def test_truncating_the_last_batch_at_every_offset(store: tuple[Path, list]) -> None:
    data_dir, ops = store
    segment = only_segment(data_dir)
    original = segment.read_bytes()
    batches = batches_of(ops)
    salt = scan(data_dir).salt
    last = batch_bytes(batches[-1], len(batches), salt=salt)
    assert original.endswith(last)
    keep = len(original) - len(last)
    kept_ops = ops[:-len(batches[-1])]
    without_last = build_state(kept_ops)
    for cut in range(1, len(last)):
        segment.write_bytes(original[:keep + cut])
        state, report = recover(data_dir)
        assert state == without_last
        assert report.records == len(kept_ops) and report.batches == len(batches) - 1
        assert report.truncated_tail_bytes == cut == report.bytes_dropped
        assert report.corrupt_regions == 0
        assert segment.stat().st_size == keep  # cut back on disk
    segment.write_bytes(original)
    state, report = recover(data_dir)
    assert state == build_state(ops) and report.clean


def test_a_flipped_byte_drops_only_that_batch(store: tuple[Path, list],
                                              caplog: pytest.LogCaptureFixture) -> None:
    data_dir, ops = store
    segment = only_segment(data_dir)
    original = segment.read_bytes()
    salt = scan(data_dir).salt
    batches = batches_of(ops)
    framed = [batch_bytes(batch, sequence, salt=salt) for sequence, batch in enumerate(batches, 1)]
    assert original == encode_segment_header(salt) + b"".join(framed)
    victim = len(batches) // 2
    start = len(encode_segment_header(salt)) + sum(map(len, framed[:victim]))
    # magic, salt, segment, sequence, length, crc, the first frame, the last byte
    for at in (start, start + 10, start + 27, start + 35, start + 43, start + 47, start + 50,
               start + len(framed[victim]) - 1):
        damaged = bytearray(original)
        damaged[at] ^= 0x40
        segment.write_bytes(bytes(damaged))
        caplog.clear()
        with caplog.at_level(logging.WARNING, logger="ferry.gateway.store"):
            state, report = recover(data_dir)
        expected = build_state([op for index, batch in enumerate(batches) if index != victim
                                for op in batch])
        assert state == expected
        assert report.records == len(ops) - len(batches[victim])
        assert report.corrupt_regions == 1
        assert report.bytes_dropped == len(framed[victim])
        assert report.truncated_tail_bytes == 0
        assert report.dangling_references == expected.dangling_references
        assert f"skipped {len(framed[victim])} corrupt bytes at offset {start}" in caplog.text


def test_a_zero_filled_tail_is_cut(store: tuple[Path, list]) -> None:
    data_dir, ops = store
    segment = only_segment(data_dir)
    size = segment.stat().st_size
    with segment.open("ab") as f:
        f.write(bytes(8192))  # what a power cut can leave after a file grew
    state, report = recover(data_dir)
    assert state == build_state(ops)
    assert report.truncated_tail_bytes == 8192 and report.corrupt_regions == 0
    assert segment.stat().st_size == size


@pytest.mark.parametrize("manifest", [
    b"\x00\xffgarbage", b"{}", b'{"format": "x", "version": 2, "base": 1, "salt": "SALT"}',
    b'{"format": "ferry-journal", "version": 2, "base": 99, "salt": "SALT"}',
    b'{"format": "ferry-journal", "version": 2, "base": 1, "salt": "00ff"}', None,
], ids=["binary", "empty-object", "wrong-format", "missing-base", "short-salt", "absent"])
def test_a_bad_or_missing_manifest_falls_back_to_the_segments(store: tuple[Path, list],
                                                             manifest: bytes | None) -> None:
    data_dir, ops = store
    salt = scan(data_dir).salt
    if manifest is None:
        (data_dir / MANIFEST).unlink()
    else:
        (data_dir / MANIFEST).write_bytes(manifest.replace(b"SALT", salt.hex().encode()))
    state, report = recover(data_dir)
    assert state == build_state(ops) and report.clean
    journal = Journal(data_dir, Durability.FSYNC, on_commit=Commits())
    journal.open(state)  # repairs the manifest, with the salt of the segment headers
    journal.close()
    repaired = json.loads((data_dir / MANIFEST).read_text())
    assert repaired["base"] == 1 and repaired["salt"] == salt.hex()


def _snapshot_bytes(state: DurableState, data_dir: Path, number: int = 2) -> bytes:
    """Segment ``number`` of the store in ``data_dir`` as a snapshot of ``state``."""
    salt = scan(data_dir).salt
    return encode_segment_header(salt) + batch_bytes(list(state.records()), 1, salt=salt,
                                                     segment=number)


def _new_state(ops: list) -> DurableState:
    """A state different from the store's, standing for what a snapshot wrote."""
    return build_state(ops + [SessionSaved("newcomer", 5, 10)])


def test_an_interrupted_snapshot_leaves_the_old_state(store: tuple[Path, list]) -> None:
    data_dir, ops = store
    half = _snapshot_bytes(_new_state(ops), data_dir)
    (data_dir / "0000000000000002.snap.tmp").write_bytes(half[: len(half) // 2])
    (data_dir / (MANIFEST + ".tmp")).write_bytes(b'{"format": "ferry-jour')
    state, report = recover(data_dir)
    assert state == build_state(ops) and report.clean and report.segments == 1
    journal = Journal(data_dir, Durability.FSYNC, on_commit=Commits())
    journal.open(state)
    journal.close()
    assert not list(data_dir.glob("*.tmp"))


def test_a_finished_snapshot_wins_even_before_the_manifest_switch(
        store: tuple[Path, list]) -> None:
    data_dir, ops = store
    new = _new_state(ops)
    (data_dir / "0000000000000002.snap").write_bytes(_snapshot_bytes(new, data_dir))
    assert json.loads((data_dir / MANIFEST).read_text())["base"] == 1
    state, report = recover(data_dir)
    assert state == new and report.segments == 1 and report.clean


def test_old_segments_left_after_the_switch_are_ignored_then_removed(
        store: tuple[Path, list]) -> None:
    data_dir, ops = store
    new = _new_state(ops)
    (data_dir / "0000000000000002.snap").write_bytes(_snapshot_bytes(new, data_dir))
    write_manifest(data_dir, 2, scan(data_dir).salt)
    state, report = recover(data_dir)
    assert state == new and report.segments == 1
    journal = Journal(data_dir, Durability.FSYNC, on_commit=Commits())
    journal.open(state)
    journal.close()
    assert not (data_dir / "0000000000000001.seg").exists()
    assert recover(data_dir)[0] == new


def test_a_missing_middle_segment_is_logged(tmp_path: Path,
                                            caplog: pytest.LogCaptureFixture) -> None:
    for n in range(3):
        write_store(tmp_path, [SessionSaved(f"c{n}", 5, 0)])
    (tmp_path / "0000000000000002.seg").unlink()
    with caplog.at_level(logging.WARNING, logger="ferry.gateway.store"):
        state, _ = recover(tmp_path)
    assert set(state.sessions) == {"c0", "c2"}
    assert "segments 2 to 2 are missing" in caplog.text


def test_os_errors_propagate(tmp_path: Path) -> None:
    not_a_dir = tmp_path / "file"
    not_a_dir.write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        recover(not_a_dir)


def test_missing_directory_is_an_empty_store(tmp_path: Path) -> None:
    state, report = recover(tmp_path / "nothing")
    assert state == DurableState() and report.records == report.segments == 0


# ------------------------------------------------- crash at every snapshot step

_FAULTABLE = ("open", "write", "fsync", "fdatasync", "rename", "unlink", "ftruncate")


class _Crash(OSError):
    """Stands for the process dying at this call."""


def _arm(monkeypatch: pytest.MonkeyPatch, fail_at: int | None) -> list[str]:
    """Count file-system calls made by the writer thread; fail call number ``fail_at``."""
    calls: list[str] = []
    for name in _FAULTABLE:
        real = getattr(os, name)

        def wrapper(*args, real=real, name=name, **kwargs):
            if threading.current_thread().name == "ferry-journal-writer":
                calls.append(name)
                if len(calls) - 1 == fail_at:
                    raise _Crash(f"simulated crash at {name}")
            return real(*args, **kwargs)

        monkeypatch.setattr(os, name, wrapper)
    return calls


def _snapshot_with_fault(data_dir: Path, monkeypatch: pytest.MonkeyPatch,
                         fail_at: int | None) -> tuple[DurableState, list[str]]:
    state = DurableState()
    commits = Commits()
    journal = Journal(data_dir, Durability.FSYNC, on_commit=commits, segment_max_bytes=600)
    journal.open(state)
    records = [SessionSaved("c", 5, 0), SubscriptionAdded("c", "#", 1, False, False, 0, None)]
    for i in range(1, 30):
        records.append(MessageAdded(i, "t", b"x" * 40, 1, False, b"", None, "p"))
        records.append(Enqueued("c", i, 1, ()))
    for i, record in enumerate(records):
        journal.append(record)
        state.apply(record)
        if i % 6 == 5:
            journal.flush()
            commits.wait_for(journal.pending_batch - 1)
    journal.flush()
    commits.wait_for(journal.pending_batch - 1)
    calls = _arm(monkeypatch, fail_at)
    journal.snapshot(state.records())
    if fail_at is None:
        journal.close()
    else:
        try:
            journal.close()  # a failure once the snapshot has its name stops the journal...
        except JournalError:
            pass
        else:  # ...one while its .tmp is written is given up, and the journal goes on
            assert journal.snapshot_error is not None
    monkeypatch.undo()
    return state, calls


def test_a_crash_at_any_step_of_a_snapshot_leaves_a_recoverable_store(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    expected, steps = _snapshot_with_fault(tmp_path / "clean", monkeypatch, None)
    assert "rename" in steps and "unlink" in steps
    for fail_at, step in enumerate(steps):
        data_dir = tmp_path / f"crash-{fail_at}"
        _snapshot_with_fault(data_dir, monkeypatch, fail_at)
        state, report = recover(data_dir)
        assert state == expected, f"crash at step {fail_at} ({step})"
        assert report.bytes_dropped == 0
        # ...and the store keeps working after the crash.
        extra = SessionSaved("after", 5, 0)
        write_store(data_dir, [extra])
        assert recover(data_dir)[0] == build_state(list(expected.records()) + [extra])
