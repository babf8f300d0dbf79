"""`ferry bench latency`: end-to-end latency per link profile, from a reading's sample time on the
device to when a worker counted it.

One `ferry demo` per link profile (the whole pipeline: virtual boards on the real firmware, the
devices link with that profile, gateway, bridge, Kafka, worker), no power cuts and no uplink
outages, so that each run measures its link alone; the demo's summary gives the percentiles from
the workers' histogram (server/latency.py) counted after every board was online (the boards'
start-up left out; the whole run's when that moment never came). The peer is the `perfect` link:
each profile's percentiles are printed beside it as ratios. Every run must also balance its
accounting.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_PROFILES = ("perfect", "wifi-good", "wifi-flaky", "cellular")
PEER = "perfect"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="ferry bench latency", description=__doc__.splitlines()[0])
    p.add_argument("--devices", type=int, default=200, help="simulated boards per run (default 200)")
    p.add_argument("--profiles", default=",".join(DEFAULT_PROFILES),
                   help=f"comma-separated link profiles, one run each (default {','.join(DEFAULT_PROFILES)}; "
                        f"{PEER} is added first when missing: the ratios are to it)")
    p.add_argument("--duration", type=float, default=120.0, help="seconds each run samples (default 120)")
    p.add_argument("--sample-ms", type=int, default=2000, help="each board's sample interval (default 2000)")
    p.add_argument("--outbox-flush-ms", type=int, default=None, metavar="MS",
                   help="the boards' outbox flush interval (`ferry demo --outbox-flush-ms`; default the firmware's "
                        "5000 ms: a reading is sent once on flash, so it waits up to that long on the device)")
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, help="also write the table here")
    p.add_argument("--work-dir", type=Path, help="keep each run's logs and data here (default: temporary)")
    return p


def demo_command(profile: str, args: argparse.Namespace, json_path: Path, work: Path) -> list[str]:
    return [sys.executable, "-m", "ferry", "demo", "--devices", str(args.devices), "--profile", profile,
            "--sample-ms", str(args.sample_ms), "--duration", f"{args.duration:g}", "--power-cuts-per-min", "0",
            "--uplink-outage-every", "0", "--web-port", "0", "--live-every", "30", "--seed", str(args.seed),
            "--json", str(json_path), "--work-dir", str(work),
            *(() if args.outbox_flush_ms is None else ("--outbox-flush-ms", str(args.outbox_flush_ms)))]


def run_profile(profile: str, args: argparse.Namespace, folder: Path) -> dict:
    """One demo run; its latency summary, accounting and wall time (or why it failed)."""
    work, json_path, log = folder / profile, folder / f"{profile}.json", folder / f"{profile}.log"
    started = time.monotonic()
    with log.open("w") as out:
        code = subprocess.run(demo_command(profile, args, json_path, work), stdout=out, stderr=subprocess.STDOUT,
                              check=False).returncode
    row: dict = {"profile": profile, "exit": code, "wall_s": round(time.monotonic() - started, 1), "log": str(log)}
    try:
        report = json.loads(json_path.read_text())
    except (OSError, ValueError) as exc:
        return {**row, "error": f"no --json from the demo ({exc}); see {log}"}
    warm = report.get("latency_after_warm_up")
    latency = warm or report.get("latency") or {}
    return {**row, "after_s": warm and warm.get("after_s"), "readings": latency.get("readings"),
            "p50_s": latency.get("p50_s"),
            "p95_s": latency.get("p95_s"), "p99_s": latency.get("p99_s"),
            "received": report["total"]["received"], "unaccounted": report["total"]["unaccounted"]}


def ratio(value: float | None, peer: float | None) -> str:
    return f"{value / peer:.1f}x" if value is not None and peer else "-"


def render(rows: Sequence[dict], devices: int, outbox_flush_ms: int | None = None) -> str:
    peer = next((r for r in rows if r["profile"] == PEER), {})
    flush = "the firmware's default" if outbox_flush_ms is None else f"{outbox_flush_ms} ms"
    lines = [f"end-to-end latency, device sample time -> counted by the worker, {devices} devices per run, "
             f"outbox flush interval {flush}",
             f"{'profile':<12} {'readings':>9} {'p50 s':>7} {'p95 s':>7} {'p99 s':>7}   "
             f"{'p50/p95/p99 vs ' + PEER:<24} {'unaccounted':>11}  counted after"]
    for r in rows:
        if "error" in r:
            lines.append(f"{r['profile']:<12} {r['error']}")
            continue
        p = [r[k] for k in ("p50_s", "p95_s", "p99_s")]
        numbers = " ".join("      -" if v is None else f"{v:7.2f}" for v in p)
        ratios = " / ".join(ratio(v, peer.get(k)) for v, k in zip(p, ("p50_s", "p95_s", "p99_s")))
        after = "the start" if r.get("after_s") is None else f"{r['after_s']:g} s (every board online)"
        lines.append(f"{r['profile']:<12} {r['readings'] or 0:>9} {numbers}   {ratios:<24} {r['unaccounted']:>11}"
                     f"  {after}")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from ferry.hwsim.link_profile import PROFILES

    profiles = [p.strip() for p in args.profiles.split(",") if p.strip()]
    unknown = [p for p in profiles if p not in PROFILES]
    if unknown or args.devices < 1 or args.duration <= 0:
        print(f"ferry bench latency: unknown profile {', '.join(unknown)} (known: {', '.join(PROFILES)})"
              if unknown else "ferry bench latency: --devices and --duration must be positive", file=sys.stderr)
        return 2
    if PEER not in profiles:
        profiles.insert(0, PEER)
    with tempfile.TemporaryDirectory(prefix="ferry-bench-latency-") as temporary:
        folder = args.work_dir or Path(temporary)
        folder.mkdir(parents=True, exist_ok=True)
        rows = []
        for profile in profiles:
            print(f"{profile}: ferry demo --devices {args.devices} --duration {args.duration:g} ...", flush=True)
            rows.append(run_profile(profile, args, folder))
        print(render(rows, args.devices, args.outbox_flush_ms))
    if args.json is not None:
        args.json.write_text(json.dumps({"devices": args.devices, "duration_s": args.duration,
                                         "outbox_flush_ms": args.outbox_flush_ms, "rows": rows}, indent=1))
    failed = [r for r in rows if "error" in r or r["exit"] != 0 or r["unaccounted"]]
    return 1 if failed else 0
