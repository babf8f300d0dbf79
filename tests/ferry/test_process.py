"""ManagedProcess (ferry/process.py): stopping a process never hangs its owner."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

from ferry import process
from ferry.process import ManagedProcess


def test_stop_returns_when_subprocess_s_wait_lock_was_left_held(tmp_path: Path, monkeypatch) -> None:
    """A signal handler that raises between `Popen._waitpid_lock.acquire()` and the `try` after it
    (the demo's Ctrl-C during start-up) leaves the lock held; `Popen.wait()` without a timeout then
    blocks for ever. A demo hung so in its clean-up, its worker long dead. `stop` must still return."""
    monkeypatch.setattr(process, "KILL_WAIT_S", 0.5, raising=False)
    sleeper = ManagedProcess("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], tmp_path / "log")
    sleeper.start()
    assert sleeper._popen._waitpid_lock.acquire(False)  # as the interrupted poll() left it
    done = threading.Event()
    thread = threading.Thread(target=lambda: (sleeper.stop(grace_s=0.2), done.set()), daemon=True)
    thread.start()
    try:
        assert done.wait(30), "stop() hangs"
    finally:
        sleeper._popen._waitpid_lock.release()
        sleeper.stop()
    assert sleeper.poll() is not None  # SIGKILLed, and reaped once the lock was free
