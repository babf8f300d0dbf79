"""The scenarios of `ferry bench broker`: which load shapes run against which brokers, and the targets.

Pure data and arithmetic: building the cases from the command line's
settings, and checking a case's results against the issue's targets. Running
them is `bench/broker.py`'s job, printing them `bench/report.py`'s.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

from ferry.bench.model import FlowResult, IdleResult, LoadSpec, Mode
from ferry.bench.targets import FERRY_FSYNC, FERRY_FSYNC_QOS1, FERRY_OS, MOSQUITTO, SINK, Variant

SCENARIOS = ("generator-ceiling", "qos0-throughput", "qos1-throughput", "latency-10k", "idle-10k")
CLOSED_LOOP_OUTSTANDING = 2_000
"""QoS 0 closed loop: messages per subscriber published but not yet delivered, at most."""
QOS0_RATIO_TARGET = 0.5
FLOOD_RATIO_TARGET = 0.8
"""Under a flood, a broker delivers at least this share of its saturated rate (see `check_flood`)."""
SATURATED_OUTSTANDING = 50_000
"""The saturated case's closed loop: deep enough (about half a second of traffic) that the broker,
not the loop's round trip, sets the rate."""
QOS1_RATIO_TARGET = 0.5
P99_TARGET_US = 2_000.0
SATURATED_CPU_PCT = 90.0
"""A process at or above this share of its core is taken to be the bottleneck."""


@dataclass(frozen=True, slots=True)
class Settings:
    """What the command line chose."""

    duration_s: float = 10.0
    warmup_s: float = 2.0
    drain_s: float = 15.0
    publishers: int = 10
    subscribers: int = 1
    fanout: int = 50
    """Subscribers of the fan-out case (one publisher); 0 skips it."""
    rate_per_s: int = 10_000
    connections: int = 10_000
    idle_hold_s: float = 30.0
    idle_keepalive_s: int = 20
    window: int = 20
    ferry_overrides: tuple[tuple[str, str, object], ...] = ()
    """(section, key, value) set in every Ferry run's ferry.toml (`--ferry-set`)."""


@dataclass(frozen=True, slots=True)
class Case:
    """One load shape, run against each of `variants` back to back with the same spec."""

    scenario: str
    name: str
    description: str
    spec: LoadSpec
    """host, port, broker_pid and cpu are filled in per run."""
    variants: tuple[Variant, ...]
    note: str = ""
    """How to read the table, printed under it."""


@dataclass(frozen=True, slots=True)
class TargetCheck:
    """One of the issue's targets, checked against one case."""

    name: str
    met: bool | None
    """None: could not be checked (no Mosquitto, or a run failed)."""
    detail: str


def build_cases(scenarios: tuple[str, ...], s: Settings, with_mosquitto: bool) -> list[Case]:
    def variants(*ferry: Variant) -> tuple[Variant, ...]:
        return (*ferry, MOSQUITTO) if with_mosquitto else tuple(ferry)

    base = LoadSpec(Mode.THROUGHPUT, "127.0.0.1", 0, warmup_s=s.warmup_s, duration_s=s.duration_s,
                    drain_s=s.drain_s, publishers=s.publishers, subscribers=s.subscribers, window=s.window)
    shape = f"{s.publishers} → {s.subscribers}"
    cases: list[Case] = []
    if "generator-ceiling" in scenarios:
        sink = replace(base, drain_s=0.0)
        cases += [
            Case("generator-ceiling", "qos0-publish", f"QoS 0 publish only ({s.publishers} → null sink)",
                 replace(sink, subscribers=0), (SINK,)),
            Case("generator-ceiling", "qos0-receive", "QoS 0 receive only (null sink → 1 subscriber)",
                 replace(sink, publishers=0, subscribers=1), (SINK,)),
            Case("generator-ceiling", "qos1-publish",
                 f"QoS 1 publish only ({s.publishers} → null sink that acks, window {s.window})",
                 replace(sink, qos=1, subscribers=0), (SINK,)),
            Case("generator-ceiling", "qos1-receive", "QoS 1 receive and ack (null sink → 1 subscriber)",
                 replace(sink, qos=1, publishers=0, subscribers=1), (SINK,)),
        ]
    if "qos0-throughput" in scenarios:
        closed = replace(base, max_outstanding=CLOSED_LOOP_OUTSTANDING)
        closed_note = (f"Closed loop: publishers pause while {CLOSED_LOOP_OUTSTANDING:,} messages per subscriber "
                       "are sent but not yet received, so latency here is queueing (outstanding ÷ rate).")
        cases.append(Case("qos0-throughput", "closed-loop",
                          f"{shape}, QoS 0, max rate with ≤ {CLOSED_LOOP_OUTSTANDING:,} undelivered "
                          "messages per subscriber", closed, variants(FERRY_FSYNC), closed_note))
        if s.fanout:
            cases.append(Case("qos0-throughput", "fan-out",
                              f"1 → {s.fanout} fan-out, QoS 0, max rate with ≤ {CLOSED_LOOP_OUTSTANDING:,} "
                              "undelivered messages per subscriber",
                              replace(closed, publishers=1, subscribers=s.fanout), variants(FERRY_FSYNC),
                              closed_note))
        cases.append(Case("qos0-throughput", "saturated",
                          f"{shape}, QoS 0, max rate with ≤ {SATURATED_OUTSTANDING:,} undelivered messages per "
                          "subscriber: the saturated rate the flood is measured against",
                          replace(base, max_outstanding=SATURATED_OUTSTANDING), variants(FERRY_FSYNC),
                          "Publishers send just as fast as the subscriber takes (a closed loop deep enough for "
                          "the broker to be the limit): the flood case's delivered rate is compared with this."))
        cases.append(Case("qos0-throughput", "flood",
                          f"{shape}, QoS 0, flood: publishers limited only by TCP backpressure",
                          replace(base, drain_s=min(s.drain_s, 5.0)), variants(FERRY_FSYNC),
                          "Overload behaviour. published = written by the publishers, i.e. read by the broker "
                          "(plus what the sockets buffer). Ferry stops reading a publisher while the "
                          "subscriber its messages go to has more than max_output_buffer_bytes (1 MiB) waiting, "
                          "and drops QoS 0 deliveries that still find it over; Mosquitto buffers them. "
                          "saturated = this broker's delivered rate in the saturated case. "
                          "'undelivered at end' = not received 5 s after the publishers stopped."))
    if "qos1-throughput" in scenarios:
        cases.append(Case("qos1-throughput", "window",
                          f"{shape}, QoS 1, {s.window} in flight per publisher, persistent subscriber "
                          "(clean session 0)",
                          replace(base, qos=1, persistent_subscribers=True),
                          variants(FERRY_FSYNC_QOS1, FERRY_OS),
                          "published = acknowledged by the broker (PUBACK); delivered = received by the subscriber. "
                          "published > delivered: the subscriber's queue grew through the window. "
                          f"'undelivered at end' = still queued {s.drain_s:g} s after the publishers stopped."))
    if "latency-10k" in scenarios:
        paced = replace(base, mode=Mode.PACED, rate_per_s=s.rate_per_s, drain_s=min(s.drain_s, 5.0))
        cases.append(Case("latency-10k", "qos0", f"{shape}, QoS 0, offered {s.rate_per_s:,} msg/s in total",
                          paced, variants(FERRY_FSYNC)))
        cases.append(Case("latency-10k", "qos1",
                          f"{shape}, QoS 1, offered {s.rate_per_s:,} msg/s in total, persistent subscriber",
                          replace(paced, qos=1, persistent_subscribers=True), variants(FERRY_FSYNC_QOS1),
                          "latency = publisher → subscriber; PUBACK latency includes Ferry's store commit "
                          "(write + fsync); Mosquitto acknowledges without writing to disk."))
    if "idle-10k" in scenarios:
        idle = LoadSpec(Mode.IDLE, "127.0.0.1", 0, publishers=0, subscribers=0, connections=s.connections,
                        duration_s=s.idle_hold_s, keepalive_s=s.idle_keepalive_s,
                        ping_interval_s=s.idle_keepalive_s / 2)
        cases.append(Case("idle-10k", "hold",
                          f"{s.connections:,} idle connections, keepalive {s.idle_keepalive_s} s, PINGREQ every "
                          f"{s.idle_keepalive_s / 2:g} s (staggered), held {s.idle_hold_s:g} s",
                          idle, variants(FERRY_FSYNC)))
    return cases


def bound_by(result: FlowResult) -> str:
    """Which process limited a flow run, judged by CPU."""
    broker = result.broker_cpu_pct >= SATURATED_CPU_PCT
    generator = result.generator_cpu_pct >= SATURATED_CPU_PCT
    if broker and generator:
        return "broker+generator"
    if broker:
        return "broker CPU"
    if generator:
        return "GENERATOR"
    return "neither (flow/latency)"


def _ratio(ferry: FlowResult | None, mosquitto: FlowResult | None) -> float | None:
    if ferry is None or mosquitto is None or not mosquitto.delivered_per_s:
        return None
    return ferry.delivered_per_s / mosquitto.delivered_per_s


def check_flood(flood: dict[str, FlowResult | IdleResult | None],
                saturated: dict[str, FlowResult | IdleResult | None]) -> list[TargetCheck]:
    """The flood case against the saturated rate: what the subscriber receives when the publishers
    send just as fast as it takes, i.e. the saturated case's delivered rate on the same broker (a
    closed loop of SATURATED_OUTSTANDING, same publishers and subscribers). Under overload a
    broker should read less, not deliver less:
    Ferry's flood delivered rate ≥ FLOOD_RATIO_TARGET × its saturated rate; Mosquitto's figures are
    given for comparison."""

    def figures(label: str) -> tuple[str, float | None]:
        over, sat = flood.get(label), saturated.get(label)
        if not isinstance(over, FlowResult) or not isinstance(sat, FlowResult) or not sat.delivered_per_s:
            return f"{label}: a run failed", None
        ratio = over.delivered_per_s / sat.delivered_per_s
        return (f"{label}: delivered {over.delivered_per_s:,.0f} msg/s, read {over.published_per_s:,.0f} msg/s, "
                f"saturated {sat.delivered_per_s:,.0f} msg/s, ratio {ratio:.2f}"), ratio

    ferry_text, ratio = figures(FERRY_FSYNC.label)
    detail = ferry_text
    if MOSQUITTO.label in flood:
        detail += "; " + figures(MOSQUITTO.label)[0]
    name = f"QoS 0 flood delivered ≥ {FLOOD_RATIO_TARGET}× the saturated rate"
    return [TargetCheck(name, None if ratio is None else ratio >= FLOOD_RATIO_TARGET, detail)]


def check_targets(case: Case, results: dict[str, FlowResult | IdleResult | None]) -> list[TargetCheck]:
    """The issue's targets that apply to `case`, given results by variant label."""
    mosquitto = results.get(MOSQUITTO.label)
    checks: list[TargetCheck] = []

    def ratio_check(name: str, ferry_label: str, target: float) -> None:
        ferry = results.get(ferry_label)
        ratio = _ratio(ferry, mosquitto)
        if ratio is None:
            why = "Mosquitto not run" if MOSQUITTO.label not in results else "a run failed"
            checks.append(TargetCheck(name, None, why))
        else:
            checks.append(TargetCheck(name, ratio >= target,
                                      f"{ratio:.2f}× ({ferry.delivered_per_s:,.0f} vs "
                                      f"{mosquitto.delivered_per_s:,.0f} msg/s delivered)"))

    if case.scenario == "qos0-throughput" and case.name in ("closed-loop", "fan-out"):
        ratio_check(f"QoS 0 delivered ≥ {QOS0_RATIO_TARGET}× Mosquitto", FERRY_FSYNC.label, QOS0_RATIO_TARGET)
    elif case.scenario == "qos1-throughput":
        ratio_check(f"QoS 1 with durability = fsync delivered ≥ {QOS1_RATIO_TARGET}× Mosquitto QoS 1",
                    FERRY_FSYNC_QOS1.label, QOS1_RATIO_TARGET)
    elif case.scenario == "latency-10k":
        label = FERRY_FSYNC_QOS1.label if case.spec.qos else FERRY_FSYNC.label
        ferry = results.get(label)
        name = f"QoS {case.spec.qos} p99 ≤ {P99_TARGET_US / 1000:g} ms at {case.spec.rate_per_s:,} msg/s"
        if not isinstance(ferry, FlowResult):
            checks.append(TargetCheck(name, None, "the run failed"))
        else:
            offered = case.spec.rate_per_s * case.spec.subscribers
            kept_up = ferry.delivered_per_s >= 0.95 * offered
            met = ferry.latency.p99_us <= P99_TARGET_US and kept_up
            detail = f"p99 {ferry.latency.p99_us / 1000:.2f} ms, delivered {ferry.delivered_per_s:,.0f} msg/s"
            if not kept_up:
                detail += f" (below the offered {offered:,} msg/s)"
            checks.append(TargetCheck(name, met, detail))
    elif case.scenario == "idle-10k":
        ferry = results.get(FERRY_FSYNC.label)
        name = f"{case.spec.connections:,} idle connections held with keepalive"
        if not isinstance(ferry, IdleResult):
            checks.append(TargetCheck(name, None, "the run failed"))
        else:
            met = (ferry.alive_at_end == ferry.requested and ferry.pings_answered == ferry.pings_sent)
            checks.append(TargetCheck(name, met, f"{ferry.alive_at_end:,}/{ferry.requested:,} alive, "
                                                 f"{ferry.pings_answered:,}/{ferry.pings_sent:,} pings answered"))
    return checks
