"""The serial line's pure state machine: Ctrl-C, soft reboots, REPL modes and line endings.

No processes: interpreter output is fed in as bytes (often one byte at a time) and the
interpreter's state is passed in as the bridge would read it from /proc.
"""

from __future__ import annotations

from ferry.hwsim.board import ResetCause
from ferry.hwsim.serial_line import (
    RAW_HEADER,
    SOFT_REBOOT,
    Action,
    InterpreterState,
    Interrupt,
    ReplMode,
    SerialLine,
    ToHost,
    ToInterpreter,
)

ARMED, IDLE, GONE = InterpreterState.ARMED, InterpreterState.IDLE, InterpreterState.GONE
BANNER = b'MicroPython 9458e3a23f on 2026-07-05; linux [GCC 14.2.1] version\r\nType "help()" for more information.\r\n'


def host_bytes(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ToHost))


def board_bytes(actions: list[Action]) -> bytes:
    return b"".join(a.data for a in actions if isinstance(a, ToInterpreter))


def feed(line: SerialLine, data: bytes, one_at_a_time: bool = True) -> bytes:
    if not one_at_a_time:
        return host_bytes(line.from_interpreter(data))
    return b"".join(host_bytes(line.from_interpreter(data[i:i + 1])) for i in range(len(data)))


def at_friendly_prompt() -> SerialLine:
    line = SerialLine()
    line.boot(ResetCause.PWRON)
    line.started()
    feed(line, BANNER + b">>> ")
    return line


# ------------------------------------------------------------------ Ctrl-C


def test_ctrl_c_while_code_runs_becomes_sigint_and_the_byte_is_not_forwarded() -> None:
    line = at_friendly_prompt()
    actions = line.from_host(b"\r\x03\r\x01", ARMED, now=10.0)
    assert actions == [ToInterpreter(b"\r"), Interrupt(), ToInterpreter(b"\r\x01")]
    assert line.interrupts == 1


def test_ctrl_c_at_a_prompt_reaches_the_repl_as_a_byte() -> None:
    line = at_friendly_prompt()
    assert line.from_host(b"abc\x03", IDLE, now=1.0) == [ToInterpreter(b"abc\x03")]
    assert line.interrupts == 0


def test_a_burst_of_ctrl_c_sends_one_sigint() -> None:
    line = at_friendly_prompt()
    first = line.from_host(b"\x03", ARMED, now=1.0)
    second = line.from_host(b"\x03", ARMED, now=1.01)
    later = line.from_host(b"\x03", ARMED, now=1.5)
    assert (first, second, later) == ([Interrupt()], [], [Interrupt()])


def test_the_burst_guard_does_not_swallow_a_ctrl_c_for_the_next_interpreter() -> None:
    line = at_friendly_prompt()
    assert line.from_host(b"\x03", ARMED, now=1.0) == [Interrupt()]
    line.exited()  # e.g. Ctrl-D right after: a soft reboot within a few ms
    line.boot(ResetCause.SOFT, repl_soft_reboot=True)
    line.started()
    assert line.from_host(b"\x03", ARMED, now=1.02) == [Interrupt()]
    assert line.from_host(b"\x03", ARMED, now=1.03) == []  # same interpreter, still handling it
    feed(line, b"KeyboardInterrupt: \n" + BANNER + b">>> ")
    assert line.from_host(b"\x03", IDLE, now=1.04) == [ToInterpreter(b"\x03")]  # at the prompt
    assert line.from_host(b"\x03", ARMED, now=1.05) == [Interrupt()]  # running again


def test_ctrl_c_during_a_reset_interrupts_main_py_once_it_starts() -> None:
    line = at_friendly_prompt()
    line.exited()
    assert line.from_host(b"\r\x03", GONE, now=5.0) == [ToInterpreter(b"\r")]
    assert line.pending_deadline == 7.0
    line.boot(ResetCause.HARD)
    # CPython starting the interpreter has a SIGINT handler too: not ours to use before "U".
    assert line.poll(ARMED, now=5.1) == []
    line.started()
    assert line.poll(ARMED, now=5.2) == [Interrupt()]
    assert line.pending_deadline is None


def test_a_pending_ctrl_c_is_dropped_at_a_prompt_and_expires_otherwise() -> None:
    line = SerialLine(pending_interrupt_s=2.0)
    line.boot(ResetCause.PWRON)
    line.from_host(b"\x03", IDLE, now=0.0)  # still starting: nothing to interrupt yet
    line.started()
    feed(line, BANNER + b">>> ")  # no main.py: it reached the prompt
    assert line.poll(IDLE, now=0.1) == [] and line.pending_deadline is None

    line.from_host(b"\x03", GONE, now=10.0)  # e.g. asleep
    assert line.poll(ARMED, now=12.5) == [] and line.pending_deadline is None


# ------------------------------------------------------------------ soft reboot and REPL modes


def test_hard_reset_prints_the_rom_line_and_boots_main_py_in_the_friendly_repl() -> None:
    line = SerialLine()
    plan = line.boot(ResetCause.HARD)
    assert b"rst:0xc (SW_CPU_RESET)" in plan.announce
    assert plan.files == ("boot.py", "main.py") and plan.prefeed == b"" and plan.mode is ReplMode.FRIENDLY


def test_soft_reboot_in_the_raw_repl_looks_like_a_board() -> None:
    line = at_friendly_prompt()
    assert feed(line, b"\r\n" + RAW_HEADER + b">") == b"\r\n" + RAW_HEADER + b">"
    assert line.mode is ReplMode.RAW
    assert feed(line, b"OK\r\n") == b"OK\r\n"  # Ctrl-D on an empty line: the unix port exits
    line.exited()

    plan = line.boot(ResetCause.SOFT, repl_soft_reboot=True)
    assert plan.announce == SOFT_REBOOT
    assert plan.files == ("boot.py",) and plan.prefeed == b"\x01" and plan.mode is ReplMode.RAW
    # The restarted interpreter prints boot.py's output, its banner, then answers the Ctrl-A.
    out = feed(line, b"boot.py says hi\n" + BANNER + b">>> \r\n" + RAW_HEADER + b">")
    assert out == b"boot.py says hi\n" + RAW_HEADER + b">"
    assert line.mode is ReplMode.RAW and line.at_repl


def test_banner_filter_streams_unrelated_output_and_gives_up_when_no_raw_prompt_comes() -> None:
    line = SerialLine()
    line.boot(ResetCause.PWRON)
    feed(line, b"\r\n" + RAW_HEADER + b">")
    line.boot(ResetCause.SOFT)
    assert feed(line, b"Micro", one_at_a_time=False) == b""  # could be the banner: held
    assert feed(line, b"controllers rule\n", one_at_a_time=False) == b"Microcontrollers rule\n"
    assert feed(line, b"x" * 5000, one_at_a_time=False) == b"x" * 5000
    assert line.exited() == []


def test_ctrl_b_returns_to_the_friendly_repl_and_a_hard_reset_always_does() -> None:
    line = at_friendly_prompt()
    feed(line, b"\r\n" + RAW_HEADER + b">")
    assert line.mode is ReplMode.RAW
    feed(line, b"\r\n" + BANNER + b">>> ")
    assert line.mode is ReplMode.FRIENDLY
    feed(line, b"\r\n" + RAW_HEADER + b">")
    line.exited()
    assert line.boot(ResetCause.WDT).mode is ReplMode.FRIENDLY
    assert line.mode is ReplMode.FRIENDLY


# ------------------------------------------------------------------ line endings


def test_friendly_repl_output_gets_crlf_line_endings_even_byte_by_byte() -> None:
    line = at_friendly_prompt()
    assert feed(line, b"1+1\r\n2\n>>> ") == b"1+1\r\n2\r\n>>> "
    assert feed(line, b"a\n\nb\r\n") == b"a\r\n\r\nb\r\n"
    assert feed(line, b"a\n\nb\r\n", one_at_a_time=False) == b"a\r\n\r\nb\r\n"


def test_raw_repl_output_is_passed_through_unchanged() -> None:
    line = at_friendly_prompt()
    feed(line, b"\r\n" + RAW_HEADER + b">")
    payload = b"OK\x00\n\r\x03\x04binary\n\n\x04\x04>"
    assert feed(line, payload) == payload
