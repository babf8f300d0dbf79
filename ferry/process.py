"""Start and stop the helper processes Ferry runs (local Kafka broker, gateway, boards).

One place decides how a child is started (own process group, output to a log
file so a chatty child can never block on a full pipe), how readiness is
awaited, and how it is stopped (SIGTERM, then SIGKILL after a grace period), so
tests, the demo and benchmarks never leak processes.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

STOP_GRACE_S = 10.0
KILL_WAIT_S = 10.0
"""How long `kill` waits to reap what it SIGKILLed. Bounded: an exception a signal handler raised
between subprocess's `_waitpid_lock.acquire()` and the `try` after it (the demo's Ctrl-C during
start-up, raised while it polled a starting worker) leaves that lock held, and `Popen.wait()` with
no timeout then blocks for ever (a demo was seen hung so in its clean-up)."""
POLL_INTERVAL_S = 0.02


class ProcessFailed(RuntimeError):
    """A managed process exited or never became ready; carries its log tail."""


def wait_until(predicate: Callable[[], bool], timeout_s: float, poll_s: float = POLL_INTERVAL_S) -> bool:
    """Poll `predicate` until it is true or `timeout_s` passes; returns its last value."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(poll_s)
    return predicate()


def free_port(host: str = "127.0.0.1") -> int:
    """Return a TCP port on `host` that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


class ManagedProcess:
    """A child process with a log file, a readiness check and a guaranteed stop."""

    def __init__(self, name: str, argv: Sequence[str], log_path: Path,
                 env: dict[str, str] | None = None, cwd: Path | None = None) -> None:
        self.name = name
        self.argv = list(argv)
        self.log_path = log_path
        self._env = env
        self._cwd = cwd
        self._popen: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        assert self._popen is not None, f"{self.name} was not started"
        return self._popen.pid

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        with open(self.log_path, "ab") as log:
            self._popen = subprocess.Popen(
                self.argv, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=self._env, cwd=self._cwd, start_new_session=True,
            )

    def poll(self) -> int | None:
        """Exit status, or None while running."""
        return None if self._popen is None else self._popen.poll()

    def log_tail(self, max_bytes: int = 4000) -> str:
        try:
            data = self.log_path.read_bytes()
        except FileNotFoundError:
            return ""
        return data[-max_bytes:].decode("utf-8", "replace")

    def wait_ready(self, is_ready: Callable[[], bool], timeout_s: float) -> None:
        """Poll `is_ready` until it returns True; fail early if the process exits."""
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            status = self.poll()
            if status is not None:
                raise ProcessFailed(f"{self.name} exited with {status}:\n{self.log_tail()}")
            if is_ready():
                return
            time.sleep(POLL_INTERVAL_S)
        raise ProcessFailed(f"{self.name} not ready after {timeout_s} s:\n{self.log_tail()}")

    def kill(self) -> None:
        """SIGKILL the whole process group at once, as a power cut would."""
        if self._popen is not None and self._popen.poll() is None:
            os.killpg(self._popen.pid, signal.SIGKILL)
            try:
                self._popen.wait(KILL_WAIT_S)
            except subprocess.TimeoutExpired:
                pass  # killed, not reaped here (see KILL_WAIT_S): the parent's exit hands it to init

    def stop(self, grace_s: float = STOP_GRACE_S) -> int | None:
        """SIGTERM, wait up to `grace_s`, then SIGKILL; returns the exit status."""
        if self._popen is None:
            return None
        if self._popen.poll() is None:
            try:
                os.killpg(self._popen.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
            try:
                self._popen.wait(grace_s)
            except subprocess.TimeoutExpired:
                self.kill()
        # Reap anything left in the group (grandchildren of a killed parent).
        try:
            os.killpg(self._popen.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        return self._popen.returncode

    def __enter__(self) -> "ManagedProcess":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt in this block, so the `with` blocks that stop the processes
    a command started run (by default SIGTERM ends Python at once and leaves them running)."""
    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
