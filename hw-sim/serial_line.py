"""The serial line of a virtual ESP32, as a pure state machine (no processes, fds or clocks).

The MicroPython unix port already speaks the friendly REPL, raw REPL and
raw-paste on its stdin/stdout. What it does differently from an ESP32 on a
UART is small, and this module is exactly that difference:

- Ctrl-C: the unix port keeps its terminal raw, so a Ctrl-C byte never becomes
  a KeyboardInterrupt; only SIGINT does, and only while code runs (its SIGINT
  handler is installed for the duration of an execution; otherwise SIGINT
  kills it). `SerialLine.from_host` turns each Ctrl-C into an `Interrupt`, a
  forwarded byte, or a pending interrupt, according to the `InterpreterState`
  the caller observed.
- Soft reboot: Ctrl-D on an empty line (or `sys.exit()` at the REPL) makes the
  unix port exit. The caller restarts the interpreter and asks `boot()` what a
  board would print and in which REPL mode it comes back: after a soft reboot
  in the raw REPL an ESP32 runs boot.py (not main.py) and shows the raw prompt
  again without the friendly banner, so `boot()` pre-feeds Ctrl-A and
  `from_interpreter` removes the banner.
- Line endings: printed text ends lines with "\\n" on the unix port and with
  "\\r\\n" on a board. In the friendly REPL (people and terminals) lone "\\n" is
  sent as "\\r\\n"; the raw REPL stays byte-transparent (programs such as
  mpremote, whose `mount` protocol is binary).

The caller (`ferry.hwsim.serial_bridge`) pumps bytes, sends signals and restarts
processes; time is passed in as `now` (seconds, any monotonic origin).
"""

from __future__ import annotations

import enum
import re
from dataclasses import dataclass

from ferry.hwsim.board import ResetCause

CTRL_A = b"\x01"
CTRL_C = b"\x03"
RAW_HEADER = b"raw REPL; CTRL-B to exit\r\n"
"""Printed by the interpreter on entering the raw REPL (and by a board after a raw soft reboot)."""
FRIENDLY_MARK = b'Type "help()" for more information.\r\n'
"""Second line of the banner printed on entering the friendly REPL."""
SOFT_REBOOT = b"MPY: soft reboot\r\n"
"""What ESP32 MicroPython prints before a soft reboot; mpremote waits for `soft reboot\\r\\n`."""
_BANNER = re.compile(rb'MicroPython [^\r\n]*\r\nType "help\(\)" for more information\.\r\n>>> \r\n')
_BANNER_START = b"MicroPython "
_BANNER_HOLD_MAX_BYTES = 4096
_LONE_LF = re.compile(rb"(?<!\r)\n")
_SCAN_TAIL_BYTES = max(len(RAW_HEADER), len(FRIENDLY_MARK)) - 1

_ROM = b"ets Jun  8 2016 00:22:57\r\n\r\nrst:%s,boot:0x13 (SPI_FAST_FLASH_BOOT)\r\n"
ROM_RESET_REASON = {
    ResetCause.PWRON: b"0x1 (POWERON_RESET)",
    ResetCause.HARD: b"0xc (SW_CPU_RESET)",
    ResetCause.WDT: b"0x7 (TG0WDT_SYS_RESET)",
    ResetCause.DEEPSLEEP: b"0x5 (DEEPSLEEP_RESET)",
}
"""The ESP32 ROM bootloader's `rst:` line for each chip reset (a soft reboot is not one)."""


class ReplMode(enum.Enum):
    """Which REPL the interpreter is in, as last announced on its output."""

    FRIENDLY = "friendly"
    RAW = "raw"


class InterpreterState(enum.Enum):
    """What a SIGINT would do to the interpreter right now (read from /proc by the caller)."""

    ARMED = "armed"
    """Running code with its SIGINT handler installed: SIGINT raises KeyboardInterrupt."""
    IDLE = "idle"
    """Alive without a SIGINT handler (at a prompt, starting up, or `kbd_intr(-1)`): SIGINT would kill it."""
    GONE = "gone"
    """Not running: exited, being restarted, asleep or powered off."""


@dataclass(frozen=True, slots=True)
class ToInterpreter:
    """Bytes for the interpreter's stdin."""

    data: bytes


@dataclass(frozen=True, slots=True)
class ToHost:
    """Bytes for the serial line (every connected client, and the console log)."""

    data: bytes


@dataclass(frozen=True, slots=True)
class Interrupt:
    """Send SIGINT to the interpreter: the equivalent of a Ctrl-C reaching a board's UART."""


Action = ToInterpreter | ToHost | Interrupt


@dataclass(frozen=True, slots=True)
class BootPlan:
    """How to start the interpreter after a reset."""

    announce: bytes
    """Printed on the line before the interpreter starts (ROM `rst:` line or soft-reboot message)."""
    files: tuple[str, ...]
    """Flash files to run before the REPL: boot.py, then main.py unless in the raw REPL."""
    prefeed: bytes
    """Written to the interpreter's stdin before it starts (Ctrl-A to come back in the raw REPL)."""
    mode: ReplMode
    """The REPL the board comes back in."""


class SerialLine:
    """Translate between a serial client and one interpreter process, across its restarts."""

    def __init__(self, pending_interrupt_s: float = 2.0, interrupt_gap_s: float = 0.05) -> None:
        self.pending_interrupt_s = pending_interrupt_s
        """How long a Ctrl-C that arrived while the interpreter could not take it stays deliverable."""
        self.interrupt_gap_s = interrupt_gap_s
        """A Ctrl-C this soon after a SIGINT, to the same interpreter still running code, is part of
        one keypress burst: a second SIGINT could land after its handler is gone and kill it."""
        self.mode = ReplMode.FRIENDLY
        self.at_repl = False
        """The interpreter has reached a prompt since it started (it announced a REPL)."""
        self.user_code_started = False
        """Shims and flash are set up: an interrupt now lands in boot.py, main.py or the REPL."""
        self.interrupts = 0
        self._pending_since: float | None = None
        self._last_interrupt_at: float | None = None
        self._scan_tail = b""
        self._last_byte_out = b""
        self._hold_banner = False
        self._held = b""

    # ------------------------------------------------------------------ lifecycle

    def boot(self, cause: ResetCause, repl_soft_reboot: bool = False) -> BootPlan:
        """The interpreter is about to start after `cause`; a pending Ctrl-C stays pending.

        `repl_soft_reboot`: the interpreter left its REPL (Ctrl-D, `sys.exit()`) rather than
        calling `machine.soft_reset()`; both keep the REPL mode, as on a board.
        """
        if cause is ResetCause.SOFT or repl_soft_reboot:
            announce = SOFT_REBOOT
        else:
            self.mode = ReplMode.FRIENDLY
            announce = _ROM % ROM_RESET_REASON.get(cause, b"0xc (SW_CPU_RESET)")
        raw = self.mode is ReplMode.RAW
        self.at_repl = False
        self.user_code_started = False
        self._last_interrupt_at = None
        self._scan_tail = b""
        self._hold_banner = raw
        self._held = b""
        return BootPlan(announce=announce, files=("boot.py",) if raw else ("boot.py", "main.py"),
                        prefeed=CTRL_A if raw else b"", mode=self.mode)

    def started(self) -> None:
        """The board reported that its shims are loaded and its flash mounted."""
        self.user_code_started = True

    def exited(self) -> list[Action]:
        """The interpreter is gone; returns what was held back of its output."""
        self.at_repl = False
        self.user_code_started = False
        self._last_interrupt_at = None
        held, self._held, self._hold_banner = self._held, b"", False
        return self._emit(held)

    # ------------------------------------------------------------------ host -> interpreter

    def from_host(self, data: bytes, state: InterpreterState, now: float) -> list[Action]:
        """Bytes from a serial client; `state` is the interpreter's, observed just now."""
        actions: list[Action] = []
        self._observe(state)
        parts = data.split(CTRL_C)
        forward = bytearray(parts[0])
        for part in parts[1:]:
            if state is InterpreterState.ARMED and self.user_code_started:
                if forward:
                    actions.append(ToInterpreter(bytes(forward)))
                    forward.clear()
                actions.extend(self._interrupt(now))
            elif state is InterpreterState.IDLE and self.at_repl:
                forward += CTRL_C  # at a prompt, or kbd_intr(-1): the REPL reads it
            else:
                self._pending_since = now
            forward += part
        if forward:
            actions.append(ToInterpreter(bytes(forward)))
        return actions

    def poll(self, state: InterpreterState, now: float) -> list[Action]:
        """Deliver or drop a pending Ctrl-C; call while `pending_deadline` is not None."""
        self._observe(state)
        if self._pending_since is None:
            return []
        if now - self._pending_since > self.pending_interrupt_s:
            self._pending_since = None  # the board never became interruptible: lost, as on a UART
        elif state is InterpreterState.ARMED and self.user_code_started:
            self._pending_since = None
            return self._interrupt(now)
        elif state is InterpreterState.IDLE and self.at_repl:
            self._pending_since = None  # it reached a prompt: nothing left to interrupt
        return []

    @property
    def pending_deadline(self) -> float | None:
        """When the pending Ctrl-C expires, or None when there is none."""
        if self._pending_since is None:
            return None
        return self._pending_since + self.pending_interrupt_s

    def _observe(self, state: InterpreterState) -> None:
        if state is not InterpreterState.ARMED:
            self._last_interrupt_at = None  # the last SIGINT has been handled

    def _interrupt(self, now: float) -> list[Action]:
        if self._last_interrupt_at is not None and now - self._last_interrupt_at < self.interrupt_gap_s:
            return []
        self._last_interrupt_at = now
        self.interrupts += 1
        return [Interrupt()]

    # ------------------------------------------------------------------ interpreter -> host

    def from_interpreter(self, data: bytes) -> list[Action]:
        """Bytes the interpreter wrote to its stdout."""
        self._track_mode(data)
        if self._hold_banner:
            data = self._filter_banner(data)
        return self._emit(data)

    def _track_mode(self, data: bytes) -> None:
        scan = self._scan_tail + data
        raw_at, friendly_at = scan.rfind(RAW_HEADER), scan.rfind(FRIENDLY_MARK)
        if raw_at >= 0 or friendly_at >= 0:
            self.mode = ReplMode.RAW if raw_at > friendly_at else ReplMode.FRIENDLY
            self.at_repl = True
        self._scan_tail = scan[-_SCAN_TAIL_BYTES:]

    def _filter_banner(self, data: bytes) -> bytes:
        """Drop the friendly banner an interpreter restarted into the raw REPL prints first."""
        held = self._held + data
        if RAW_HEADER in held:
            self._hold_banner, self._held = False, b""
            return _BANNER.sub(b"", held, count=1)
        if len(held) > _BANNER_HOLD_MAX_BYTES:
            self._hold_banner, self._held = False, b""
            return held
        start = held.find(_BANNER_START)
        if start < 0:
            start = len(held)
            for keep in range(min(len(held), len(_BANNER_START) - 1), 0, -1):
                if _BANNER_START.startswith(held[-keep:]):
                    start = len(held) - keep
                    break
        self._held = held[start:]
        return held[:start]

    def _emit(self, data: bytes) -> list[Action]:
        if not data:
            return []
        if self.mode is ReplMode.FRIENDLY:
            prefix = b""
            if data[:1] == b"\n" and self._last_byte_out == b"\r":
                prefix, data = b"\n", data[1:]  # the "\r\n" was split between two reads
            data = prefix + _LONE_LF.sub(b"\r\n", data)
        self._last_byte_out = data[-1:]
        return [ToHost(data)]
