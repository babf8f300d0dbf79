"""Printing `ferry bench broker` results: a table per case, the targets, the generator verdict, JSON."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from ferry.bench.broker import CaseResult, Environment, RunRecord
from ferry.bench.model import FlowResult, IdleResult, to_json
from ferry.bench.scenarios import SATURATED_CPU_PCT, bound_by
from ferry.bench.targets import MOSQUITTO, MOSQUITTO_INSTALL_HINT, SINK

Row = tuple[str, Callable[[object], float | str | None], str]
"""Label, how to get the value from a result, format ('' for text)."""

_FLOW_ROWS: tuple[Row, ...] = (
    ("delivered msg/s", lambda r: r.delivered_per_s, ",.0f"),
    ("published msg/s", lambda r: r.published_per_s, ",.0f"),
    ("latency p50 ms", lambda r: r.latency.p50_us / 1000, ".3f"),
    ("latency p99 ms", lambda r: r.latency.p99_us / 1000, ".3f"),
    ("latency max ms", lambda r: r.latency.max_us / 1000, ".3f"),
    ("undelivered at end %", lambda r: r.loss_pct, ".2f"),
    ("broker CPU % of 1 core", lambda r: r.broker_cpu_pct, ".0f"),
    ("broker RSS MiB", lambda r: r.broker_rss_kb / 1024, ".1f"),
    ("generator CPU % of 1 core", lambda r: r.generator_cpu_pct, ".0f"),
    ("bound by", bound_by, ""),
)
_QOS1_ROWS: tuple[Row, ...] = (
    ("PUBACK latency p50 ms", lambda r: r.ack_latency.p50_us / 1000, ".3f"),
    ("PUBACK latency p99 ms", lambda r: r.ack_latency.p99_us / 1000, ".3f"),
)
_PACED_ROWS: tuple[Row, ...] = (
    ("most due, unsent (window full)", lambda r: r.max_backlog, ",.0f"),
)
_CEILING_ROWS: tuple[Row, ...] = (
    ("published msg/s", lambda r: r.published_per_s, ",.0f"),
    ("delivered msg/s", lambda r: r.delivered_per_s, ",.0f"),
    ("generator CPU % of 1 core", lambda r: r.generator_cpu_pct, ".0f"),
    ("null sink CPU % of 1 core", lambda r: r.broker_cpu_pct, ".0f"),
)
_IDLE_ROWS: tuple[Row, ...] = (
    ("connected", lambda r: r.connected, ",.0f"),
    ("still connected at the end", lambda r: r.alive_at_end, ",.0f"),
    ("PINGREQ sent", lambda r: r.pings_sent, ",.0f"),
    ("PINGRESP received", lambda r: r.pings_answered, ",.0f"),
    ("time to connect all s", lambda r: r.connect_s, ".1f"),
    ("broker RSS before MiB", lambda r: r.broker_rss_idle_kb / 1024, ".1f"),
    ("broker RSS connected MiB", lambda r: r.broker_rss_connected_kb / 1024, ".1f"),
    ("broker RSS at the end MiB", lambda r: r.broker_rss_end_kb / 1024, ".1f"),
    ("RSS per connection KiB",
     lambda r: (r.broker_rss_end_kb - r.broker_rss_idle_kb) / max(1, r.connected), ".1f"),
    ("broker CPU % during hold", lambda r: r.broker_cpu_pct, ".1f"),
    ("generator CPU % during hold", lambda r: r.generator_cpu_pct, ".1f"),
)


def _fmt(value: float | str | None, fmt: str) -> str:
    if value is None:
        return "-"
    if isinstance(value, str):
        return value
    return format(value, fmt)


def _rows_for(result: CaseResult) -> tuple[Row, ...]:
    case = result.case
    if case.scenario == "generator-ceiling":
        return _CEILING_ROWS
    if case.scenario == "idle-10k":
        return _IDLE_ROWS
    rows = _FLOW_ROWS
    if case.spec.qos:
        rows = rows[:5] + _QOS1_ROWS + rows[5:]
    if case.scenario == "latency-10k" and case.spec.qos:
        rows = rows + _PACED_ROWS
    return rows


def render_case(result: CaseResult) -> str:
    case = result.case
    runs = result.runs
    mosquitto = next((r for r in runs if r.variant == MOSQUITTO and r.result is not None), None)
    ferries = [r for r in runs if r.variant.kind == "ferry"]
    headers = [r.variant.label for r in runs]
    ratio_runs = [r for r in ferries if r.result is not None] if mosquitto is not None else []
    headers += [f"{r.variant.label}/Mosquitto" for r in ratio_runs]
    lines = [f"== {case.scenario}: {case.description} =="]
    table: list[list[str]] = [["", *headers]]
    for label, get, fmt in _rows_for(result):
        row = [label]
        for run in runs:
            row.append(_fmt(get(run.result), fmt) if run.result is not None else "failed")
        for run in ratio_runs:
            ours, theirs = get(run.result), get(mosquitto.result)
            if isinstance(ours, (int, float)) and isinstance(theirs, (int, float)) and theirs and fmt:
                row.append(f"{ours / theirs:.2f}")
            else:
                row.append("")
        table.append(row)
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    for row in table:
        lines.append("  ".join([row[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(row[1:], widths[1:])]))
    for run in runs:
        if run.error:
            lines.append(f"  {run.variant.label} FAILED: {run.error}")
        if isinstance(run.result, FlowResult) and run.result.errors:
            lines.append(f"  {run.variant.label} generator errors: {'; '.join(run.result.errors[:3])}")
        if isinstance(run.result, FlowResult) and run.result.written_off:
            lines.append(f"  {run.variant.label}: {run.result.written_off:,} deliveries never arrived "
                         "(dropped by the broker) and were written off to keep the loop going")
        if isinstance(run.result, IdleResult):
            if run.result.errors:
                lines.append(f"  {run.variant.label} errors: {'; '.join(run.result.errors[:3])}")
            lines.append(_nofile_note(run, case.spec.connections))
    if case.note:
        lines.append(f"  note: {case.note}")
    for check in result.targets:
        verdict = {True: "MET", False: "NOT MET", None: "NOT CHECKED"}[check.met]
        lines.append(f"  target: {check.name}: {verdict} ({check.detail})")
    return "\n".join(lines)


def _nofile_note(run: RunRecord, connections: int) -> str:
    if run.broker_nofile is None:
        return f"  {run.variant.label}: open-files limit unknown"
    soft, hard = run.broker_nofile
    need = connections + 64
    verdict = "enough" if soft >= need else f"TOO LOW: {connections:,} clients need about {need:,}"
    return f"  {run.variant.label}: open-files limit soft {soft:,} / hard {hard:,} ({verdict})"


def render_notes(env: Environment, results: list[CaseResult]) -> str:
    lines = ["== setup =="]
    lines.append(f"  {env.cpus} CPUs ({env.cpu_model}), Linux {env.kernel}, Python {env.python}; "
                 f"open files {env.nofile[0]:,}/{env.nofile[1]:,}")
    if env.pinned:
        lines.append("  The broker is pinned to CPU 0 and the load generator (one process, uvloop) to CPU 1: "
                     "they share this machine, each gets one core.")
    else:
        lines.append("  Not pinned: broker and load generator share the CPUs as the scheduler sees fit.")
    lines.append("  Ratio columns: Ferry ÷ Mosquitto, row by row (msg/s: higher is better; latency, CPU, RSS: lower).")
    lines.append("  64-byte payloads carrying the send time (CLOCK_MONOTONIC); latency = send → receipt by a "
                 "subscriber; TCP_NODELAY on every socket; MQTT 3.1.1.")
    lines.append("  Ferry: uvloop, max_queued_messages raised to 100,000,000 (Mosquitto: max_queued_messages 0) so "
                 "neither drops QoS 1 messages for a slow subscriber; QoS 0 cases use the default durability (fsync).")
    if env.ferry_overrides:
        lines.append(f"  Ferry settings changed with --ferry-set: {'; '.join(env.ferry_overrides)}")
    if env.mosquitto:
        lines.append(f"  Mosquitto {env.mosquitto_version} ({env.mosquitto}): persistence true with its default "
                     "autosave_interval (1800 s) — it does NOT fsync per message, Ferry with durability = fsync "
                     "does; set_tcp_nodelay true; max_queued_messages 0.")
    elif env.mosquitto_skipped:
        lines.append("  Mosquitto skipped (--no-mosquitto): Ferry ran alone.")
    else:
        lines.append(f"  Mosquitto was not found: Ferry ran alone. {MOSQUITTO_INSTALL_HINT[0].upper()}"
                     f"{MOSQUITTO_INSTALL_HINT[1:]}.")
    return "\n".join(lines)


def render_generator_verdict(results: list[CaseResult]) -> str:
    lines = ["== was the load generator the bottleneck? =="]
    ceiling = [r for r in results if r.case.scenario == "generator-ceiling"]
    for case_result in ceiling:
        for run in case_result.runs:
            if isinstance(run.result, FlowResult):
                rate = max(run.result.published_per_s, run.result.delivered_per_s)
                lines.append(f"  ceiling, {case_result.case.description}: {rate:,.0f} msg/s "
                             f"at {run.result.generator_cpu_pct:.0f}% CPU")
    flows = [(c, r) for c in results if c.case.scenario != "generator-ceiling"
             for r in c.runs if isinstance(r.result, FlowResult) and r.variant != SINK]
    if not flows:
        lines.append("  no broker runs")
        return "\n".join(lines)
    busiest = max(flows, key=lambda cr: cr[1].result.generator_cpu_pct)
    c, r = busiest
    lines.append(f"  busiest generator in a broker run: {r.result.generator_cpu_pct:.0f}% of its core "
                 f"({c.case.scenario} / {c.case.name}, {r.variant.label}; broker CPU {r.result.broker_cpu_pct:.0f}%)")
    def names(pairs) -> str:
        return ", ".join(f"{c.case.scenario}/{c.case.name} {r.variant.label}" for c, r in pairs)

    generator_bound = [(c, r) for c, r in flows if bound_by(r.result) == "GENERATOR"]
    both = [(c, r) for c, r in flows if bound_by(r.result) == "broker+generator"]
    if generator_bound:
        lines.append(f"  YES in: {names(generator_bound)} (generator ≥ {SATURATED_CPU_PCT:.0f}% of its core while "
                     "the broker was below): those numbers understate the broker.")
    else:
        lines.append(f"  NO: in every broker run the broker was saturated (≥ {SATURATED_CPU_PCT:.0f}% of its core) "
                     "or the generator had CPU to spare.")
    if both:
        lines.append(f"  Both near saturation in: {names(both)}. The broker had no spare CPU, so a faster generator "
                     "would not raise its rate much; the generator reads bigger chunks when it falls behind, and "
                     "its ceiling against the null sink is far above that rate.")
    return "\n".join(lines)


def render(env: Environment, results: list[CaseResult]) -> str:
    parts = [render_notes(env, results)]
    parts += [render_case(r) for r in results]
    parts.append(render_generator_verdict(results))
    checks = [(r.case, c) for r in results for c in r.targets]
    if checks:
        lines = ["== targets =="]
        for case, check in checks:
            verdict = {True: "MET", False: "NOT MET", None: "NOT CHECKED"}[check.met]
            lines.append(f"  {verdict:11} {check.name}: {check.detail}")
        parts.append("\n".join(lines))
    return "\n\n".join(parts) + "\n"


def results_json(env: Environment, results: list[CaseResult]) -> dict:
    def run_json(run: RunRecord) -> dict:
        return {
            "broker": run.variant.label,
            "settings": list(run.broker_notes),
            "broker_nofile": list(run.broker_nofile) if run.broker_nofile else None,
            "error": run.error,
            "result": to_json(run.result) if run.result is not None else None,
            "bound_by": bound_by(run.result) if isinstance(run.result, FlowResult) else None,
        }

    cases = []
    for r in results:
        mosquitto = next((x for x in r.runs if x.variant == MOSQUITTO and isinstance(x.result, FlowResult)), None)
        ratios = {}
        if mosquitto is not None and mosquitto.result.delivered_per_s:
            for x in r.runs:
                if x.variant.kind == "ferry" and isinstance(x.result, FlowResult):
                    ratios[x.variant.label] = x.result.delivered_per_s / mosquitto.result.delivered_per_s
        cases.append({
            "scenario": r.case.scenario, "case": r.case.name, "description": r.case.description,
            "spec": to_json(r.case.spec), "runs": [run_json(x) for x in r.runs],
            "delivered_ratio_vs_mosquitto": ratios,
            "targets": [{"name": c.name, "met": c.met, "detail": c.detail} for c in r.targets],
        })
    return {"environment": to_json(env), "cases": cases}


def write_results_json(env: Environment, results: list[CaseResult], path: Path) -> None:
    path.write_text(json.dumps(results_json(env, results), indent=1))
