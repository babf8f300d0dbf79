"""The worker's end-to-end latency histogram: from a reading's sample time on the device to when the
worker counted it (docs/server.md, "Metrics"; `ferry demo` prints its percentiles)."""

from __future__ import annotations

from bisect import bisect_left

from ferry.prometheus import Metric

LATENCY_METRIC = "ferry_worker_reading_latency_seconds"
LATENCY_BUCKETS_S = (0.05, 0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
"""Upper bounds of the latency buckets (the last bucket, +Inf, takes the rest)."""


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

