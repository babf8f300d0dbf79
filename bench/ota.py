"""`ferry bench ota`: an over-the-air update of a simulated fleet (issue #16, docs/ota.md).

N virtual boards (default 20) run the real firmware on the real MicroPython interpreter (default the 32-bit
ESP32-like build at a 64 KB heap), each behind its own simulated link (default `wifi-flaky`) to a real
`ferry gateway` started here; `ferry.ota.push` (the operator's side) sends them a release of their own
firmware with another version. Printed: the time until every board runs the release confirmed, what was
sent (payload bytes, chunks, rewinds, offers), the heap low-water mark of update mode on each board (free
heap after a collection, between chunks and at the download's peaks), the readings accounted for, and
optionally power cuts in each board's download (`--cuts`).
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

DEFAULT_DEVICES = 20


def build_parser() -> argparse.ArgumentParser:
    from ferry import ota as fota
    from ferry.hwsim.link_profile import PROFILES
    from ferry.hwsim.micropython import ESP32_LIKE, INTERPRETERS

    p = argparse.ArgumentParser(prog="ferry bench ota", description=__doc__.strip().splitlines()[0])
    p.add_argument("--devices", type=int, default=DEFAULT_DEVICES)
    p.add_argument("--profile", default="wifi-flaky", choices=list(PROFILES))
    p.add_argument("--interpreter", default=ESP32_LIKE, choices=INTERPRETERS)
    p.add_argument("--rate", type=float, default=fota.DEFAULT_RATE, help="chunks per second per device")
    p.add_argument("--chunk", type=int, default=576, help="chunk data bytes (the device says if less fits)")
    p.add_argument("--sample-ms", type=int, default=2000, help="the boards' sample interval")
    p.add_argument("--cuts", type=int, default=0, help="power cuts per board during its download")
    p.add_argument("--timeout", type=float, default=600.0)
    p.add_argument("--seed", type=int, default=1)
    p.add_argument("--json", type=Path, metavar="OUT.json")
    p.add_argument("--work-dir", type=Path, metavar="DIR", help="keep the boards and logs here")
    return p


def run(args: argparse.Namespace, work: Path, out) -> dict:
    from ferry.gateway.process import GatewayProcess
    from ferry.hwsim.fleet import Fleet, FleetOptions, mpy_cross_path
    from ferry.bench.ota_fleet import BirthLog, CutPlan, firmware_release, push_update
    from ferry.hwsim.micropython import ESP32_LIKE, esp32_like_mpy_cross

    compiler = esp32_like_mpy_cross() if args.interpreter == ESP32_LIKE else mpy_cross_path()
    with GatewayProcess(work / "gateway") as gw:
        options = FleetOptions(devices=args.devices, gateway=("127.0.0.1", gw.port), profile=args.profile,
                               sample_ms=args.sample_ms, work_dir=work / "fleet", seed=args.seed,
                               interpreter=args.interpreter, drain_timeout_s=120,
                               firmware={"backoff_max_ms": 8000})
        with Fleet(options, out=io.StringIO()) as fleet:
            births = BirthLog("127.0.0.1", gw.port, options.site, f"ferry-bench-ota-{id(fleet)}")
            try:
                devices = [Fleet.device_id(i) for i in range(args.devices)]
                fleet.boards[0].wait_for(lambda: all(births.of(d) for d in devices), 60)
                release = firmware_release(options.work_dir / "build", work / "release", "0.2.0", compiler, 6)
                print(f"{args.devices} boards ({args.interpreter}), {args.profile}: release 0.2.0, {release.size:,} B "
                      f"in {len(release.files)} files", file=out, flush=True)
                cuts = CutPlan(download=args.cuts, seed=args.seed) if args.cuts else None
                result = push_update(fleet, release, births, cuts, rate_per_s=args.rate, chunk_bytes=args.chunk,
                                     timeout_s=args.timeout)
                t0 = time.monotonic()
                drained = fleet.drain(120)
                drain_s = time.monotonic() - t0
                unaccounted = fleet.unaccounted()
                totals = fleet.totals()
                confirmed = sum(1 for d in devices if births.of(d) and births.of(d)[-1].fw == "0.2.0"
                                and births.of(d)[-1].state == "confirmed")
            finally:
                births.close()
    pushes = result.pushes.values()
    heap = result.heap.values()
    return {
        "devices": args.devices, "interpreter": args.interpreter, "profile": args.profile, "rate": args.rate,
        "release_bytes": release.size, "files": len(release.files), "confirmed": confirmed,
        "push_s": round(result.push_s, 1), "all_confirmed_s": round(result.settled_s, 1),
        "payload_bytes_sent": result.bytes_sent, "chunks_sent": result.chunks_sent,
        "sent_per_release_byte": round(result.bytes_sent / (release.size * args.devices), 3),
        "rewinds": sum(p.rewinds for p in pushes), "offers": sum(p.offers for p in pushes),
        "states": sorted({p.state.value for p in pushes}), "power_cuts": len(result.cuts),
        "heap_low_between_chunks": min((h[0] for h in heap), default=None),
        "heap_low_at_peaks": min((h[1] for h in heap), default=None),
        "heap_boards": len(result.heap),
        "drained": drained, "drain_s": round(drain_s, 1), "unaccounted": len(unaccounted),
        "readings_generated": totals["generated"], "readings_delivered": totals["acknowledged"],
        "readings_dropped_by_devices": totals["dropped"],
    }


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    temp = None
    if args.work_dir is None:
        temp = tempfile.TemporaryDirectory(prefix="ferry-bench-ota-")
        work = Path(temp.name)
    else:
        work = args.work_dir
        work.mkdir(parents=True, exist_ok=True)
    try:
        r = run(args, work, sys.stdout)
    except KeyboardInterrupt:
        print("ferry bench ota: interrupted; every process it started is stopped", file=sys.stderr)
        return 130
    finally:
        if temp is not None:
            temp.cleanup()
    print(f"every board on 0.2.0, confirmed: {r['confirmed']}/{r['devices']} after {r['all_confirmed_s']} s "
          f"(the push itself {r['push_s']} s)")
    print(f"sent: {r['payload_bytes_sent']:,} B of release data in {r['chunks_sent']:,} chunks "
          f"({r['sent_per_release_byte']}x the release per device), {r['rewinds']} rewinds, {r['offers']} offers; "
          f"{r['power_cuts']} power cuts")
    print(f"heap low-water in update mode ({r['interpreter']}, {r['heap_boards']} boards): "
          f"{r['heap_low_between_chunks']} B free between chunks, {r['heap_low_at_peaks']} B at the download's peaks")
    print(f"readings: generated {r['readings_generated']}, delivered {r['readings_delivered']}, dropped by the "
          f"devices {r['readings_dropped_by_devices']}, unaccounted on {r['unaccounted']} devices "
          f"(drained: {r['drained']}, {r['drain_s']} s)")
    if args.json is not None:
        args.json.write_text(json.dumps(r, indent=2) + "\n")
    ok = r["confirmed"] == r["devices"] and r["unaccounted"] == 0 and r["drained"]
    return 0 if ok else 1
