"""`ferry bench fuzz`: fuzz the MQTT codec and the broker core, for the test suite and for long runs.

Two targets, each a pure function of its input that raises on a defect:

* ``codec``: bytes (random, or valid packets of every type for MQTT 3.1.1 and 5.0 mutated by bit
  flips, truncation, splicing, remaining-length edits and property duplication) fed to a
  server-side or client-side :class:`~ferry.gateway.mqtt.Decoder` in random chunks. Only
  :class:`~ferry.gateway.mqtt.ProtocolError` may come out; the same bytes in one chunk and in
  random chunks give the same packets and the same error; every decoded packet re-encodes and
  decodes to an equal packet.
* ``core``: a sequence of steps for the broker core (:class:`~ferry.gateway.broker.core.Broker`):
  bytes from several connections (CONNECT or not, PUBLISH/SUBSCRIBE/UNSUBSCRIBE/acks/PINGREQ/
  DISCONNECT/AUTH with random topics, wildcards, ``$SYS``, QoS 0-2, packet ids and v5 properties)
  decoded as the network layer does, journal batches sealed and committed, time advancing with
  ``tick``, connections lost, and restarts from the committed records. After every step the
  invariants in :meth:`CoreRun.check` must hold.

Inputs come from a :class:`Source` of choices, so one generator serves three engines: ``random``
(seeded, fast, the default), ``hypothesis`` (shrinks a failure to a small one) and ``atheris``
(coverage-guided, when the ``atheris`` package is importable). A failure is reported with a
reproducer: the bytes in hex and the chunk cuts for the codec, the step list (wire bytes per
connection, with the decoded packets) for the core.

This module holds the engines and the command line; the targets are bench/fuzz_codec.py and
bench/fuzz_core.py, the sources of choices and the crash report bench/fuzz_input.py.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import random
import sys
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ferry.bench.fuzz_input import Crash, FuzzFailure, HypothesisSource, ProviderSource, RandomSource, Source, describe
from ferry.bench.fuzz_codec import CodecInput, check_codec, corpus, make_codec_input
from ferry.bench.fuzz_core import KNOWN_CORE_DEFECTS, fuzz_core_once

TARGETS = ("codec", "core")
ENGINES = ("random", "hypothesis", "atheris")


@dataclass
class Report:
    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    crash_count: int = 0
    signatures: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def add(self, crash: Crash, keep: int = 20) -> bool:
        """Count a crash; True when it is a new kind (kept, up to ``keep``)."""
        self.crash_count += 1
        sig = crash.signature
        first = sig not in self.signatures
        self.signatures[sig] = self.signatures.get(sig, 0) + 1
        if first and len(self.crashes) < keep:
            self.crashes.append(crash)
        return first

    def summary(self) -> str:
        return (f"{self.target}: {self.inputs:,} inputs in {self.seconds:.1f} s ({self.rate:,.0f} inputs/s, "
                f"engine {self.engine}), {self.crash_count} crash(es) of {len(self.signatures)} kind(s)")


CODEC = "codec"
CORE = "core"

def run_one(target: str, src: Source, index: int, tolerate: frozenset[str] = frozenset()) -> Crash | None:
    """Generate one input for ``target`` from ``src`` and check it; the crash, if any."""
    if target == CODEC:
        try:
            inp = make_codec_input(src, corpus())
        except Exception as exc:  # a bug of the mutator, not of the codec: still reported
            return Crash(target, index, f"generator {describe(exc)}", traceback.format_exc(),
                         "(the input generator failed: run this seed and index again)")
        try:
            check_codec(inp)
        except Exception as exc:  # anything but a ProtocolError is a crash
            return Crash(target, index, describe(exc), traceback.format_exc(), inp.reproducer())
        return None
    try:
        fuzz_core_once(src, tolerate=tolerate)
    except Exception as exc:
        run = getattr(exc, "run", None)
        reproducer = run.reproducer() if run is not None else "(no run)"
        return Crash(target, index, describe(exc), traceback.format_exc(), reproducer)
    return None


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The core logs a warning per refused client; a fuzz run refuses thousands a second."""
    logger = logging.getLogger("ferry")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def input_rng(seed: int, index: int) -> random.Random:
    """The generator of input ``index`` of a run with ``seed``: any input can be run alone again."""
    return random.Random(seed * 1_000_003 + index)


def run_random(target: str, inputs: int, seed: int, *, start: int = 0, time_limit_s: float | None = None,
               progress: Callable[[Report], None] | None = None, progress_every_s: float = 10.0,
               on_crash: Callable[[Crash], None] | None = None, tolerate: frozenset[str] = frozenset()
               ) -> Report:
    """The seeded random engine: input ``k`` is made from ``input_rng(seed, k)``."""
    report = Report(target, "random")
    started = last = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    check_every = 0xFF if target == CODEC else 0x0F
    with quiet_logs():
        for index in range(start, start + inputs):
            crash = run_one(target, RandomSource(input_rng(seed, index)), index, tolerate)
            report.inputs += 1
            if crash is not None and report.add(crash) and on_crash is not None:
                on_crash(crash)
            if report.inputs & check_every == 0:
                now = time.perf_counter()
                if progress is not None and now - last >= progress_every_s:
                    report.seconds = now - started
                    progress(report)
                    last = now
                if deadline is not None and now >= deadline:
                    break
    report.seconds = time.perf_counter() - started
    return report


def run_hypothesis(target: str, inputs: int, seed: int, *, on_crash: Callable[[Crash], None] | None = None,
                   tolerate: frozenset[str] = frozenset()) -> Report:
    """Hypothesis drives the generators; a failure is shrunk, then reported once."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    report = Report(target, "hypothesis")
    failures: list[Crash] = []

    @settings(max_examples=inputs, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def prop(data) -> None:
        report.inputs += 1
        crash = run_one(target, HypothesisSource(data), report.inputs, tolerate)
        if crash is not None:
            failures.append(crash)
            raise FuzzFailure(crash.error)

    from hypothesis import seed as hypothesis_seed

    started = time.perf_counter()
    try:
        with quiet_logs():
            hypothesis_seed(seed)(prop)()
    except FuzzFailure:
        crash = failures[-1]  # the last failure is the shrunk one
        report.add(crash)
        if on_crash is not None:
            on_crash(crash)
    report.seconds = time.perf_counter() - started
    return report


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(target: str, inputs: int, seed: int, tolerate: frozenset[str] = frozenset(),
                corpus_dir: str | None = None) -> int:
    """Coverage-guided fuzzing with atheris (libFuzzer), which exits the process when done: its final
    stats (``stat::number_of_executed_units``, ``stat::average_exec_per_sec``) are the counts.

    The codec target decodes atheris's bytes directly (first byte: which decoder, chunking and a small
    maximum packet size), starting from the valid corpus; the core target reads its choices from them.
    A failure prints our reproducer, then libFuzzer saves the input as ``crash-<sha1>``.
    """
    import os
    import tempfile

    import atheris

    sides = ("server", "client-v311", "client-v5")
    count = itertools.count(1)

    def codec_input(data: bytes) -> CodecInput:
        if not data:
            return CodecInput("server", b"")
        head, rest = data[0], data[1:]
        cuts = tuple(range(1, len(rest))) if head & 0x80 else (len(rest) // 2,) if head & 0x40 else ()
        return CodecInput(sides[head % 3], rest, cuts, 64 if head & 0x20 else MAX_VBI)

    def test_one(data: bytes) -> None:
        index = next(count)
        if target == CODEC:
            inp = codec_input(data)
            try:
                check_codec(inp)
            except Exception as exc:
                print(Crash(target, index, describe(exc), traceback.format_exc(), inp.reproducer()).render(),
                      file=sys.stderr, flush=True)
                raise
        else:
            crash = run_one(CORE, ProviderSource(atheris.FuzzedDataProvider(data)), index, tolerate)
            if crash is not None:
                print(crash.render(), file=sys.stderr, flush=True)
                raise FuzzFailure(crash.error, "core")

    argv = [sys.argv[0], f"-runs={inputs}", f"-seed={seed or 1}", "-print_final_stats=1"]
    if target == CODEC:
        seeds_dir = corpus_dir or os.path.join(tempfile.gettempdir(), "ferry-fuzz-codec-corpus")
        os.makedirs(seeds_dir, exist_ok=True)
        for n, s in enumerate(corpus()):
            with open(os.path.join(seeds_dir, f"seed{n}"), "wb") as f:
                f.write(bytes((sides.index(s.side),)) + b"".join(s.frames))
        argv.append(seeds_dir)  # libFuzzer adds what raises coverage to it
    logging.getLogger("ferry").setLevel(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup(argv, test_one)
    atheris.Fuzz()
    return 0  # pragma: no cover - libFuzzer exits the process


# ====================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry bench fuzz", description=(
        "Fuzz the MQTT codec (random and mutated valid packets, any chunking: only ProtocolError may "
        "come out, decoded packets round-trip) and the broker core (packet sequences from several "
        "connections, commits, time, lost connections, restarts, with invariants checked after every "
        "step). Exits 1 when an input fails, printing a reproducer."))
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all",
                        help="what to fuzz (default all: codec, then core)")
    parser.add_argument("--inputs", type=int, default=1_000_000, metavar="N",
                        help="inputs per target (core: one input is a sequence of 5-80 steps; default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the run (default 0)")
    parser.add_argument("--start", type=int, default=0, metavar="K",
                        help="first input index (random engine): --start K --inputs 1 runs input K alone again")
    parser.add_argument("--engine", choices=ENGINES, default="random",
                        help="random (seeded mutator, default), hypothesis (shrinks failures) or "
                             "atheris (coverage-guided, when installed)")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="stop each target after S seconds even if fewer inputs ran (random engine)")
    parser.add_argument("--tolerate", action="append", default=[], metavar="KIND",
                        help="count, but do not fail on, core failures of this kind (repeatable; "
                             f"known and reported: {', '.join(sorted(KNOWN_CORE_DEFECTS)) or 'none'})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.inputs < 1:
        print("ferry bench fuzz: --inputs must be positive", file=sys.stderr)
        return 2
    targets = TARGETS if args.target == "all" else (args.target,)
    if args.engine == "atheris":
        if not atheris_available():
            print("ferry bench fuzz: --engine atheris needs the atheris package, which is not installed "
                  "(atheris 3.1.0 ships wheels for CPython 3.12+ only; 3.0.0 has CPython 3.11 wheels)",
                  file=sys.stderr)
            return 2
        if len(targets) != 1:
            print("ferry bench fuzz: --engine atheris runs one --target at a time", file=sys.stderr)
            return 2
        return run_atheris(targets[0], args.inputs, args.seed, frozenset(args.tolerate))

    def on_crash(crash: Crash) -> None:
        rerun = ""
        if args.engine == "random":
            rerun = (f"run it alone: ferry bench fuzz --target {crash.target} --seed {args.seed} "
                     f"--start {crash.index} --inputs 1\n")
        print(crash.render() + rerun, flush=True)

    def progress(report: Report) -> None:
        if not args.quiet:
            print(f"  {report.summary()}", file=sys.stderr, flush=True)

    failed = False
    for target in targets:
        print(f"fuzzing {target} with the {args.engine} engine, seed {args.seed}, {args.inputs:,} inputs",
              flush=True)
        if args.engine == "hypothesis":
            report = run_hypothesis(target, args.inputs, args.seed, on_crash=on_crash,
                                    tolerate=frozenset(args.tolerate))
        else:
            report = run_random(target, args.inputs, args.seed, start=args.start, time_limit_s=args.time_limit,
                                progress=progress, on_crash=on_crash, tolerate=frozenset(args.tolerate))
        print(report.summary(), flush=True)
        for sig, count in report.signatures.items():
            print(f"  {count:>8,} x {sig}", flush=True)
        failed = failed or bool(report.crash_count)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
