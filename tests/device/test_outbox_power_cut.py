"""Power cuts: SIGKILL a MicroPython device in the middle of outbox flushes, 30 times per file system.

A child (mp/power_child.py, on the real interpreter) samples, flushes and acks
and says so line by line; the test kills it at random moments (or right after
it announces a flush) and restarts it on the same flash. Most kills are power
cuts (RTC memory cleared), the rest resets (RTC memory kept). After every
restart the test checks what the device recovered against what it said:

- every recovered reading was appended, in order, none corrupt;
- every reading reported flushed and not acked is recovered, unless the
  device's own drop counter (full ring) accounts for it;
- acked readings come back at most `ack_persist_every - 1` times after a power
  cut and never after a reset (the in-flight one is QoS 1's own allowance);
- the device's own `lost_unflushed` equals the readings appended but not
  flushed, and names them (boot, first seq, last seq).
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from ferry.hwsim.micropython import interpreter, prelude
from tests.device.helpers import MP_PATH, UNIX_HEAP_FOR_64K_ESP32

pytestmark = pytest.mark.integration

KILLS = 30
# Small rings so that they wrap and fill up (drops) within 30 lives. On littlefs every
# erase/program of the block device takes 1 ms, so flushes are slow and kills land in them.
CFG = {"posix": {"capacity": 48, "segment_slots": 8, "flush_every": 10, "flush_interval_ms": 150,
                 "ack_persist_every": 8, "delay_ms": 0},
       "lfs": {"capacity": 16, "segment_slots": 8, "flush_every": 10, "flush_interval_ms": 150,
               "ack_persist_every": 8, "delay_ms": 1}}
DUP_BOUND_AFTER_POWER_CUT = 8 - 1  # ack_persist_every - 1

Rec = tuple[int, int]  # (boot, seq)


@contextmanager
def device(folder: Path, fs: str, seed: int, boot: int, link_up: bool) -> Iterator[subprocess.Popen[str]]:
    """One life of the child; always killed and reaped on the way out."""
    code = prelude(MP_PATH) + (
        f"import power_child\npower_child.main({str(folder)!r}, {fs!r}, {seed}, {boot}, "
        f"{link_up}, {json.dumps(CFG[fs])})\n")
    proc = subprocess.Popen([interpreter(), "-X", f"heapsize={UNIX_HEAP_FOR_64K_ESP32}", "-c", code],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
                            text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@dataclass
class Model:
    """What the test knows from the child's lines, across lives."""

    appended: set[Rec] = field(default_factory=set)
    acked: set[Rec] = field(default_factory=set)
    known: list[Rec] = field(default_factory=list)  # on flash and not acked, oldest first
    dropped: int = 0  # device's drop counter as last seen
    lost: int = 0
    # this life
    boot: int = 0
    last_appended: int | None = None
    flushed_to: int = -1
    ack_in_flight: Rec | None = None
    in_flush: bool = False
    # totals for the report
    lost_by_device: int = 0
    lost_by_test_min: int = 0
    lost_by_test_max: int = 0
    max_dups: int = 0
    mid_flush_kills: int = 0
    flushed: int = 0
    appends: int = 0

    def event(self, line: str) -> None:
        kind, *args = line.split()
        b = self.boot
        if kind == "A":
            self.last_appended = int(args[0])
            self.appended.add((b, int(args[0])))
            self.appends += 1
        elif kind == "B":
            self.in_flush = True
        elif kind == "F":
            seq = int(args[0])
            self.known += [(b, s) for s in range(self.flushed_to + 1, seq + 1)]
            self.flushed += seq - self.flushed_to
            self.flushed_to, self.in_flush = seq, False
        elif kind == "D":
            delta = int(args[0]) - self.dropped
            assert 0 < delta <= len(self.known), (delta, self.known)
            del self.known[:delta]
            self.dropped = int(args[0])
        elif kind == "P":
            rec = (int(args[0]), int(args[1]))
            assert self.known and rec == self.known[0], ("replay out of order", rec, self.known[:3])
            self.ack_in_flight = rec
        elif kind == "K":
            rec = (int(args[0]), int(args[1]))
            assert self.known.pop(0) == rec
            self.acked.add(rec)
            self.ack_in_flight = None
        else:
            raise AssertionError(f"unexpected line {line!r}")

    def recovered(self, report: dict, power_cut: bool, first: bool) -> None:
        """Check a restart's report against everything the previous life said."""
        pending: list[Rec] = [tuple(r) if r else None for r in report["pending"]]  # type: ignore[misc]
        assert None not in pending and report["corrupt"] == 0 and report["unknown"] == 0
        assert pending == sorted(set(pending)), "recovered readings out of order or repeated"
        assert set(pending) <= self.appended, "recovered a reading that was never appended"
        if not first:
            assert report["from"] == ("flash" if power_cut else "rtc")
        # Acked readings presented again: only at the front, and bounded.
        dups = sum(1 for r in pending if r in self.acked)
        assert all(r in self.acked for r in pending[:dups])
        assert dups <= (DUP_BOUND_AFTER_POWER_CUT if power_cut else 0), dups
        self.max_dups = max(self.max_dups, dups)
        # Flushed, unacked readings: only the oldest may be gone, and the device counted them.
        rest = pending[dups:]
        present = set(rest)
        gone = 0
        while gone < len(self.known) and self.known[gone] not in present:
            gone += 1
        survivors = self.known[gone:]
        assert rest[:len(survivors)] == survivors, "a flushed reading was lost"
        drop_delta = report["dropped"] - self.dropped
        maybe_acked = self.ack_in_flight is not None and self.known[:1] == [self.ack_in_flight]
        assert gone - drop_delta in ((0, 1) if maybe_acked else (0,)), (gone, drop_delta)
        # Readings beyond the last reported flush: a flush cut off after some slots were whole.
        extras = rest[len(survivors):]
        assert extras == [(self.boot, s) for s in range(self.flushed_to + 1, self.flushed_to + 1 + len(extras))]
        # Readings appended but not flushed: counted by the device itself, exactly.
        on_flash = max([self.flushed_to] + [s for b, s in extras])
        lost = report["lost"] - self.lost
        if self.last_appended is None:
            assert lost == 0
        else:
            # the kill may have come between "A seq" and the append marking it
            assert lost >= 0 and lost in (self.last_appended - on_flash, self.last_appended - 1 - on_flash)
            self.lost_by_test_min += max(0, self.last_appended - 1 - on_flash)
            self.lost_by_test_max += self.last_appended - on_flash
        assert report["last_loss"] == ([self.boot, on_flash + 1, on_flash + lost] if lost else None)
        self.lost_by_device += lost
        self.known = list(pending)
        self.acked -= set(pending[:dups])  # pending again: acking them again is QoS 1's duplicate
        self.dropped, self.lost = report["dropped"], report["lost"]

    def new_life(self, boot: int) -> None:
        if self.in_flush:
            self.mid_flush_kills += 1
        self.boot, self.last_appended, self.flushed_to = boot, None, -1
        self.ack_in_flight, self.in_flush = None, False


def life(folder: Path, fs: str, model: Model, rng: random.Random, boot: int, power_cut: bool,
         kill: bool = True) -> None:
    """Start the device, check its recovery report, let it run, kill it, and read what it said."""
    link_up = rng.random() < 0.7
    with device(folder, fs, rng.randrange(1 << 30), boot, link_up) as proc:
        assert proc.stdout is not None
        first = proc.stdout.readline()
        assert first.startswith("R "), first + proc.stdout.read() + (proc.stderr.read() if proc.stderr else "")
        report = json.loads(first[2:])
        model.recovered(report, power_cut, first=boot == 1)
        assert report["free"] > 90_000, report["free"]
        model.new_life(boot)
        if not kill:
            return
        at_flush = rng.random() < 0.5
        flushes_to_wait = rng.randint(1, 4)
        timer = threading.Timer(rng.uniform(0.05, 0.35), proc.kill)
        if not at_flush:
            timer.start()
        try:
            for line in proc.stdout:
                if not line.endswith("\n"):
                    break  # a line cut by the kill says nothing
                model.event(line)
                if at_flush and line == "B\n":
                    flushes_to_wait -= 1
                    if not flushes_to_wait:
                        time.sleep(rng.uniform(0, 0.004))
                        os.kill(proc.pid, signal.SIGKILL)
        finally:
            timer.cancel()
        proc.wait(timeout=30)
        assert proc.returncode == -signal.SIGKILL, proc.stderr.read() if proc.stderr else ""


@pytest.mark.parametrize("fs", ["posix", "lfs"])
def test_power_cuts_lose_nothing_flushed_and_count_what_they_lose(tmp_path: Path, fs: str) -> None:
    rng = random.Random(f"ferry-outbox-{fs}")
    model = Model()
    power_cut = True
    for boot in range(1, KILLS + 1):
        life(tmp_path, fs, model, rng, boot, power_cut)
        power_cut = rng.random() < 0.7
        if power_cut:
            (tmp_path / "rtc.bin").unlink(missing_ok=True)
    life(tmp_path, fs, model, rng, KILLS + 1, power_cut, kill=False)
    print(f"\n{fs}: {model.appends} appends, {model.flushed} reported flushed, "
          f"{len(model.acked)} acked, dropped {model.dropped}, lost unflushed {model.lost_by_device} "
          f"(test: {model.lost_by_test_min}..{model.lost_by_test_max}), max acked re-presented {model.max_dups}, "
          f"kills inside a flush {model.mid_flush_kills}")
    assert model.appends > 300 and len(model.acked) > 100  # the device got real work done
    assert model.lost_by_device > 0 and model.dropped > 0  # both kinds of loss happened and were counted
    assert model.lost_by_test_min <= model.lost_by_device <= model.lost_by_test_max
    assert model.mid_flush_kills >= (5 if fs == "lfs" else 1)
