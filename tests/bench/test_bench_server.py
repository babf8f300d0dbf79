"""`ferry bench server` end to end at a tiny size: it starts its own broker and worker, counts every
reading and prints the table (the figures themselves are not checked: timings never are)."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration


def test_bench_server_runs_and_reports_every_reading(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "bench", "server", "--devices", "5", "--per-device", "40",
         "--partitions", "2", "--deep-sleep-every", "7", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 readings from 5 devices, a new boot every 7 readings in 2 partitions" in result.stdout
    rows = re.findall(r"^\| (logic only|worker)[^|]*\| ([\d,]+) \| [\d.]+ \| ([\d,]+) \| [\d.]+× \|$",
                      result.stdout, re.M)
    assert [r[0] for r in rows] == ["logic only", "worker"], result.stdout
    assert rows[0][1] == "200"
    memory = re.findall(r"^\| worker[^|]*\| ([\d,.]+) MiB \| ([\d,.]+) MiB \| (-?[\d,.]+) KB \| -?[\d.]+× \| "
                        r"([\d,.]+) MiB \| (-?[\d,.]+) KB \|$", result.stdout, re.M)
    assert len(memory) == 1, result.stdout
    settled, peak = (float(memory[0][i].replace(",", "")) for i in (0, 3))
    assert peak >= settled  # the high-water mark of the same process


def test_bench_server_rejects_nonsense() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "bench", "server", "--devices", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "positive" in result.stderr


def test_bench_server_stops_what_it_started_on_sigterm(tmp_path: Path) -> None:
    """`timeout` or a CI runner ends a long run with SIGTERM: the broker and worker it started must stop
    too (before, both were left running, adopted by init)."""
    bench = subprocess.Popen([sys.executable, "-m", "ferry", "bench", "server", "--devices", "5", "--per-device", "40",
                              "--work-dir", str(tmp_path)],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 120
        while not list(tmp_path.glob("idle-*.log")) and time.monotonic() < deadline and bench.poll() is None:
            time.sleep(0.2)
        assert list(tmp_path.glob("idle-*.log")), "the benchmark never started its first worker"
        started = children_in(tmp_path)
        assert started, "no process of the benchmark found"
        bench.send_signal(signal.SIGTERM)
        _, err = bench.communicate(timeout=60)
    finally:
        if bench.poll() is None:
            bench.kill()
    assert bench.returncode == 130 and "interrupted" in err, err[-2000:]
    assert children_in(tmp_path) == [], [Path(f"/proc/{p}/cmdline").read_bytes() for p in children_in(tmp_path)]


def children_in(work_dir: Path) -> list[int]:
    """Processes whose working directory is `work_dir` (the broker and workers the benchmark starts)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                if os.readlink(entry / "cwd") == str(work_dir):
                    found.append(int(entry.name))
            except OSError:
                continue
    return found
