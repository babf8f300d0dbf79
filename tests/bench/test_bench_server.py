"""`ferry bench server` end to end at a tiny size: it starts its own broker and worker, counts every
reading and prints the table (the figures themselves are not checked: timings never are)."""

from __future__ import annotations

import re
import subprocess
import sys

import pytest

pytestmark = pytest.mark.integration


def test_bench_server_runs_and_reports_every_reading(tmp_path) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "ferry", "bench", "server", "--devices", "5", "--per-device", "40",
         "--partitions", "2", "--no-baseline", "--work-dir", str(tmp_path)],
        capture_output=True, text=True, timeout=240)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "200 readings from 5 devices in 2 partitions" in result.stdout
    rows = re.findall(r"^\| (logic only|worker)[^|]*\| ([\d,]+) \| [\d.]+ \| ([\d,]+) \| [\d.]+× \|$",
                      result.stdout, re.M)
    assert [r[0] for r in rows] == ["logic only", "worker"], result.stdout
    assert rows[0][1] == "200"


def test_bench_server_rejects_nonsense() -> None:
    result = subprocess.run([sys.executable, "-m", "ferry", "bench", "server", "--devices", "0"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode == 2 and "positive" in result.stderr
