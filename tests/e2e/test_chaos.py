"""`ferry demo --chaos --sites 2`, short: every fault at least once in ~30 s of running, on two sites whose
gateways bridge into one Kafka and one worker group, a device moving between them, and still every reading
accounted for (docs/demo.md, "Chaos" and "Two sites"). The long runs are `ferry demo --chaos --duration ...`
by hand."""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import pytest

from tests.ferry.test_demo import run_under_subreaper


@pytest.mark.integration
def test_chaos_on_two_sites_every_fault_once_and_every_reading_accounted_for(tmp_path: Path) -> None:
    report = tmp_path / "chaos.json"
    argv = [sys.executable, "-m", "ferry", "demo", "--chaos", "--sites", "2", "--devices", "4", "--duration", "30",
            "--sample-ms", "500", "--power-cuts-per-min", "8", "--seed", "1", "--web-port", "0",
            "--live-every", "5", "--drain-timeout", "60", "--work-dir", str(tmp_path / "work"), "--json", str(report)]
    started = time.monotonic()
    result, output = run_under_subreaper(argv, timeout_s=240)
    elapsed = time.monotonic() - started
    logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in
                     sorted((tmp_path / "work").glob("*/*.log")))
    assert result["leaked"] == [], f"the demo left processes running: {result['leaked']}"
    assert result["rc"] == 0, f"{output[-8000:]}\n{logs}"

    summary = json.loads(report.read_text())
    t = summary["total"]
    assert summary["ok"] and summary["drained"]
    assert t["received"] > 0 and t["unaccounted"] == 0
    assert all(d["unaccounted"] == 0 for d in summary["devices"]) and len(summary["devices"]) == 4
    assert t["generated"] == t["received"] + t["dropped_at_device"]
    assert t["lost_at_device_server"] == t["dropped_at_device"]
    assert summary["server_accounting"]["received"] == t["received"]

    # Each fault happened, and did something.
    chaos = summary["chaos"]
    assert chaos["failed"] is None
    events = {}
    for e in chaos["events"]:
        assert not e.get("error"), e
        events.setdefault(e["kind"], []).append(e)
    assert not events.get("worker_crash"), events.get("worker_crash")  # no worker exited by itself
    kills = events["gateway_kill"]
    assert len(kills) == 2 and all(k["restarted"] for k in kills)
    assert kills[0]["target"] != kills[1]["target"]  # each site's gateway killed once
    assert kills[0]["during_uplink_outage"], "the first gateway SIGKILL falls inside the uplink outage"
    assert [w["restarted"] for w in events["worker_kill"]] == [True]
    assert events["uplink_outage"][0]["connections_cut"] >= 1
    assert events["link_cut"][0]["connections_cut"] >= 1
    assert events["blackhole"][0]["bytes_dropped"] > 0
    assert events["disk_full"][0]["disk_low_reported"]
    assert summary["power_cuts"] >= 1
    assert summary["max_spool_depth"] > 0
    # One board in duty-cycle deep sleep (a quarter of 4): every wake a boot, all accounted for.
    console = (tmp_path / "work" / "fleet" / "sim-0004" / "console.log").read_text(errors="replace")
    assert console.count(" wake: ") >= 3

    # Two sites, one group: each gateway's devices in the table, a device that moved balances too.
    assert summary["sites"] == ["north", "south"]
    assert summary["moves"] >= 1 and any(">" in d["site"] for d in summary["devices"])
    for site in ("north", "south"):
        assert any(d["site"].endswith(site) for d in summary["devices"])
        assert f"TOTAL@     {site}" in output
    gateways = summary["pipeline"]["gateways"]  # the worker scrapes both gateways
    assert len(gateways) == 2 and all(g["up"] for g in gateways), gateways
    assert elapsed < 100, f"the chaos run took {elapsed:.0f} s"


# ---------------------------------------------------------------------- the schedule (pure)

def test_a_seed_gives_the_same_schedule_and_every_fault_is_in_it() -> None:
    from ferry.chaos import Kind, plan

    for duration in (30.0, 600.0, None):
        a = plan(7, duration, sites=("north", "south"), devices=8, workers=2)
        assert a == plan(7, duration, sites=("north", "south"), devices=8, workers=2)
        assert a != plan(8, duration, sites=("north", "south"), devices=8, workers=2) or duration == 30.0
        kinds = [f.kind for f in a]
        assert set(kinds) == set(Kind)
        assert kinds.count(Kind.GATEWAY_KILL) == 2 and kinds.count(Kind.UPLINK_OUTAGE) == 1
        assert [f.at_s for f in a] == sorted(f.at_s for f in a)
        outage = next(f for f in a if f.kind is Kind.UPLINK_OUTAGE)
        first_kill = next(f for f in a if f.kind is Kind.GATEWAY_KILL)
        assert outage.at_s < first_kill.at_s < outage.at_s + outage.duration_s  # killed during the outage
        kills = [f.target for f in a if f.kind is Kind.GATEWAY_KILL]
        assert kills[0] != kills[1]  # with two sites, each gateway is killed once
        assert all(f.target == "worker2" for f in a if f.kind is Kind.WORKER_KILL)
        end = duration or 600.0
        assert all(f.at_s + f.duration_s <= end for f in a)
        if end >= 120:
            assert outage.duration_s >= 30
    one_site = plan(1, 30.0, sites=("sim",), devices=4, workers=2)
    assert Kind.MOVE not in {f.kind for f in one_site}
    assert {f.target for f in one_site if f.kind is Kind.GATEWAY_KILL} == {"sim"}
    # Until Ctrl-C the rounds follow one another, each drawn afresh.
    later = plan(1, None, sites=("sim",), devices=4, workers=2, offset_s=600.0)
    assert min(f.at_s for f in later) >= 600.0


def test_ranges_of_missing_seqs() -> None:
    from ferry.chaos import ranges

    assert ranges([]) == "" and ranges([4]) == "4" and ranges([3, 1, 2, 7, 9, 10]) == "1-3,7,9-10"
