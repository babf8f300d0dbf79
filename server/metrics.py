"""The worker's own numbers for Prometheus (`GET /metrics`, docs/server.md): this worker's only.

Each worker is scraped on its own, as Prometheus does, so nothing here asks the other
workers of the group (unlike the fleet views). The counters live in `WorkerState` and
count since the process started; the accounting gauges are read from the devices this
worker owns and are left out while its tables are being recovered (a partial replay
would report numbers that are not true). The page itself answers then too, with
`ferry_worker_ready 0`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ferry.prometheus import Metric

if TYPE_CHECKING:
    from ferry.server.worker_state import WorkerState

VERDICTS = ("telemetry.new", "telemetry.duplicate", "telemetry.late", "telemetry.invalid", "telemetry.replayed",
            "status.new", "status.invalid", "status.replayed")
"""`<channel>.<verdict>` of `ferry.server.logic.apply_batch`, exported at 0 before the first record."""





def collect(worker: "WorkerState", end_offsets: dict[Any, int] | None = None) -> list[Metric]:
    """Every metric of this worker, computed now."""
    counts = worker.counts
    verdicts = list(VERDICTS) + sorted(set(counts) - set(VERDICTS))
    ready = worker.ready
    metrics = [
        Metric.single("ferry_worker_ready", "gauge",
                "1 when this worker's tables are recovered and no rebalance is under way (its views answer), "
                "else 0.", 1 if ready else 0),
        Metric("ferry_worker_records_total", "counter",
               "Records processed since start, by source channel and verdict (new, duplicate, late, invalid, replayed).",
               tuple(((("channel", v.partition(".")[0]), ("verdict", v.partition(".")[2])), float(counts.get(v, 0)))
                     for v in verdicts)),
        Metric.single("ferry_worker_batches_total", "counter", "Batches processed (written and acknowledged by Kafka).",
                worker.batches),
        Metric.single("ferry_worker_batch_seconds_total", "counter",
                "Time spent processing batches, in seconds (divided by ferry_worker_batches_total: the mean).",
                worker.batch_seconds_total),
    ]
    if worker.last_batch_seconds is not None:
        metrics += [
            Metric.single("ferry_worker_last_batch_seconds", "gauge",
                    "Time the last batch took, from its records to Kafka's last acknowledgement of what it wrote.",
                    worker.last_batch_seconds),
            Metric.single("ferry_worker_last_batch_records", "gauge", "Records in the last batch.",
                    worker.last_batch_records),
        ]
    if ready:
        states = [worker.state(device) for device in worker.local_devices()]
        metrics += [
            Metric.single("ferry_worker_devices", "gauge", "Devices of the partitions this worker owns.", len(states)),
            Metric.single("ferry_worker_gaps", "gauge",
                    "Readings missing (seqs below a boot's high-water mark not received) of this worker's devices.",
                    sum(s.account.gaps for s in states)),
            Metric.single("ferry_worker_lost_at_device", "gauge",
                    "Readings this worker's devices report they dropped themselves (outbox.dropped).",
                    sum(s.status.lost_at_device for s in states)),
        ]
    metrics += worker.latency.metrics()
    lag = worker.consumer_lag(end_offsets or {})
    if lag:
        metrics.append(Metric(
            "ferry_worker_consumer_lag", "gauge",
            "Records in a source partition this worker owns (its high-water mark at the consumer's last fetch) "
            "not processed yet.",
            tuple(((("topic", topic), ("partition", str(partition))), float(n))
                  for (topic, partition), n in sorted(lag.items()))))
    return metrics
