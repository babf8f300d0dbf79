"""Rough throughput figures for the store (not a test; pytest does not collect it).

Usage: ``python tests/gateway/store/bench_journal.py [DATA_PARENT_DIR]``

Prints records/s for ``encode_record`` of a MessageAdded with a 64-byte
payload; commits/s and records/s for FSYNC mode with 1,000-record batches
(append 1,000, flush, wait for the commit, repeat; once with frames encoded
beforehand, once building and encoding every record in the loop); and
records/s for ``recover`` of what the second run wrote.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import timeit
from pathlib import Path

from ferry.gateway.store import Durability, Journal, MessageAdded, encode_record, recover

BATCH = 1000
BATCHES = 300


def message(msg_id: int) -> MessageAdded:
    return MessageAdded(msg_id, "ferry/site-1/dev-01/telemetry", bytes(64), 1, False, b"",
                        None, "dev-01")


def bench_encode() -> float:
    record = message(123456)
    n = 200_000
    best = min(timeit.repeat(lambda: encode_record(record), number=n, repeat=5))
    return n / best


def bench_fsync(data_dir: Path, *, pre_encoded: bool) -> tuple[float, float, float]:
    committed = threading.Condition()
    last = 0

    def on_commit(batch_no: int) -> None:
        nonlocal last
        with committed:
            last = batch_no
            committed.notify()

    journal = Journal(data_dir, Durability.FSYNC, on_commit=on_commit)
    journal.open(recover(data_dir)[0])
    msg_id = 0
    frames = [encode_record(message(i)) for i in range(BATCH)] if pre_encoded else []
    started = time.perf_counter()
    for batch in range(1, BATCHES + 1):
        if pre_encoded:
            for frame in frames:
                journal.append_encoded(frame)
        else:
            for _ in range(BATCH):
                msg_id += 1
                journal.append(message(msg_id))
        journal.flush()
        with committed:
            committed.wait_for(lambda b=batch: last >= b)
    elapsed = time.perf_counter() - started
    journal.close()
    assert journal.stats.commits == BATCHES and journal.stats.records_max == BATCH
    return BATCHES / elapsed, BATCHES * BATCH / elapsed, journal.stats.latency_avg_s


def main() -> None:
    parent = Path(sys.argv[1]) if len(sys.argv) > 1 else None
    print(f"encode_record(MessageAdded, 64-byte payload): {bench_encode():,.0f} records/s")
    with tempfile.TemporaryDirectory(dir=parent) as tmp:
        commits_s, records_s, latency_s = bench_fsync(Path(tmp) / "pre", pre_encoded=True)
        print(f"FSYNC, {BATCH}-record batches, frames pre-encoded: {commits_s:,.0f} commits/s, "
              f"{records_s:,.0f} records/s (write+fdatasync {latency_s * 1000:.2f} ms/batch)")
        commits_s, records_s, latency_s = bench_fsync(Path(tmp), pre_encoded=False)
        print(f"FSYNC, {BATCH}-record batches, building and encoding each record: "
              f"{commits_s:,.0f} commits/s, {records_s:,.0f} records/s "
              f"(write+fdatasync {latency_s * 1000:.2f} ms/batch)")
        started = time.perf_counter()
        _, report = recover(Path(tmp))
        elapsed = time.perf_counter() - started
        print(f"recover: {report.records / elapsed:,.0f} records/s "
              f"({report.records} records)")


if __name__ == "__main__":
    main()
