"""Shared by the over-the-air update tests: releases of a small fake app, the inputs a MicroPython
child reads (tests/device/mp/ota_child.py), running it."""

from __future__ import annotations

import hashlib
import json
import struct
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

from ferry import ota as fota
from ferry.hwsim.micropython import interpreter, prelude, run_code
from tests.device.helpers import DEVICE_DIR, MP_PATH

TOPIC = "ferry/lab/dev-0001/ota"
HEAP = 256 * 1024  # the device modules run from .py sources here: compiling them needs room


def app_files(ver: str, pad: int = 0) -> dict[str, bytes]:
    """A two-module app whose modules must come from the same version (app imports util)."""
    return {"app.py": f'VERSION = "{ver}"\nimport util\n'.encode(),
            "util.py": (f'VERSION = "{ver}"\n' + "# padding\n" * pad).encode()}


def make(ver: str, files: dict[str, bytes]) -> fota.Release:
    return fota.make_release(ver, [fota.ReleaseFile(n, d) for n, d in sorted(files.items())])


def hashes(files: dict[str, bytes]) -> dict[str, str]:
    return {n: hashlib.sha256(d).hexdigest() for n, d in files.items()}


def chunk_list(rel: fota.Release, size: int = 256) -> list[bytes]:
    s = rel.stream
    return [fota.encode_chunk(rel.tag, o, s[o:o + size]) for o in range(0, len(s), size)]


@dataclass
class Board:
    """A board's flash (a host folder mounted at / in the child) and the test's inputs (/host)."""

    root: Path

    def __post_init__(self) -> None:
        self.flash.mkdir(parents=True, exist_ok=True)
        self.host.mkdir(parents=True, exist_ok=True)

    @property
    def flash(self) -> Path:
        return self.root / "flash"

    @property
    def host(self) -> Path:
        return self.root / "host"

    def factory(self, files: dict[str, bytes]) -> None:
        """What `ferry flash` left in /: the app's files and the boot file boot_select.py (ota_trial imports it
        from / again when main.py dropped it)."""
        for n, d in files.items():
            (self.flash / n).write_bytes(d)
        (self.flash / "boot_select.py").write_bytes((DEVICE_DIR / "boot_select.py").read_bytes())

    def inputs(self, rel: fota.Release, chunks: list[bytes] | None = None, key: bytes | None = None,
               **override: object) -> list[bytes]:
        chunks = chunk_list(rel) if chunks is None else chunks
        (self.host / "chunks.bin").write_bytes(b"".join(struct.pack(">H", len(c)) + c for c in chunks))
        cmd = json.loads(fota.offer_command(rel, "c-1", key))
        cmd["args"].update(override)
        (self.host / "offer.json").write_text(json.dumps(cmd["args"]))
        return chunks

    def run(self, body: str, lfs: bool = False, delay_ms: int = 0, heap: int = HEAP,
            timeout_s: float = 60.0) -> list[dict]:
        """Run body after the child's setup; the JSON lines it printed."""
        image = repr(str(self.root / "flash.img")) if lfs else "None"
        code = (f"import ota_child as t\nt.setup({str(self.flash)!r}, {str(self.host)!r}, {image}, {delay_ms})\n"
                + body)
        result = run_code(code, sys_path=MP_PATH, heap_bytes=heap, timeout_s=timeout_s)
        lines = [json.loads(x) for x in result.stdout.splitlines() if x.startswith("{")]
        assert result.returncode == 0, result.stdout + result.stderr
        return lines


OFFER_AND_FEED = """
o = ota.Ota({chunk}, key={key})
r = json.loads(o.offer("c-1", t.offer_args()))
t.out(offer=r)
now = 0
cs = t.chunks()
for i in {order}:
    now += {step_ms}
    c = cs[i]
    t.out(i=i, reply=t.feed(o, c, now), next=o.next, state=o.state)
t.out(end=o.state, next=o.next, total=o.total, slot=o.slot, error=o.error)
"""


def offer_and_feed(order: object, chunk: int = 256, key: bytes | None = None, step_ms: int = 10) -> str:
    k = "None" if key is None else f"{key!r}"
    return "import json\nimport ota_download as ota\nimport boot_select\n" + OFFER_AND_FEED.format(chunk=chunk, key=k, order=order,
                                                                                   step_ms=step_ms)


@contextmanager
def device(board: Board) -> Iterator[subprocess.Popen[str]]:
    """The device's update side on a pipe (mp/ota_pipe.py); killed and reaped on the way out."""
    code = prelude(MP_PATH) + f"import ota_pipe\nota_pipe.main({str(board.flash)!r}, {str(board.host)!r})\n"
    proc = subprocess.Popen([interpreter(), "-X", "heapsize=256K", "-c", code], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, bufsize=1)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


def ask(proc: subprocess.Popen[str], line: str) -> dict | None:
    """One line to the pipe device, its reply (None for `-`)."""
    assert proc.stdin is not None and proc.stdout is not None
    proc.stdin.write(line + "\n")
    proc.stdin.flush()
    answer = proc.stdout.readline().strip()
    assert answer, proc.stderr.read() if proc.stderr else ""
    return None if answer == "-" else json.loads(answer)
