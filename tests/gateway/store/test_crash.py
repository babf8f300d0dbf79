"""Crash safety with real processes: SIGKILL a committing child at random moments."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ferry.gateway.store.recovery import recover

CHILD = Path(__file__).with_name("crash_child.py")
REPO = Path(__file__).resolve().parents[3]


@contextmanager
def child(data_dir: Path, seed: int, mode: str) -> Iterator[subprocess.Popen[str]]:
    """Start crash_child.py; it is always killed and reaped on the way out."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen([sys.executable, str(CHILD), str(data_dir), str(seed), mode],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=env, cwd=REPO)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def run_and_kill(data_dir: Path, seed: int, mode: str, rng: random.Random) -> set[int]:
    """One life of the child; returns the msg ids it promised were committed."""
    with child(data_dir, seed, mode) as proc:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        assert line == "ready\n", line + proc.stderr.read()
        time.sleep(rng.uniform(0.02, 0.3))
        os.kill(proc.pid, signal.SIGKILL)
        out, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
    promised: set[int] = set()
    for line in out.splitlines(keepends=True):
        if line.endswith("\n"):  # a line cut by the kill promises nothing
            _batch, first, last = map(int, line.split())
            promised.update(range(first, last + 1))
    return promised


@pytest.mark.parametrize(("seed", "mode"), [(1, "fsync"), (2, "fsync"), (3, "fsync"),
                                            (4, "os")])
def test_every_reported_commit_survives_sigkill(tmp_path: Path, seed: int, mode: str) -> None:
    rng = random.Random(seed)
    promised: set[int] = set()
    for life in range(3):
        promised |= run_and_kill(tmp_path, seed * 10 + life if life else seed, mode, rng)
        state, report = recover(tmp_path)
        missing = promised - set(state.messages)
        assert not missing, f"life {life}: {len(missing)} committed messages lost"
        queued = {msg_id for queue in state.queues.values() for msg_id in queue}
        assert promised <= queued
        assert report.corrupt_regions == 0
    assert len(promised) > 100  # the child really got work done
