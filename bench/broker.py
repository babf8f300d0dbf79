"""`ferry bench broker`: run each case against Ferry, Mosquitto (when installed) and the null sink.

For every run: a fresh broker on a free port with its own data directory,
pinned to CPU 0, and a fresh load generator process pinned to CPU 1 (on a
machine with at least two CPUs; `--no-pin` leaves both to the scheduler).
Every process is stopped when its run ends, on errors and on Ctrl-C.
"""

from __future__ import annotations

import logging
import os
import platform
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from ferry.bench.loadgen import raise_nofile_limit
from ferry.bench.model import FlowResult, IdleResult
from ferry.bench.runner import run_load
from ferry.bench.scenarios import Case, Settings, TargetCheck, build_cases, check_flood, check_targets
from ferry.bench.targets import Variant, find_mosquitto, make_target, mosquitto_version, nofile_limit

log = logging.getLogger(__name__)

BROKER_CPU = 0
GENERATOR_CPU = 1
SETTLE_S = 1.0
"""Pause after a run, once its dirty pages are synced, so its writeback does not disturb the next."""


@dataclass(frozen=True, slots=True)
class RunRecord:
    """One case against one broker."""

    variant: Variant
    result: FlowResult | IdleResult | None
    error: str | None = None
    broker_notes: tuple[str, ...] = ()
    broker_nofile: tuple[int, int] | None = None
    """The broker's RLIMIT_NOFILE (soft, hard) as it ran."""


@dataclass(frozen=True, slots=True)
class CaseResult:
    case: Case
    runs: tuple[RunRecord, ...]
    targets: tuple[TargetCheck, ...]


@dataclass(frozen=True, slots=True)
class Environment:
    """Where the numbers were taken."""

    cpus: int
    cpu_model: str
    kernel: str
    python: str
    pinned: bool
    mosquitto: str | None
    """Path of the Mosquitto binary, None when not installed."""
    mosquitto_version: str | None
    nofile: tuple[int, int]
    """This process's RLIMIT_NOFILE (soft, hard); brokers inherit it."""
    ferry_overrides: tuple[str, ...] = ()
    """`--ferry-set` settings, as SECTION.KEY = VALUE."""
    mosquitto_skipped: bool = False
    """`--no-mosquitto`: not looked for."""


def describe_environment(pin: bool, mosquitto: str | None, ferry_overrides: tuple = (),
                         mosquitto_skipped: bool = False) -> Environment:
    import resource

    model = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            model = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), model)
    except OSError:
        pass
    return Environment(
        cpus=os.cpu_count() or 1, cpu_model=model, kernel=platform.release(),
        python=platform.python_version(), pinned=pin, mosquitto=mosquitto,
        mosquitto_version=mosquitto_version(mosquitto) if mosquitto else None,
        nofile=resource.getrlimit(resource.RLIMIT_NOFILE),
        ferry_overrides=tuple(f"{section}.{key} = {value!r}" for section, key, value in ferry_overrides),
        mosquitto_skipped=mosquitto_skipped,
    )


def can_pin() -> bool:
    try:
        return {BROKER_CPU, GENERATOR_CPU} <= os.sched_getaffinity(0)
    except (AttributeError, OSError):
        return False


def run_case(case: Case, work_dir: Path, pin: bool, mosquitto: str | None, progress,
             ferry_overrides: tuple = ()) -> CaseResult:
    runs = []
    for variant in case.variants:
        name = f"{case.scenario}.{case.name}.{variant.label.replace(' ', '-').lower()}"
        progress(f"  {case.scenario} / {case.name}: {variant.label} ...")
        target = make_target(variant, work_dir / name, {BROKER_CPU} if pin else None, mosquitto, ferry_overrides)
        try:
            with target:
                spec = replace(case.spec, port=target.port, broker_pid=target.pid,
                               cpu=GENERATOR_CPU if pin else None)
                limits = nofile_limit(target.pid)
                result = run_load(spec, work_dir, name)
            runs.append(RunRecord(variant, result, None, target.notes, limits))
            progress(f"    {_one_line(result)}")
        except (OSError, RuntimeError) as exc:
            # A failed run is reported in its table; the other runs go on.
            text = f"{type(exc).__name__}: {exc}"
            tail = target.log_tail()
            if tail:
                text += f"\n--- {variant.label} log tail ---\n{tail}"
            runs.append(RunRecord(variant, None, text, target.notes))
            progress(f"    FAILED: {text.splitlines()[0]}")
        _settle()
    results = {r.variant.label: r.result for r in runs}
    return CaseResult(case, tuple(runs), tuple(check_targets(case, results)))


def _settle() -> None:
    """Flush what the last broker wrote (a QoS 1 run leaves hundreds of MB of dirty pages) and wait."""
    os.sync()
    time.sleep(SETTLE_S)


def _one_line(result: FlowResult | IdleResult) -> str:
    if isinstance(result, IdleResult):
        return (f"{result.alive_at_end:,}/{result.requested:,} alive, {result.pings_answered:,}/"
                f"{result.pings_sent:,} pings answered, broker RSS {result.broker_rss_end_kb / 1024:.1f} MiB")
    return (f"delivered {result.delivered_per_s:,.0f} msg/s, published {result.published_per_s:,.0f} msg/s, "
            f"p99 {result.latency.p99_us / 1000:.2f} ms, broker CPU {result.broker_cpu_pct:.0f}%, "
            f"generator CPU {result.generator_cpu_pct:.0f}%")


def run_benchmark(scenarios: tuple[str, ...], settings: Settings, work_dir: Path, *, pin: bool,
                  use_mosquitto: bool, progress=None) -> tuple[Environment, list[CaseResult]]:
    progress = progress or (lambda text: print(text, file=sys.stderr, flush=True))
    # The brokers inherit it: Mosquitto does not raise its own soft limit (with the usual 1,024 it
    # stops accepting at about 1,016 clients); Ferry's gateway raises its own.
    raise_nofile_limit()
    mosquitto = find_mosquitto() if use_mosquitto else None
    pin = pin and can_pin()
    env = describe_environment(pin, mosquitto, settings.ferry_overrides, mosquitto_skipped=not use_mosquitto)
    results = []
    for case in build_cases(scenarios, settings, mosquitto is not None):
        results.append(run_case(case, work_dir, pin, mosquitto, progress, settings.ferry_overrides))
    return env, with_flood_checks(results)


def with_flood_checks(results: list[CaseResult]) -> list[CaseResult]:
    """Give the QoS 0 flood case its target: delivered vs the saturated rate, the saturated case's
    delivered rate on the same broker (both run in qos0-throughput)."""
    def by_label(name: str) -> dict | None:
        found = next((r for r in results if r.case.scenario == "qos0-throughput" and r.case.name == name), None)
        return None if found is None else {run.variant.label: run.result for run in found.runs}

    flood, saturated = by_label("flood"), by_label("saturated")
    if flood is None or saturated is None:
        return results
    checks = tuple(check_flood(flood, saturated))
    return [replace(r, targets=r.targets + checks) if r.case.scenario == "qos0-throughput" and r.case.name == "flood"
            else r for r in results]
