"""Running outbox code on the real MicroPython interpreter (unix port) from pytest."""

from __future__ import annotations

import json
from pathlib import Path

from ferry.hwsim.micropython import DEVICE_LIB_DIR, run_code

REPO_ROOT = Path(__file__).resolve().parents[2]
DEVICE_DIR = REPO_ROOT / "device"
MP_DIR = Path(__file__).with_name("mp")  # MicroPython-side test helpers
MP_PATH = (DEVICE_DIR, MP_DIR, DEVICE_LIB_DIR)
# The ESP32's ~64 KB heap; the unix port's 64-bit objects need about twice as much.
UNIX_HEAP_FOR_64K_ESP32 = 128 * 1024


def run_mp(code: str, heap_bytes: int = UNIX_HEAP_FOR_64K_ESP32, timeout_s: float = 60.0) -> dict:
    """Run `code` on MicroPython; it must print one JSON object as its last line."""
    result = run_code(code, sys_path=MP_PATH, heap_bytes=heap_bytes, timeout_s=timeout_s)
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout.strip().splitlines()[-1])


def lfs_setup(tmp: Path, mountpoint: str = "/fl", blocks: int = 256) -> str:
    """MicroPython lines that mount littlefs (a block device in `tmp`) and bind `bd`."""
    return f"import filebd\nbd = filebd.mount({str(tmp / 'flash.img')!r}, {mountpoint!r}, blocks={blocks})\n"
