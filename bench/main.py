"""`ferry bench TARGET`: benchmark a part of Ferry against a peer in the same command.

`broker`: Ferry's MQTT gateway against Mosquitto (when installed), with the
load generator in a process of its own. `server`: readings per second through
the analytics worker from a pre-filled topic (bench/server.py). `bridge`:
devices → gateway → Kafka, Ferry's gateway against Mosquitto plus a paho →
confluent-kafka forwarder: sustained rate, spool drain, RSS, restart (bench/bridge.py). `fuzz`: the
MQTT codec and the broker core fuzzed, with inputs/s and a reproducer per crash (bench/fuzz.py).
`latency`: end-to-end latency per link profile, a `ferry demo` each, against the perfect link
(bench/latency.py). `ota`: an over-the-air update of 20 virtual boards behind wifi-flaky links: time,
bytes sent, the boards' heap low-water mark (bench/ota.py).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path

from ferry.bench.scenarios import SCENARIOS, Settings
from ferry.process import sigterm_as_interrupt

EXIT_NOT_BUILT = 3
EXIT_INTERRUPTED = 130
TARGETS = ("broker", "server", "bridge", "fuzz", "latency", "ota")


def build_parser() -> argparse.ArgumentParser:
    defaults = Settings()
    parser = argparse.ArgumentParser(prog="ferry bench broker", description=(
        "Ferry's MQTT broker against Mosquitto: QoS 0/1 throughput, latency at a fixed rate, "
        "idle connections. Mosquitto (/usr/sbin/mosquitto) runs in the same command when installed."))
    parser.add_argument("--duration", type=float, default=defaults.duration_s, metavar="S",
                        help=f"measurement window per run in seconds (default {defaults.duration_s:g})")
    parser.add_argument("--warmup", type=float, default=defaults.warmup_s, metavar="S",
                        help=f"load before the window opens (default {defaults.warmup_s:g})")
    parser.add_argument("--publishers", type=int, default=defaults.publishers, metavar="N",
                        help=f"publishers in the N → M cases (default {defaults.publishers})")
    parser.add_argument("--subscribers", type=int, default=defaults.subscribers, metavar="M",
                        help=f"subscribers in the N → M cases (default {defaults.subscribers})")
    parser.add_argument("--fanout", type=int, default=defaults.fanout, metavar="M",
                        help=f"subscribers of the 1 → M QoS 0 fan-out case, 0 to skip (default {defaults.fanout})")
    parser.add_argument("--rate", type=int, default=defaults.rate_per_s, metavar="MSG_S",
                        help=f"offered rate of latency-10k (default {defaults.rate_per_s:,})")
    parser.add_argument("--connections", type=int, default=defaults.connections, metavar="N",
                        help=f"clients of idle-10k (default {defaults.connections:,})")
    parser.add_argument("--idle-hold", type=float, default=defaults.idle_hold_s, metavar="S",
                        help=f"how long idle-10k holds its clients (default {defaults.idle_hold_s:g})")
    parser.add_argument("--scenarios", nargs="+", choices=SCENARIOS, default=list(SCENARIOS), metavar="NAME",
                        help=f"which to run (default all): {', '.join(SCENARIOS)}")
    parser.add_argument("--ferry-set", action="append", type=_override, default=[], metavar="SECTION.KEY=VALUE",
                        help="set a ferry.toml key in every Ferry run, e.g. broker.max_inflight_messages=100 "
                             "(repeatable; the value is TOML; store.durability is chosen per run)")
    parser.add_argument("--json", type=Path, metavar="OUT.json", help="also write the results as JSON")
    parser.add_argument("--no-mosquitto", action="store_true", help="run Ferry alone")
    parser.add_argument("--no-pin", action="store_true",
                        help="do not pin the broker to CPU 0 and the generator to CPU 1")
    parser.add_argument("--work-dir", type=Path, metavar="DIR",
                        help="keep data dirs, logs, specs and raw results here (default: a temp dir, removed)")
    return parser


def _override(text: str) -> tuple[str, str, object]:
    import tomllib

    path, sep, raw = text.partition("=")
    section, dot, key = path.strip().partition(".")
    if not sep or not dot or not section or not key:
        raise argparse.ArgumentTypeError(f"expected SECTION.KEY=VALUE, got {text!r}")
    if (section, key) == ("store", "durability"):
        raise argparse.ArgumentTypeError("store.durability is chosen per run (fsync, os)")
    try:
        value = tomllib.loads(f"v = {raw.strip()}")["v"]
    except tomllib.TOMLDecodeError:
        value = raw.strip()  # a bare word: a string
    return section, key, value


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(f"usage: ferry bench {{{','.join(TARGETS)}}} [options]\n\n{__doc__.strip()}\n\n"
              "`ferry bench TARGET --help` lists the options.", file=sys.stderr if not argv else sys.stdout)
        return 0 if argv else 2
    target, rest = argv[0], argv[1:]
    if target not in TARGETS:
        print(f"ferry bench {target}: not built yet (built: {', '.join(TARGETS)})", file=sys.stderr)
        return EXIT_NOT_BUILT
    if target == "server":
        from ferry.bench.server import main as server_main

        return server_main(rest)
    if target == "bridge":
        from ferry.bench.bridge import main as bridge_main

        return bridge_main(rest)
    if target == "fuzz":
        from ferry.bench.fuzz import main as fuzz_main

        return fuzz_main(rest)
    if target == "latency":
        from ferry.bench.latency import main as latency_main

        return latency_main(rest)
    if target == "ota":
        from ferry.bench.ota import main as ota_main

        return ota_main(rest)
    args = build_parser().parse_args(rest)
    if args.publishers < 1 or args.subscribers < 1 or args.duration <= 0 or args.connections < 1:
        print("ferry bench broker: --publishers, --subscribers, --connections and --duration must be positive",
              file=sys.stderr)
        return 2
    settings = Settings(duration_s=args.duration, warmup_s=args.warmup, publishers=args.publishers,
                        subscribers=args.subscribers, fanout=args.fanout, rate_per_s=args.rate,
                        connections=args.connections, idle_hold_s=args.idle_hold,
                        ferry_overrides=tuple(args.ferry_set))
    scenarios = tuple(s for s in SCENARIOS if s in args.scenarios)

    from ferry.bench.broker import run_benchmark
    from ferry.bench.report import render, write_results_json
    from ferry.bench.targets import MOSQUITTO_INSTALL_HINT, find_mosquitto

    if not args.no_mosquitto and find_mosquitto() is None:
        print(f"ferry bench broker: Mosquitto was not found; running Ferry alone ({MOSQUITTO_INSTALL_HINT})",
              file=sys.stderr)
    temp = None
    try:
        if args.work_dir is None:
            temp = tempfile.TemporaryDirectory(prefix="ferry-bench-")
            work_dir = Path(temp.name)
        else:
            work_dir = args.work_dir
            work_dir.mkdir(parents=True, exist_ok=True)
        with sigterm_as_interrupt():
            env, results = run_benchmark(scenarios, settings, work_dir, pin=not args.no_pin,
                                         use_mosquitto=not args.no_mosquitto)
    except KeyboardInterrupt:
        print("ferry bench broker: interrupted; every process it started is stopped", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if temp is not None:
            temp.cleanup()
    print(render(env, results), end="")
    if args.json is not None:
        write_results_json(env, results, args.json)
        print(f"results written to {args.json}")
    failed = any(run.error for r in results for run in r.runs)
    return 1 if failed else 0
