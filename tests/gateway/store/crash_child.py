"""Child process for test_crash.py: commits records until it is SIGKILLed.

Usage: ``python crash_child.py DATA_DIR SEED DURABILITY``

Recovers DATA_DIR, prints ``ready``, then appends messages (each
``MessageAdded`` + ``Enqueued`` for client ``c<SEED>``) in randomly sized
groups, flushing after each group and taking a snapshot now and then.  For
every committed batch it prints ``<batch> <first msg_id> <last msg_id>`` on
stdout, flushed, from the writer thread: a line on stdout is a promise that
those messages are on disk.
"""

from __future__ import annotations

import random
import sys
import threading
import time
from pathlib import Path

from ferry.gateway.store import (
    Durability,
    Enqueued,
    Journal,
    MessageAdded,
    SessionSaved,
    recover,
)


def main() -> None:
    data_dir, seed, mode = Path(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    rng = random.Random(seed)
    state, _ = recover(data_dir)
    lock = threading.Lock()
    ranges: dict[int, tuple[int, int]] = {}  # batch -> msg ids appended into it
    reported = 0

    def on_commit(batch_no: int) -> None:
        nonlocal reported
        with lock:
            lines = [f"{b} {ranges[b][0]} {ranges[b][1]}\n"
                     for b in range(reported + 1, batch_no + 1) if b in ranges]
            for b in range(reported + 1, batch_no + 1):
                ranges.pop(b, None)
            reported = batch_no
        if lines:
            sys.stdout.write("".join(lines))
            sys.stdout.flush()

    journal = Journal(data_dir, Durability(mode), on_commit=on_commit,
                      segment_max_bytes=rng.choice([4096, 65536, 1 << 20]))
    journal.open(state)
    client = f"c{seed}"
    if client not in state.sessions:
        record = SessionSaved(client, 5, 3600)
        journal.append(record)
        state.apply(record)
    next_id = state.max_msg_id + 1
    print("ready", flush=True)
    while True:
        for _ in range(rng.randint(1, 40)):
            for record in (MessageAdded(next_id, "t/x", rng.randbytes(rng.randint(0, 300)), 1,
                                        False, b"", None, "pub"),
                           Enqueued(client, next_id, 1, ())):
                journal.append(record)
                state.apply(record)
            # Read after appending: if the writer sealed the batch meanwhile we
            # name a later batch, which only delays the promise.
            batch = journal.pending_batch
            with lock:
                first, _ = ranges.get(batch, (next_id, next_id))
                ranges[batch] = (first, next_id)
            next_id += 1
        journal.flush()
        if rng.random() < 0.03:
            journal.snapshot(state.records())
        while journal.pending_batch - journal.committed_batch > 3:
            time.sleep(0.0002)


if __name__ == "__main__":
    main()
