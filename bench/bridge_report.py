"""Printing `ferry bench bridge` results: one Markdown table, the targets, what was saturated, JSON.

The issue's targets are for Ferry's gateway; each is printed beside its
figure as met or "missed by" how much, never left out. The RSS target is
stated at 10,000,000 spooled readings: a smaller run that already exceeds it
has missed it (RSS only grows with the spool), one that stays below it cannot
say and says so.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from ferry.bench.bridge_results import BridgeResults, SystemRun
from ferry.bench.bridge_kafka import NAMING, PARTITIONS
from ferry.bench.bridge_systems import OTHERS, CpuShare

SUSTAINED_TARGET_PER_S = 20_000
DRAIN_TARGET_PER_S = 50_000
RSS_TARGET_BYTES = 150_000_000
RSS_TARGET_SPOOL = 10_000_000
RESTART_TARGET_S = 10.0
SATURATED_PCT = 90.0
"""A thread at or above this share of a core, or a machine this busy, is taken to be the limit."""


@dataclass(frozen=True, slots=True)
class Verdict:
    """One target against Ferry's figure."""

    name: str
    target: str
    """The target alone, for the table's target column."""
    met: bool | None
    """None: not checked (the run failed, or this spool size cannot tell)."""
    detail: str


def _higher_is_better(name: str, value: float | None, target: float, unit: str) -> Verdict:
    wanted = f"≥ {target:,.0f} {unit}"
    if value is None:
        return Verdict(name, wanted, None, "not measured")
    if value >= target:
        return Verdict(name, wanted, True, f"{value:,.0f} {unit}")
    return Verdict(name, wanted, False,
                   f"missed by {target - value:,.0f} {unit} ({100 * (target - value) / target:.0f} %)")


def verdicts(results: BridgeResults) -> tuple[Verdict, ...]:
    ferry = next((r for r in results.runs if r.label == "Ferry"), None)
    s = ferry.sustained if ferry else None
    d = ferry.drain if ferry else None
    r = ferry.restart if ferry else None
    out = [
        _higher_is_better("sustained, fsync on", s.kafka_per_s if s else None, SUSTAINED_TARGET_PER_S, "msg/s"),
        _higher_is_better("drain", d.drain_per_s if d else None, DRAIN_TARGET_PER_S, "msg/s"),
    ]
    rss_target = f"≤ {RSS_TARGET_BYTES / 1e6:.0f} MB at {RSS_TARGET_SPOOL:,} spooled"
    if d is None and r is None:
        out.append(Verdict("RSS", rss_target, None, "not measured"))
    else:
        peaks = {}
        if d is not None:
            peaks.update({"with the spool full": d.rss_full_bytes, "during the drain": d.rss_drain_peak_bytes})
        if r is not None:
            peaks.update({"before the SIGKILL": r.rss_before_kill_bytes, "after the restart": r.rss_after_bytes})
        spooled = d.spooled if d is not None else r.spooled
        when, rss = max(peaks.items(), key=lambda item: item[1])
        where = f"{rss / 1e6:,.0f} MB {when}, {spooled:,} spooled"
        if rss > RSS_TARGET_BYTES:
            already = "" if spooled >= RSS_TARGET_SPOOL else f"; already at {spooled:,}, RSS grows with the spool"
            out.append(Verdict("RSS", rss_target, False,
                               f"missed by {(rss - RSS_TARGET_BYTES) / 1e6:,.0f} MB ({where}{already})"))
        elif spooled >= RSS_TARGET_SPOOL:
            out.append(Verdict("RSS", rss_target, True, where))
        else:
            out.append(Verdict("RSS", rss_target, None, f"{where}: too few to tell"))
    restart_target = f"≤ {RESTART_TARGET_S:g} s"
    if r is None:
        out.append(Verdict("restart", restart_target, None, "not measured"))
    elif r.ready_s <= RESTART_TARGET_S:
        out.append(Verdict("restart", restart_target, True, f"{r.ready_s:.2f} s with {r.spooled:,} spooled"))
    else:
        out.append(Verdict("restart", restart_target, False, f"missed by {r.ready_s - RESTART_TARGET_S:.1f} s "
                                                             f"({r.ready_s:.2f} s with {r.spooled:,} spooled)"))
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Row:
    """One line of the table."""

    label: str
    value: Callable[[SystemRun], float | None]
    """The figure from one system's run; None when not measured."""
    fmt: str
    verdict: int | None = None
    """Index into `verdicts()` of the target printed beside it."""
    ratio: bool = True
    """Print Ferry ÷ peer (not for counts of lost or duplicated readings)."""
    after_restart: bool = False
    """A figure of the restart: no ratio when the peer lost its spool (it had nothing to recover)."""


def _rows(results: BridgeResults) -> tuple[Row, ...]:
    s = results.settings
    mb = 1e6
    return (
        Row("sustained: device publishes → records acknowledged by Kafka, per s",
            lambda r: r.sustained and r.sustained.kafka_per_s, ",.0f", verdict=0),
        Row("sustained: device publishes PUBACKed by the broker, per s",
            lambda r: r.sustained and r.sustained.pubacked_per_s, ",.0f"),
        Row("spool fill, Kafka down: publishes PUBACKed per s", lambda r: r.drain and r.drain.fill_per_s, ",.0f"),
        Row(f"drain of {s.spool:,} spooled: records acknowledged by Kafka per s",
            lambda r: r.drain and r.drain.drain_per_s, ",.0f", verdict=1),
        Row("Kafka back → first record acknowledged, s", lambda r: r.drain and r.drain.first_ack_s, ".1f"),
        Row(f"Kafka back → caught up, live devices at {s.live_rate_per_s:,} msg/s meanwhile, s",
            lambda r: r.drain and r.drain.caught_up_s, ".1f"),
        Row("RSS when the outage began, MB", lambda r: r.drain and r.drain.rss_before_bytes / mb, ",.0f"),
        Row(f"RSS with {s.spool:,} spooled, MB", lambda r: r.drain and r.drain.rss_full_bytes / mb, ",.0f",
            verdict=2),
        Row("RSS peak during the drain, MB", lambda r: r.drain and r.drain.rss_drain_peak_bytes / mb, ",.0f"),
        Row(f"restart with {s.spool:,} spooled: SIGKILL → accepting connections, s",
            lambda r: r.restart and r.restart.ready_s, ".2f", verdict=3, after_restart=True),
        Row("RSS after the restart, MB", lambda r: r.restart and r.restart.rss_after_bytes / mb, ",.0f",
            after_restart=True),
        Row("spooled readings in Kafka after the SIGKILL and restart", lambda r: r.count and _survivors(r), ",.0f",
            ratio=False),
        Row("acknowledged readings missing in Kafka, all phases", lambda r: r.count and r.count.missing, ",.0f",
            ratio=False),
        Row("duplicates in Kafka, all phases", lambda r: r.count and r.count.duplicates, ",.0f", ratio=False),
    )


def _survivors(run: SystemRun) -> int:
    return sum(d.acknowledged - d.missing for d in run.count.for_tag("full"))


def _fmt(value: float | None, fmt: str) -> str:
    return "-" if value is None else format(value, fmt)


def render_table(results: BridgeResults) -> str:
    runs = results.runs
    ferry = next((r for r in runs if r.label == "Ferry"), None)
    peer = next((r for r in runs if r.label != "Ferry"), None)
    checks = verdicts(results)
    headers = ["measure", *(r.label for r in runs)]
    if ferry and peer:
        headers.append("Ferry ÷ peer")
    headers += ["target", "Ferry against the target"]
    lines = ["| " + " | ".join(headers) + " |",
             "| --- | " + " | ".join("---:" for _ in headers[1:-2]) + " | --- | --- |"]
    peer_lost_spool = peer is not None and peer.count is not None and peer.restart is not None and \
        _survivors(peer) < peer.restart.spooled
    for row in _rows(results):
        values = [row.value(r) for r in runs]
        cells = [row.label, *(_fmt(v, row.fmt) for v in values)]
        if ferry and peer:
            ours, theirs = row.value(ferry), row.value(peer)
            if row.after_restart and peer_lost_spool:
                cells.append("peer lost its spool")
            elif row.ratio and ours is not None and theirs:
                cells.append(f"{ours / theirs:.2f}")
            else:
                cells.append("")
        if row.verdict is None:
            cells += ["", ""]
        else:
            verdict = checks[row.verdict]
            cells += [verdict.target, _verdict_text(verdict)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _verdict_text(verdict: Verdict) -> str:
    return {True: "**met**", False: "**missed**", None: "not checked"}[verdict.met] + ": " + verdict.detail


def _cpu_line(shares: tuple[CpuShare, ...], cpus: int) -> str:
    total = sum(s.percent for s in shares)
    parts = []
    for share in sorted(shares, key=lambda s: -s.percent):
        if share.process == OTHERS:
            parts.append(f"{OTHERS} {share.percent:.0f} %")
            continue
        detail = f"threads named {share.main_name!r} {share.main_named_percent:.0f} %"
        if share.busiest_thread_percent < share.main_named_percent - 0.5:
            detail += f", busiest thread {share.busiest_thread_percent:.0f} %"
        parts.append(f"{share.process} {share.percent:.0f} % ({detail})")
    return f"{', '.join(parts)}; together {total:.0f} % of {cpus * 100} %"


def bound_by(shares: tuple[CpuShare, ...], cpus: int) -> str:
    """What limited a window, judged by CPU: an interpreter or thread at a full core, or no core left."""
    hot = [s for s in shares if max(s.main_named_percent, s.busiest_thread_percent) >= SATURATED_PCT]
    if hot:
        return " and ".join(f"{s.process} (threads named {s.main_name!r}: {s.main_named_percent:.0f} % of a core; "
                            "for CPython the GIL)" for s in hot)
    total = sum(s.percent for s in shares)
    if total >= SATURATED_PCT * cpus:
        others = sum(s.percent for s in shares if s.process == OTHERS)
        return (f"the machine: {total:.0f} % of {cpus * 100} % busy ({others:.0f} % of it {OTHERS}), "
                "no process alone at a full core")
    return "no process at a full core and CPU to spare: the flow (in-flight windows, fsync, Kafka round trips)"


def render_saturation(results: BridgeResults) -> str:
    lines = ["What was saturated (CPU over the window; a process may use more than one core):"]
    for run in results.runs:
        for what, shares in (("sustained", run.sustained and run.sustained.cpu),
                             ("drain", run.drain and run.drain.cpu)):
            if shares:
                lines.append(f"- {run.label}, {what}: {_cpu_line(shares, results.cpus)}. "
                             f"Bound by: {bound_by(shares, results.cpus)}.")
    ceiling = results.ceiling
    if ceiling is not None:
        fastest = max((r.sustained.pubacked_per_s for r in results.runs if r.sustained), default=0.0)
        verdict = ("not the bottleneck" if fastest < ceiling.pubacked_per_s / 2 else
                   "CLOSE TO ITS CEILING: the figures may understate the systems")
        lines.append(f"- The load generator alone against a null broker: {ceiling.pubacked_per_s:,.0f} msg/s "
                     f"PUBACKed at {ceiling.cpu_percent:.0f} % of a core; the fastest system took "
                     f"{fastest:,.0f} msg/s: {verdict}.")
    return "\n".join(lines)


def render(results: BridgeResults) -> str:
    s = results.settings
    parts = [
        f"ferry bench bridge, {results.date}: {results.cpus} CPUs ({results.cpu_model}), "
        f"{results.memory_bytes / 2**30:.0f} GiB RAM, Linux {results.kernel}, Python {results.python}; "
        + ", ".join(f"{name} {version}" for name, version in results.versions),
        f"Load: {s.publishers} devices, one connection each, QoS 1, {s.window} in flight each, 137-byte contract "
        f"telemetry on ferry/bench/<device>/telemetry; sustained window {s.duration_s:g} s after {s.warmup_s:g} s; "
        f"spool {s.spool:,} readings published while Kafka is unreachable (the link to it is down); live devices "
        f"at {s.live_rate_per_s:,} msg/s during the drain.",
        f"Kafka: a fresh Tansu (memory storage) per system behind the link simulator, topics {NAMING.telemetry_topic} "
        f"and {NAMING.deadletter_topic} with {PARTITIONS} partitions each; every record is read back at the end and "
        "checked against the PUBACKs each device got. Nothing is pinned: all processes share the CPUs.",
    ]
    for run in results.runs:
        parts.append(f"{run.label}: {run.description}; " + "; ".join(run.notes) + ".")
    parts.append(render_table(results))
    parts.append("Ratios are Ferry ÷ peer row by row (per s: higher is better; s and MB: lower is better). "
                 "MB = 10^6 bytes of VmRSS; the peer's RSS is Mosquitto's plus the forwarder's.")
    for run in results.runs:
        if run.error:
            parts.append(f"{run.label} FAILED: {run.error}")
        if run.count and run.count.deadlettered:
            parts.append(f"{run.label}: {run.count.deadlettered:,} records on {NAMING.deadletter_topic} "
                         "(payloads that broke the contract: a benchmark bug)")
        if run.drain and run.drain.acked_during_outage:
            parts.append(f"{run.label}: {run.drain.acked_during_outage:,} records were acknowledged by Kafka after "
                         "the link went down (in flight at that moment)")
    parts.append(render_saturation(results))
    lines = ["Targets (Ferry):"]
    for verdict in verdicts(results):
        lines.append(f"- {verdict.name} {verdict.target}: {_verdict_text(verdict)}")
    parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def results_json(results: BridgeResults) -> dict:
    data = dataclasses.asdict(results)
    data["targets"] = [dataclasses.asdict(v) for v in verdicts(results)]
    for run, run_data in zip(results.runs, data["runs"]):
        if run.drain is not None:
            run_data["drain"]["drain_per_s"] = run.drain.drain_per_s
        if run.count is not None:
            run_data["count"].update(acknowledged=run.count.acknowledged, missing=run.count.missing,
                                     duplicates=run.count.duplicates)
    return data


def write_results_json(results: BridgeResults, path: Path) -> None:
    path.write_text(json.dumps(results_json(results), indent=1))
