"""`ferry demo`: the whole pipeline in small, with power cuts and uplink outages, must account for
every reading (docs/demo.md); and the pure parts of its accounting and progress line."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ferry.demo import (
    DeviceBalance, Snapshot, accounting_table, balances, buckets_since, choose_web_port, latency_buckets,
    latency_line, main, parse_prometheus, progress_line, spool_depth, total,
)

REPO = Path(__file__).resolve().parents[2]

# Runs a command as the child of a subreaper, so that anything the command leaves running is
# re-parented here when it exits; optionally sends it SIGINT once a line of its output contains
# a marker. Prints the command's output, then one JSON line: exit status and leftover processes.
SUBREAPER = r"""
import ctypes, json, os, signal, subprocess, sys, time
ctypes.CDLL(None, use_errno=True).prctl(36, 1, 0, 0, 0)  # PR_SET_CHILD_SUBREAPER
argv, interrupt_at = json.loads(sys.argv[1]), sys.argv[2]
proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
for line in proc.stdout:
    sys.stdout.write(line)
    if interrupt_at and interrupt_at in line:
        interrupt_at = ""
        proc.send_signal(signal.SIGINT)
rc = proc.wait()
time.sleep(1.0)
me, leaked = str(os.getpid()), []
for entry in filter(str.isdigit, os.listdir("/proc")):
    try:
        fields = open(f"/proc/{entry}/stat").read().rsplit(")", 1)[1].split()
        cmd = open(f"/proc/{entry}/cmdline", "rb").read().replace(b"\0", b" ").decode(errors="replace")
    except OSError:
        continue
    if fields[1] == me and fields[0] != "Z":
        leaked.append(cmd.strip())
        os.kill(int(entry), signal.SIGKILL)
print("\nSUBREAPER " + json.dumps({"rc": rc, "leaked": leaked}), flush=True)
"""


def run_under_subreaper(argv: list[str], timeout_s: float, interrupt_at: str = "") -> tuple[dict, str]:
    result = subprocess.run([sys.executable, "-c", SUBREAPER, json.dumps(argv), interrupt_at],
                            capture_output=True, text=True, timeout=timeout_s, cwd=REPO)
    out, _, last = result.stdout.rpartition("SUBREAPER ")
    assert last, f"no report from the subreaper:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return json.loads(last), out + result.stderr


# ---------------------------------------------------------------------- pure parts

def test_prometheus_text_is_summed_per_name_and_the_spool_depth_found() -> None:
    text = ("# HELP ferry_bridge_spool_messages Messages in the spool.\n# TYPE ferry_bridge_spool_messages gauge\n"
            "ferry_bridge_spool_messages 40\n"
            "# HELP ferry_bridge_unacked_records Records Kafka has not acknowledged.\n"
            "# TYPE ferry_bridge_unacked_records gauge\nferry_bridge_unacked_records 42\n"
            '# TYPE ferry_dropped_messages_total counter\nferry_dropped_messages_total{reason="slow_subscriber"} 2\n'
            'ferry_dropped_messages_total{reason="queue_full"} 3.0\n')
    metrics = parse_prometheus(text)
    assert metrics == {"ferry_bridge_spool_messages": 40.0, "ferry_bridge_unacked_records": 42.0,
                       "ferry_dropped_messages_total": 5.0}
    assert spool_depth(metrics) == 42.0  # every record Kafka has not acknowledged, QoS 0 ones included
    assert spool_depth({"ferry_connections": 3.0}) is None
    assert parse_prometheus(text + "garbage line\n") == {}


def test_unaccounted_is_generated_minus_dropped_at_device_minus_received() -> None:
    fleet_rows = [{"device": "sim-0001", "generated": 20, "dropped": 3, "acknowledged": 17},
                  {"device": "sim-0002", "generated": 10, "dropped": 0, "acknowledged": 10},
                  {"device": "sim-0003", "generated": 5, "dropped": 0, "acknowledged": 5}]
    server = {"sim-0001": {"received": 17, "duplicates": 4, "gaps": 3, "lost_at_device": 3},
              "sim-0002": {"received": 9, "duplicates": 0, "gaps": 1, "lost_at_device": 0}}
    rows = balances(fleet_rows, server)
    assert [r.unaccounted for r in rows] == [0, 1, 5]  # sim-0003: the server never saw it
    t = total(rows)
    assert (t.generated, t.dropped_at_device, t.received, t.duplicates, t.unaccounted) == (35, 3, 26, 4, 6)
    # A server that counted a reading twice (or one the device dropped) is caught too: negative.
    assert DeviceBalance("d", 10, 1, 9, 10, 0, 0, 1).unaccounted == -1
    table = accounting_table(rows)
    assert table.splitlines()[-1].split() == ["TOTAL", "35", "3", "32", "26", "4", "4", "6"]
    assert balances(fleet_rows, None)[0].received == 0  # the worker did not answer


def test_with_two_sites_the_table_has_a_site_column_and_a_total_per_site() -> None:
    fleet_rows = [{"device": "sim-0001", "generated": 20, "dropped": 3, "acknowledged": 17, "site": "north>south"},
                  {"device": "sim-0002", "generated": 10, "dropped": 0, "acknowledged": 10, "site": "south"},
                  {"device": "sim-0003", "generated": 5, "dropped": 0, "acknowledged": 5, "site": "north"}]
    server = {"sim-0001": {"received": 17}, "sim-0002": {"received": 10}, "sim-0003": {"received": 4}}
    assert balances(fleet_rows, server)[0].site == ""  # one site: no column
    rows = balances(fleet_rows, server, sites=True)
    lines = accounting_table(rows).splitlines()
    assert lines[0].split()[:2] == ["device", "site"]
    assert lines[2].split()[:2] == ["sim-0001", "north>south"]
    per_site = {line.split()[1]: line.split() for line in lines if line.startswith("TOTAL@")}
    assert per_site["north"][-1] == "1" and per_site["south"][2] == "30"  # by the site each device is at now
    assert lines[-1].split() == ["TOTAL", "35", "3", "32", "31", "0", "0", "1"]


def test_the_latency_after_warm_up_is_the_histogram_counted_since_the_mark() -> None:
    inf = float("inf")
    mark, end = [(0.5, 10.0), (1.0, 30.0), (inf, 40.0)], [(0.5, 110.0), (1.0, 130.0), (inf, 145.0)]
    assert buckets_since(mark, end) == [(0.5, 100.0), (1.0, 100.0), (inf, 105.0)]
    restarted = [(0.5, 3.0), (1.0, 5.0), (inf, 5.0)]  # fewer than at the mark: it started from zero since
    assert buckets_since(mark, restarted) == restarted
    assert buckets_since(None, end) == end and buckets_since(mark, None) is None


def test_latency_percentiles_from_the_workers_histograms() -> None:
    from ferry.prometheus import prometheus_text
    from ferry.server.latency import LatencyHistogram, latency_summary

    one, two = LatencyHistogram(), LatencyHistogram()
    for seconds in [0.03] * 50 + [0.3] * 40:
        one.observe(seconds)
    for seconds in [3.0] * 9 + [700.0]:
        two.observe(seconds)
    summary = latency_summary([latency_buckets(prometheus_text(one.metrics())),
                               latency_buckets(prometheus_text(two.metrics())), latency_buckets(None)])
    assert summary["readings"] == 100
    assert summary["p50_s"] == pytest.approx(0.05)  # linear within the bucket, as histogram_quantile
    assert 2.0 < summary["p95_s"] < 3.0 and summary["p99_s"] == pytest.approx(3.0)  # 9 at 3 s: the (2, 3] bucket
    assert "p50 0.05 s" in latency_line(summary)
    assert latency_summary([latency_buckets("ferry_worker_ready 1\n"), latency_buckets("garbage {")]) is None
    assert "not measured" in latency_line(None)


def test_progress_line_shows_each_hop_and_says_when_the_server_is_silent() -> None:
    fleet = {"generated": 100, "acknowledged": 90, "in_outbox": 7, "dropped": 3, "power_cuts": 2}
    server = {"received": 80, "duplicates": 1, "gaps": 2, "lost_at_device": 3, "alerts": 4}
    line = progress_line(Snapshot(12.5, "run", fleet, 9.0, server, "DOWN 3s left (outages 1)"))
    for part in ("generated 100", "acked 90", "outbox 7", "dropped 3", "spool 9", "received 80", "dups 1",
                 "gaps 2", "lost@dev 3", "alerts 4", "cuts 2", "uplink DOWN"):
        assert part in line
    assert "not answering" in progress_line(Snapshot(1, "run", fleet, None, None, "up"))


def test_a_busy_web_port_is_named_and_another_one_used(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        chosen = choose_web_port(port, sys.stdout)
    assert chosen != port and f"port {port} is busy" in capsys.readouterr().out


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--devices", "0"]) == 2
    assert main(["--uplink-outage-every", "10", "--uplink-outage-s", "10"]) == 2
    assert main(["--profile", "moon"]) == 2
    assert main(["--outbox-flush-ms", "-1"]) == 2
    assert "--uplink-outage-s" in capsys.readouterr().err


# ---------------------------------------------------------------------- the whole pipeline

@pytest.mark.integration
def test_demo_accounts_for_every_reading_through_power_cuts_and_uplink_outages(tmp_path: Path) -> None:
    report = tmp_path / "demo.json"
    argv = [sys.executable, "-m", "ferry", "demo", "--devices", "4", "--duration", "22", "--sample-ms", "500",
            "--power-cuts-per-min", "6", "--uplink-outage-every", "9", "--uplink-outage-s", "3",
            "--web-port", "0", "--live-every", "5", "--drain-timeout", "60",
            "--work-dir", str(tmp_path / "work"), "--json", str(report)]
    started = time.monotonic()
    result, output = run_under_subreaper(argv, timeout_s=240)
    elapsed = time.monotonic() - started
    logs = "\n".join(f"--- {p}\n{p.read_text(errors='replace')[-3000:]}" for p in
                     sorted((tmp_path / "work").glob("*/*.log")))
    assert result["leaked"] == [], f"the demo left processes running: {result['leaked']}"
    assert result["rc"] == 0, f"{output[-6000:]}\n{logs}"

    summary = json.loads(report.read_text())
    assert f"dashboard:  http://127.0.0.1:{summary['web_port']}/" in output
    assert "[" in output and " run] devices generated " in output  # live progress lines
    assert "final accounting" in output
    t = summary["total"]
    assert summary["ok"] and summary["drained"]
    assert t["received"] > 0 and t["unaccounted"] == 0
    assert t["generated"] == t["received"] + t["dropped_at_device"]
    assert all(d["unaccounted"] == 0 for d in summary["devices"]) and len(summary["devices"]) == 4
    assert t["at_gateway"] == t["received"]  # what reached the gateway reached the server, once
    assert t["lost_at_device_server"] == t["dropped_at_device"]  # the server learnt the devices' own count
    assert summary["server_accounting"]["received"] == t["received"]
    # The latency: from the workers' histogram, and counted again from when every board was online.
    latency, warm = summary["latency"], summary["latency_after_warm_up"]
    assert 0 < latency["readings"] <= t["received"] and latency["profile"] == "wifi-flaky"
    assert warm is not None and warm["readings"] <= latency["readings"] and "every board online" in output
    # The dashboard's pipeline panel: the worker scraped the demo's gateway (the path's stages are
    # checked against the gateway's metrics by tests/server/test_dashboard_browser.py).
    gateways = summary["pipeline"]["gateways"]
    assert len(gateways) == 1 and gateways[0]["up"], gateways
    assert summary["uplink_outages"] == 2 and summary["uplink"]["cuts"] >= 1  # the outages cut the bridge
    assert summary["max_spool_depth"] > 0, "the outages never held anything in the bridge's spool"
    assert elapsed < 120, f"the demo took {elapsed:.0f} s"
    # Secured: the boards connected over TLS with their own passwords, as devices under the default ACL.
    gateway_log = (tmp_path / "work" / "gateway" / "gateway.log").read_text()
    assert "with TLS (listener[0])" in gateway_log and "anonymous clients refused" in gateway_log
    assert all(f"connect sim-000{n} from" in gateway_log for n in range(1, 5))
    assert "denied" not in gateway_log  # no board was refused anything it needs


@pytest.mark.integration
@pytest.mark.parametrize(("interrupt_at", "status", "says"), [
    ("worker   starting", 1, "SIGINT during start-up: stopping at once"),
    ("progress:", 0, "ferry demo: 0 lost, 0 duplicated"),
], ids=["during-start-up", "while-running"])
def test_ctrl_c_stops_everything(tmp_path: Path, interrupt_at: str, status: int, says: str) -> None:
    """During start-up: stop at once, exit 1. While running: drain, account, exit 0. Both: nothing left."""
    argv = [sys.executable, "-m", "ferry", "demo", "--devices", "2", "--web-port", "0",
            "--work-dir", str(tmp_path / "work")]
    result, output = run_under_subreaper(argv, timeout_s=120, interrupt_at=interrupt_at)
    assert result["leaked"] == [], f"the demo left processes running: {result['leaked']}"
    assert result["rc"] == status, output[-4000:]
    assert says in output


def test_every_option_is_documented() -> None:
    from ferry.demo import build_parser

    doc = (REPO / "docs" / "demo.md").read_text()
    options = [o for action in build_parser()._actions for o in action.option_strings
               if o.startswith("--") and o != "--help"]
    assert options and [o for o in options if f"`{o}" not in doc] == []
