"""`ferry bench latency`: its table and its refusals (a whole run is a `ferry demo` per profile, minutes;
the demo's latency line itself is checked by tests/ferry/test_demo.py)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from ferry.bench.latency import main, render, run_profile


def row(profile: str, p50: float | None, p95: float | None, p99: float | None, unaccounted: int = 0) -> dict:
    return {"profile": profile, "exit": 0, "wall_s": 100.0, "log": "x.log", "after_s": 41.5, "readings": 9000,
            "p50_s": p50,
            "p95_s": p95, "p99_s": p99, "received": 9000, "unaccounted": unaccounted}


def test_the_table_gives_each_profile_beside_the_perfect_link() -> None:
    table = render([row("perfect", 0.2, 0.5, 1.0), row("cellular", 0.5, 1.5, None),
                    {"profile": "wifi-flaky", "exit": 1, "error": "no --json from the demo"}], 200)
    lines = table.splitlines()
    assert "200 devices per run, outbox flush interval the firmware's default" in lines[0]
    assert render([], 20, 0).splitlines()[0].endswith("outbox flush interval 0 ms")
    assert lines[2].split()[:5] == ["perfect", "9000", "0.20", "0.50", "1.00"]
    assert "2.5x / 3.0x / -" in lines[3] and lines[3].split()[4] == "-"
    assert lines[3].endswith("41.5 s (every board online)")
    assert lines[4] == "wifi-flaky   no --json from the demo"


def test_a_demo_that_writes_no_report_is_a_failed_row(tmp_path: Path, monkeypatch) -> None:
    import ferry.bench.latency as latency

    args = argparse.Namespace(devices=2, duration=1.0, sample_ms=1000, seed=1, outbox_flush_ms=0)
    assert latency.demo_command("cellular", args, tmp_path / "r.json", tmp_path)[-2:] == ["--outbox-flush-ms", "0"]
    monkeypatch.setattr(latency, "demo_command", lambda *a: ["false"])
    failed = run_profile("wifi-good", args, tmp_path)
    assert failed["exit"] == 1 and "no --json" in failed["error"]
    monkeypatch.setattr(latency, "demo_command", lambda profile, args, json_path, work: [
        "sh", "-c", f"echo '{json.dumps(report)}' > {json_path}"])
    report = {"latency": None, "total": {"received": 5, "unaccounted": 1}}
    ran = run_profile("wifi-good", args, tmp_path)
    assert (ran["exit"], ran["received"], ran["unaccounted"], ran["p50_s"], ran["after_s"]) == (0, 5, 1, None, None)
    report["latency"] = {"readings": 5, "p50_s": 0.9, "p95_s": 2.0, "p99_s": 3.0}
    report["latency_after_warm_up"] = {"readings": 3, "p50_s": 0.2, "p95_s": 0.4, "p99_s": 0.5, "after_s": 12.5}
    ran = run_profile("wifi-good", args, tmp_path)
    assert (ran["readings"], ran["p50_s"], ran["after_s"]) == (3, 0.2, 12.5)  # the boards' start-up left out


def test_unknown_profiles_and_bad_numbers_are_refused(capsys) -> None:
    assert main(["--profiles", "wifi-good,dialup"]) == 2
    assert "unknown profile dialup" in capsys.readouterr().err
    assert main(["--devices", "0"]) == 2
