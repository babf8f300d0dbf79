"""The worker's end-to-end latency histogram: from a reading's sample time on the device to when the
worker counted it (docs/server.md, "Metrics"), and its percentiles over every worker's histogram
(the dashboard's pipeline panel, `ferry demo`'s summary)."""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Iterable, Sequence

from ferry.prometheus import Metric

LATENCY_METRIC = "ferry_worker_reading_latency_seconds"
LATENCY_BUCKETS_S = (0.025, 0.05, 0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 4.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
                     60.0, 120.0, 300.0, 600.0)
"""Upper bounds of the latency buckets (the last bucket, +Inf, takes the rest). Fine between 0.5 and
10 s, where a device's outbox flush interval (5 s by default) puts most readings: the percentiles
are interpolated within a bucket."""


class LatencyHistogram:
    """End-to-end latency of the readings this worker counted: from the device's sample time (the
    reading's `ts`, clock-synced readings only) to when its batch was in Kafka and counted. Fixed
    buckets: one `bisect` and two additions per reading, nothing kept per reading. Since the
    worker started (a restarted worker starts from zero, like every counter here).

    Exported as `<name>_bucket{le=...}` (cumulative), `<name>_sum` and `<name>_count` gauges, the
    samples of a Prometheus histogram (`ferry demo` reads them back for its percentiles).
    """

    __slots__ = ("counts", "count", "sum_s")

    def __init__(self) -> None:
        self.counts = [0] * (len(LATENCY_BUCKETS_S) + 1)
        self.count = 0
        self.sum_s = 0.0

    def observe(self, seconds: float) -> None:
        seconds = max(0.0, seconds)  # a device clock a little ahead of the worker's
        self.counts[bisect_left(LATENCY_BUCKETS_S, seconds)] += 1
        self.count += 1
        self.sum_s += seconds

    def cumulative(self) -> list[tuple[float, int]]:
        """(upper bound s, readings at or below it), the last bound +Inf."""
        out, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts):
            running += n
            out.append((bound, running))
        return out

    def to_json(self) -> dict:
        """This worker's part of `/pipeline`: the buckets by upper bound (None for +Inf: JSON has no
        infinity), cumulative, and the sum."""
        return {"buckets": [[None if bound == float("inf") else bound, n] for bound, n in self.cumulative()],
                "sum_s": self.sum_s}

    def metrics(self) -> list[Metric]:
        cumulative, running = [], 0
        for bound, n in zip((*LATENCY_BUCKETS_S, float("inf")), self.counts):
            running += n
            cumulative.append(((("le", "+Inf" if bound == float("inf") else f"{bound:g}"),), float(running)))
        text = "Readings counted by this worker since it started, by latency from the device's sample time " \
               "(clock-synced readings) to counted"
        return [Metric(f"{LATENCY_METRIC}_bucket", "gauge", text + " (cumulative, le = upper bound in s).",
                       tuple(cumulative)),
                Metric.single(f"{LATENCY_METRIC}_sum", "gauge", text + ": the sum of their latencies in s.", self.sum_s),
                Metric.single(f"{LATENCY_METRIC}_count", "gauge", text + ".", self.count)]



def percentiles(buckets: Sequence[tuple[float, float]], quantiles: Sequence[float] = (0.5, 0.95, 0.99)
                ) -> dict[float, float | None]:
    """Quantiles from cumulative (upper bound, count) buckets; linear within a bucket (as Prometheus'
    histogram_quantile). None without readings; a quantile in the +Inf bucket is reported as the
    largest finite bound."""
    buckets = sorted(buckets)
    total = buckets[-1][1] if buckets else 0
    out: dict[float, float | None] = {}
    for q in quantiles:
        if not total:
            out[q] = None
            continue
        rank, lower, below = q * total, 0.0, 0.0
        for bound, cumulative in buckets:
            if cumulative >= rank:
                if bound == float("inf"):
                    out[q] = lower
                else:
                    span = cumulative - below
                    out[q] = lower + (bound - lower) * ((rank - below) / span if span else 1.0)
                break
            lower, below = bound, cumulative
    return out


def latency_summary(per_worker: Iterable[Iterable[tuple[float, float]] | None]) -> dict | None:
    """Each worker's cumulative buckets (upper bound s, count) added together: {"readings", "p50_s",
    "p95_s", "p99_s"}; None when no worker gave any (a worker that did not answer is None)."""
    buckets: dict[float, float] = {}
    for worker in per_worker:
        for bound, count in worker or ():
            buckets[bound] = buckets.get(bound, 0.0) + count
    if not buckets:
        return None
    p = percentiles(sorted(buckets.items()))
    return {"readings": int(max(buckets.values())), "p50_s": p[0.5], "p95_s": p[0.95], "p99_s": p[0.99]}


def buckets_from_json(part: object) -> list[tuple[float, float]] | None:
    """A worker's `to_json()` read back (None for anything else: an older worker, an error entry)."""
    try:
        return [(float("inf") if bound is None else float(bound), float(n)) for bound, n in part["buckets"]]
    except (TypeError, KeyError, ValueError):
        return None
