"""A virtual ESP32 in serial mode: its REPL on a pty and a TCP port, for real `mpremote`.

`SerialBridge` is a `VirtualBoard` (same shims, flash folder, RTC/clock state,
watchdog, deep sleep and resets) whose interpreter talks to a serial line
instead of a console log: it boots boot.py and main.py and then drops to the
REPL, like an ESP32 on a USB-UART. Clients reach that line as a pty
(`pty_path`, e.g. `mpremote connect /dev/pts/7 fs ls`) and/or as
`socket_url` (`socket://127.0.0.1:PORT`, pyserial's raw TCP).

What differs between the unix port and a board is decided in the pure
`ferry.hwsim.serial_line.SerialLine`; this module only moves bytes, reads
/proc/PID/status to learn whether a SIGINT would raise KeyboardInterrupt,
sends that SIGINT, and restarts the interpreter where a board would reboot.
See docs/virtual-serial.md.
"""

from __future__ import annotations

import argparse
import array
import errno
import fcntl
import logging
import os
import select
import signal
import socket
import subprocess
import termios
import textwrap
import threading
import time
import tty
from dataclasses import dataclass
from pathlib import Path

from ferry.hwsim.board import BoardConfig, ResetCause, VirtualBoard, _Run, board_setup
from ferry.hwsim.micropython import interpreter
from ferry.hwsim.serial_line import (
    Action,
    InterpreterState,
    Interrupt,
    ReplMode,
    SerialLine,
    ToHost,
    ToInterpreter,
)

log = logging.getLogger(__name__)

_READ_BYTES = 4096
_SIGINT_BIT = 1 << (signal.SIGINT - 1)

SERIAL_BOOT = r"""
def _ferry_boot(files):
    import sys, _board
    _board.control(b"U")
    for name in files:
        try:
            source = open(name).read()
        except OSError:
            continue
        try:
            exec(compile(source, name, "exec"), globals())
        except SystemExit:
            _board.control(b"X")
            import utime
            while True:
                try:
                    utime.sleep_ms(1000)
                except BaseException:
                    pass
        except BaseException as e:
            try:  # as a board prints it: without this function's frame
                import io
                out = io.StringIO()
                sys.print_exception(e, out)
                lines = out.getvalue().split("\n")
                print("\n".join(line for line in lines if not line.startswith('  File "<stdin>"')), end="")
            except MemoryError:
                sys.print_exception(e)
            return


try:
    _ferry_setup()
    _ferry_boot(%r)
except KeyboardInterrupt:
    pass
del _ferry_setup, _ferry_boot
"""
"""Runs after the board's setup (shims, flash at `/`): boot.py, then main.py unless boot.py failed,
in the REPL's global namespace as on a board; then `-i` drops the interpreter into its REPL.
"U" tells the host the files are about to run (interrupts may now be delivered); a SystemExit
out of them is a soft reboot on a board, so it reports "X" and waits to be killed."""


def serial_bootstrap(config: BoardConfig, flash_dir: Path, files: tuple[str, ...]) -> str:
    """The `-c` program of a serial-mode board: board.py's setup in a function, then SERIAL_BOOT."""
    setup = board_setup(config, flash_dir)
    return "def _ferry_setup():\n" + textwrap.indent(setup.strip("\n"), "    ") + "\n" + SERIAL_BOOT % (files,)


@dataclass(frozen=True, slots=True)
class SerialConfig:
    """How one board's serial line is exposed."""

    pty: bool = True
    """Open a pseudo-terminal; its slave is `SerialBridge.pty_path`."""
    tcp_port: int | None = 0
    """Listen on 127.0.0.1:tcp_port for `socket://` clients; 0 picks a free port, None disables."""
    stall_s: float = 0.25
    """A client that takes no output for this long is not reading: the pty's unread bytes are
    discarded, a TCP client is disconnected. Until then the board's output waits (as on a UART)."""
    pending_interrupt_s: float = 2.0
    """A Ctrl-C that arrives while the board is resetting or starting up interrupts its boot.py or
    main.py if they start within this long, and is otherwise lost."""
    to_board_max_bytes: int = 64 * 1024
    """Bytes from clients the interpreter has not read yet; beyond this they are dropped (counted)."""


@dataclass(frozen=True, slots=True)
class SerialStats:
    """Counters of one serial line."""

    interrupts: int
    """SIGINTs delivered (Ctrl-Cs that interrupted running code)."""
    to_host_bytes_discarded: int
    """Output no client took in time (for the pty: at least this many stale bytes)."""
    to_board_bytes_dropped: int
    """Client bytes dropped because the interpreter was not reading its stdin."""
    clients_accepted: int
    """TCP connections accepted."""


class _Sink:
    """One way out to clients: writes without blocking, keeps what the client has not taken yet."""

    def __init__(self, fd: int, stall_s: float) -> None:
        self.fd = fd
        self.stall_s = stall_s
        self.pending = bytearray()
        self.stalled_since: float | None = None

    def send(self, data: bytes, now: float) -> None:
        was_waiting = bool(self.pending)
        self.pending += data
        if not was_waiting:  # otherwise the I/O loop flushes when the client takes more
            self.flush(now)

    def flush(self, now: float) -> None:
        """Write what is pending; start (or keep) the stall clock when not everything fits."""
        while self.pending:
            try:
                written = self._write(bytes(self.pending))
            except BlockingIOError:
                written = 0
            if written <= 0:
                break
            del self.pending[:written]
            self.stalled_since = None
        if self.pending and self.stalled_since is None:
            self.stalled_since = now

    def deadline(self) -> float | None:
        return None if self.stalled_since is None else self.stalled_since + self.stall_s

    def _write(self, data: bytes) -> int:
        return os.write(self.fd, data)


class _PtySink(_Sink):
    def __init__(self, master: int, slave: int, stall_s: float) -> None:
        super().__init__(master, stall_s)
        self.slave = slave

    def give_up(self, now: float) -> int:
        """Nobody read the pty for stall_s: drop its unread bytes, keep the newest. Returns a lower bound."""
        unread = _unread_bytes(self.slave)
        termios.tcflush(self.slave, termios.TCIFLUSH)
        self.stalled_since = None
        self.flush(now)
        return unread


class _SocketSink(_Sink):
    def __init__(self, sock: socket.socket, stall_s: float) -> None:
        super().__init__(sock.fileno(), stall_s)
        self.sock = sock
        self.broken = False

    def _write(self, data: bytes) -> int:
        try:
            return self.sock.send(data)
        except BlockingIOError:
            raise
        except OSError:  # reset by the peer: what it would have read is discarded with it
            self.broken = True
            return len(data)

    def close(self) -> int:
        dropped = len(self.pending)
        self.pending.clear()
        self.sock.close()
        return dropped


def _unread_bytes(fd: int) -> int:
    count = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, count)
    return count[0]


def _open_raw_pty() -> tuple[int, int]:
    master, slave = os.openpty()
    tty.setraw(slave)  # no echo, no line editing, OPOST off: bytes pass unchanged
    os.set_blocking(master, False)
    return master, slave


class SerialBridge(VirtualBoard):
    """A board in serial mode: boots boot.py and main.py, then serves its REPL on a pty and TCP.

    Use as a context manager, or call `power_on()` and finally `close()`. `stop()`,
    `power_cut()` and `power_on()` act on the board only: the pty and the port stay, like a
    USB-UART adapter that stays plugged in.
    """

    def __init__(self, board_dir: Path, config: BoardConfig = BoardConfig(),
                 serial: SerialConfig = SerialConfig()) -> None:
        super().__init__(board_dir, config)
        self.serial = serial
        self.pty_path: str | None = None
        self.socket_url: str | None = None
        self._line = SerialLine(pending_interrupt_s=serial.pending_interrupt_s)
        self._io_lock = threading.Lock()
        self._interp_master, self._interp_slave = _open_raw_pty()
        self._to_board = bytearray()
        self._pid: int | None = None
        self._console = open(self.console_path, "ab", buffering=0)
        self._pty_sink: _PtySink | None = None
        self._listener: socket.socket | None = None
        self._client: _SocketSink | None = None
        self._discarded = self._dropped = self._accepted = 0
        # Per interpreter run; touched by the supervisor thread only.
        self._boot_started = False
        self._reset_requested = False
        self._repl_soft_reboot = False
        if serial.pty:
            master, slave = _open_raw_pty()
            self._pty_sink = _PtySink(master, slave, serial.stall_s)
            self.pty_path = os.ttyname(slave)
        if serial.tcp_port is not None:
            self._listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            self._listener.bind(("127.0.0.1", serial.tcp_port))
            self._listener.listen(4)
            self._listener.setblocking(False)
            self.socket_url = "socket://127.0.0.1:%d" % self._listener.getsockname()[1]
        self._wake_r, self._wake_w = os.pipe()
        self._closing = threading.Event()
        self._io_thread: threading.Thread | None = None

    # ------------------------------------------------------------------ public

    def __enter__(self) -> SerialBridge:
        self.power_on()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def urls(self) -> list[str]:
        """Every address of this serial line, for `mpremote connect`."""
        return [u for u in (self.pty_path, self.socket_url) if u is not None]

    @property
    def repl_mode(self) -> ReplMode:
        with self._io_lock:
            return self._line.mode

    def stats(self) -> SerialStats:
        with self._io_lock:
            return SerialStats(self._line.interrupts, self._discarded, self._dropped, self._accepted)

    def power_on(self) -> None:
        if self._closing.is_set():
            raise RuntimeError("serial bridge is closed")
        if self._io_thread is None:
            self._io_thread = threading.Thread(target=self._io_loop, name=f"serial-{self.dir.name}",
                                               daemon=True)
            self._io_thread.start()
        super().power_on()

    def close(self) -> None:
        """Stop the board and close the pty and the port (end of a test); closing twice is harmless."""
        if self._closing.is_set():
            return
        self.stop()
        self._closing.set()
        os.write(self._wake_w, b"x")
        if self._io_thread is not None:
            self._io_thread.join(10)
            self._io_thread = None
        with self._io_lock:
            if self._client is not None:
                self._client.close()
                self._client = None
            if self._listener is not None:
                self._listener.close()
                self._listener = None
            if self._pty_sink is not None:
                os.close(self._pty_sink.fd)
                os.close(self._pty_sink.slave)
                self._pty_sink = None
            for fd in (self._interp_master, self._interp_slave, self._wake_r, self._wake_w):
                os.close(fd)
            self._console.close()
            self._interp_master = self._interp_slave = self._wake_r = self._wake_w = -1

    # ------------------------------------------------------------------ supervisor hooks (VirtualBoard)

    def _spawn(self, cause: ResetCause) -> _Run:
        repl_soft, self._repl_soft_reboot = self._repl_soft_reboot, False
        if not repl_soft:  # a soft reboot is no chip reset: machine.reset_cause() keeps its value
            self._write_state("reset_cause", str(int(cause)).encode())
        self._boot_started = False
        self._reset_requested = False
        with self._io_lock:
            plan = self._line.boot(cause, repl_soft_reboot=repl_soft)
            self._apply([ToHost(plan.announce)], time.monotonic())
            self._to_board[:0] = plan.prefeed
            self._write_to_board()
        read_fd, write_fd = os.pipe()
        env = dict(os.environ, FERRY_BOARD_STATE=str(self.state_dir), FERRY_BOARD_CTL=str(write_fd))
        code = serial_bootstrap(self.config, self.flash_dir, plan.files)
        process = subprocess.Popen(
            [interpreter(), "-X", f"heapsize={self.config.heap_bytes}", "-i", "-c", code],
            stdin=self._interp_slave, stdout=self._interp_slave, stderr=self._interp_slave,
            env=env, pass_fds=(write_fd,), start_new_session=True)
        os.close(write_fd)
        with self._io_lock:
            self._pid = process.pid
        self._event("boot", cause.name.lower())
        log.debug("board %s: interpreter %d boots %s in the %s REPL", self.dir.name, process.pid,
                  plan.files, plan.mode.value)
        return _Run(process, read_fd)

    def _on_control(self, run: _Run, line: bytes) -> None:
        kind = line[:1]
        if kind == b"U":
            self._boot_started = True
            with self._io_lock:
                self._line.started()
        elif kind in (b"R", b"S", b"s", b"X"):
            # A board resets at once: kill the interpreter where it stands (after `-c` a SystemExit
            # would only drop it into the REPL). The first request wins, as the chip is gone.
            if self._reset_requested:
                return
            self._reset_requested = True
            if kind != b"X":
                super()._on_control(run, line)
            try:
                os.killpg(run.process.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        else:
            super()._on_control(run, line)

    def _after_exit(self, run: _Run) -> ResetCause | None:
        started = self._boot_started
        with self._io_lock:
            self._interpreter_gone()
        cause = super()._after_exit(run)
        if cause is not None or self._stopping.is_set():
            return cause
        if not started:
            log.error("board %s: interpreter exited with status %s before it booted; halting",
                      self.dir.name, run.process.returncode)
            return None
        if run.process.returncode == -signal.SIGINT:
            log.warning("board %s: a Ctrl-C reached the interpreter as its code finished; soft reboot",
                        self.dir.name)
        # It left its REPL (Ctrl-D on an empty line, sys.exit()): a board soft-reboots there.
        self._repl_soft_reboot = True
        return ResetCause.SOFT

    def _stop(self, kill: bool) -> None:
        super()._stop(kill)
        with self._io_lock:
            if self._interp_master >= 0:
                self._interpreter_gone()

    # ------------------------------------------------------------------ I/O (called with _io_lock held)

    def _interpreter_gone(self) -> None:
        """Forward the last output of an interpreter that exited, discard what it did not read."""
        now = time.monotonic()
        while True:
            try:
                data = os.read(self._interp_master, _READ_BYTES)
            except BlockingIOError:
                break
            if not data:
                break
            self._apply(self._line.from_interpreter(data), now)
        termios.tcflush(self._interp_slave, termios.TCIFLUSH)
        self._to_board.clear()
        self._apply(self._line.exited(), now)
        self._pid = None

    def _interpreter_state(self) -> InterpreterState:
        if self._pid is None:
            return InterpreterState.GONE
        try:
            with open(f"/proc/{self._pid}/status") as f:
                status = f.read()
        except OSError:
            return InterpreterState.GONE
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        if fields.get("State", "").strip().startswith(("Z", "X")):
            return InterpreterState.GONE
        caught = int(fields.get("SigCgt", "0").strip(), 16)
        return InterpreterState.ARMED if caught & _SIGINT_BIT else InterpreterState.IDLE

    def _apply(self, actions: list[Action], now: float) -> None:
        for action in actions:
            if isinstance(action, ToHost):
                self._console.write(action.data)
                for sink in self._sinks():
                    sink.send(action.data, now)
            elif isinstance(action, ToInterpreter):
                room = self.serial.to_board_max_bytes - len(self._to_board)
                if len(action.data) > room:
                    self._dropped += len(action.data) - max(room, 0)
                self._to_board += action.data[:max(room, 0)]
                self._write_to_board()
            elif isinstance(action, Interrupt) and self._pid is not None:
                try:
                    os.kill(self._pid, signal.SIGINT)
                except ProcessLookupError:
                    pass

    def _write_to_board(self) -> None:
        while self._to_board:
            try:
                written = os.write(self._interp_master, bytes(self._to_board))
            except BlockingIOError:
                return
            del self._to_board[:written]

    def _sinks(self) -> list[_Sink]:
        return [s for s in (self._pty_sink, self._client) if s is not None]

    def _from_host(self, data: bytes, now: float) -> None:
        self._apply(self._line.from_host(data, self._interpreter_state(), now), now)

    def _accept(self) -> None:
        assert self._listener is not None
        try:
            sock, peer = self._listener.accept()
        except BlockingIOError:
            return
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        if self._client is not None:
            log.info("board %s: serial client %s replaces the previous one", self.dir.name, peer)
            self._discarded += self._client.close()
        self._client = _SocketSink(sock, self.serial.stall_s)
        self._accepted += 1

    def _drop_client(self) -> None:
        if self._client is not None:
            self._discarded += self._client.close()
            self._client = None

    # ------------------------------------------------------------------ I/O thread

    def _io_loop(self) -> None:
        try:
            while not self._closing.is_set():
                self._io_step()
        except Exception:
            log.exception("board %s: serial bridge failed", self.dir.name)

    def _io_step(self) -> None:
        with self._io_lock:
            sinks = self._sinks()
            waiting = [s for s in sinks if s.pending]
            readers = [self._wake_r]
            if not waiting:  # a client not keeping up holds the board's output, like a UART
                readers.append(self._interp_master)
            if self._pty_sink is not None:
                readers.append(self._pty_sink.fd)
            if self._listener is not None:
                readers.append(self._listener.fileno())
            if self._client is not None:
                readers.append(self._client.fd)
            writers = [s.fd for s in waiting]
            if self._to_board:
                writers.append(self._interp_master)
            deadlines = [d for d in (s.deadline() for s in waiting) if d is not None]
            if self._line.pending_deadline is not None:
                deadlines.append(time.monotonic() + 0.01)  # poll /proc until it can be delivered
        timeout = max(0.0, min(deadlines) - time.monotonic()) if deadlines else None
        readable, writable, _ = select.select(readers, writers, [], timeout)
        with self._io_lock:
            if self._closing.is_set():
                return
            now = time.monotonic()
            if self._wake_r in readable:
                os.read(self._wake_r, 64)
            if self._interp_master in writable:
                self._write_to_board()
            for sink in self._sinks():
                if sink.fd in writable:
                    sink.flush(now)
            if self._pty_sink is not None and self._pty_sink.fd in readable:
                self._read_pty(now)
            if self._client is not None and self._client.fd in readable:
                self._read_client(now)
            if self._listener is not None and self._listener.fileno() in readable:
                self._accept()
            if self._interp_master in readable:
                try:
                    data = os.read(self._interp_master, _READ_BYTES)
                except BlockingIOError:
                    data = b""
                if data:
                    self._apply(self._line.from_interpreter(data), now)
            self._check_stalls(now)
            if self._client is not None and self._client.broken:
                self._drop_client()
            if self._line.pending_deadline is not None:
                self._apply(self._line.poll(self._interpreter_state(), now), now)

    def _read_pty(self, now: float) -> None:
        assert self._pty_sink is not None
        try:
            data = os.read(self._pty_sink.fd, _READ_BYTES)
        except BlockingIOError:
            return
        except OSError as e:  # EIO only if the slave were closed; we hold it open
            if e.errno != errno.EIO:
                raise
            return
        self._from_host(data, now)

    def _read_client(self, now: float) -> None:
        assert self._client is not None
        try:
            data = self._client.sock.recv(_READ_BYTES)
        except BlockingIOError:
            return
        except OSError:
            data = b""
        if not data:
            self._drop_client()
            return
        # pyserial's socket:// leaves Nagle on: its next small write waits for our ACK, which
        # Linux would delay up to 40 ms. Acknowledge at once (the flag does not stick).
        self._client.sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_QUICKACK, 1)
        self._from_host(data, now)

    def _check_stalls(self, now: float) -> None:
        if self._pty_sink is not None:
            deadline = self._pty_sink.deadline()
            if deadline is not None and now >= deadline:
                self._discarded += self._pty_sink.give_up(now)
        if self._client is not None:
            deadline = self._client.deadline()
            if deadline is not None and now >= deadline:
                log.info("board %s: serial client stopped reading; disconnected", self.dir.name)
                self._drop_client()


def main(argv: list[str] | None = None) -> None:
    """`python -m ferry.hwsim.serial_bridge BOARD_DIR`: serve one board's REPL until Ctrl-C."""
    parser = argparse.ArgumentParser(description=main.__doc__)
    parser.add_argument("board_dir", type=Path)
    parser.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any free one)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO)
    with SerialBridge(args.board_dir, serial=SerialConfig(tcp_port=args.port)) as bridge:
        print("pty:   ", bridge.pty_path)
        print("socket:", bridge.socket_url, flush=True)
        try:
            while True:
                time.sleep(3600)
        except KeyboardInterrupt:
            pass


if __name__ == "__main__":
    main()
