"""Topics, tables, the ingest task and the health timer of the worker: thin wiring around `ferry.server.logic`.

`wire(app, config)` declares everything on an app made by `ferry.server.app.create_app`
and returns the handles tests need.

One task reads both source topics (telemetry and status are keyed and
partitioned alike, so a device's records and its state share a partition) in
batches taken from the consumer's `SourceBuffer` (`ferry.server.ingest`: no
agent, no per-record stream): each batch reads every device's state once, applies
its records in order, publishes closed windows, alerts and health changes
(docs/contract.md), then writes each device's state once, each step waiting for Kafka's acknowledgement of what it
wrote. A batch's records are acked only after that, and Faust
commits only acked offsets, so the offsets of a batch are committed only after
its records are in Kafka; a crash re-processes whole batches, whose records
the device states already hold are skipped by their offsets (`DeviceState.offsets`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import faust

from ferry.contract import HEADER_RECEIVED_MS
from ferry.server.app import rewind_uncommitted
from ferry.server.config import ServerConfig
from ferry.server.ingest import SourceBuffer, current
from ferry.server.logic import STATUS, TELEMETRY, Record, Settings, device_key
from ferry.server.views import register_views
from ferry.server.web import register_dashboard
from ferry.server.kafka_batches import LostWrite
from ferry.server.worker_state import Outputs, WorkerState

log = logging.getLogger(__name__)
EXIT_LOST_WRITE = 1
"""`ferry worker`'s exit status when Kafka refused a record it wrote or a batch failed (as for a stalled
consumer: restart it)."""


@dataclass(frozen=True, slots=True)
class Streams:
    settings: Settings
    source: Any
    outputs: Outputs
    devices: Any
    history: Any
    alert_log: Any
    buffer: SourceBuffer
    ingest: Callable[[], Awaitable[None]]
    """The ingest task's body: takes batches from `buffer` until cancelled."""
    worker: WorkerState


def wire(app: faust.App, config: ServerConfig) -> Streams:
    settings = Settings.from_config(config)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": config.partitions}
    source = app.topic(config.telemetry_topic, config.status_topic, **raw)
    app.topics.add(source)  # subscribed, and its records acked (no agent subscribes it)
    # What the worker publishes: contract bytes (ferry.contract.encode_*), keyed by the device id's bytes,
    # sent by `WorkerState` straight to the producer; no Faust model, so no `__faust` metadata on the wire.
    outputs = Outputs(series={"1m": config.series_topic, "5m": config.series_5m_topic},
                      alerts=config.alerts_topic, health=config.health_topic)
    # Values are bytes: device states marshalled (`ferry.server.state.encode_state`), histories and
    # alert logs compact JSON (`encode_value`; histories zlib-compressed, ~9x): the store holds the
    # bytes, 3-4x smaller than the dicts Faust's json serializer would keep.
    table_args = {"key_type": str, "value_type": bytes, "partitions": config.partitions}
    devices = app.Table("devices", default=None, help="everything known about each device (server.state)",
                        **table_args)
    history = app.Table("history", default=None, help="the newest closed windows per device", **table_args)
    alert_log = app.Table("alert_log", default=None,
                          help="the newest alerts per source partition, key partition-<n> (server.alerts)",
                          **table_args)
    for table in (devices, history, alert_log):
        # Keys as the bridge writes them (the raw device id), so the web router hashes the same
        # bytes the records carry.
        table.key_serializer = table.value_serializer = "raw"
        table.changelog_topic = table.changelog_topic.derive(key_serializer="raw", value_serializer="raw")
    worker = WorkerState(app, config, settings, devices, history, alert_log, outputs)

    # Both signals fire when table recovery starts; `on_rebalance_complete` when it is done.
    @app.on_partitions_revoked.connect
    async def on_revoked(app: faust.App, revoked: Any, **kwargs: Any) -> None:
        worker.rebalance_started()

    @app.on_partitions_assigned.connect
    async def on_assigned(app: faust.App, assigned: Any, **kwargs: Any) -> None:
        worker.rebalance_started()

    @app.on_rebalance_complete.connect
    async def on_recovered(app: faust.App, **kwargs: Any) -> None:
        rewound = await rewind_uncommitted(app, {config.telemetry_topic, config.status_topic})
        if rewound:
            log.info("ferry worker: no committed offset for %s; reading them from the beginning", rewound)
        worker.recovery_completed()

    buffer = app.source_buffer = SourceBuffer(source.topics, config.batch_size, config.batch_devices)
    app.flow_control.manage_queue(buffer)  # cleared with the stream queues, see ferry.server.ingest

    async def ingest() -> None:
        while True:
            messages = current(app, await buffer.take(config.batch_within_ms / 1000))
            if not messages:
                continue
            # Tracked: a rebalance or a shutdown waits until the batch is acked (Consumer.wait_empty).
            app.consumer.unacked.update(messages)
            # Finish a batch once started, even when the worker is told to stop: its records are
            # acked (and their offsets committed) only once its writes are in Kafka.
            batch = asyncio.ensure_future(_or_exit(_process_and_ack(app, worker, config, messages, buffer.full)))
            try:
                await asyncio.shield(batch)
            except asyncio.CancelledError:
                await batch
                raise

    app.task(ingest)

    @app.timer(interval=config.health_check_interval_s)
    async def health_check() -> None:
        await _or_exit(worker.check_health(int(time.time() * 1000)))
        reason = await worker.stalled()
        if reason is not None and worker.stall_reason is None:
            # Stop as on SIGTERM (offsets committed, producer flushed); `ferry worker` then exits 1.
            log.error("ferry worker: consumer stalled: %s; stopping so that it is restarted", reason)
            worker.stall_reason = reason
            os.kill(os.getpid(), signal.SIGTERM)

    register_views(app, worker, devices)
    register_dashboard(app)
    return Streams(settings, source, outputs, devices, history, alert_log, buffer, ingest, worker)


async def _process_and_ack(app: faust.App, worker: WorkerState, config: ServerConfig, messages: list,
                           full: bool) -> None:
    """Apply a batch and write its effects (`WorkerState.process`), then ack its records: Faust commits
    only acked offsets."""
    await worker.process([_record(message, config) for message in messages], full)
    ack = app.consumer.ack
    for message in messages:
        ack(message)


async def _or_exit(work: Awaitable[object]) -> None:
    """Await `work`; end the process when Kafka did not take what it wrote, or a batch failed.

    A batch whose writes are not all in Kafka must not count as done, and Faust commits the
    offsets of whatever is acked, on a task error too (`Consumer.on_task_error`). A batch that
    failed otherwise (a bug) is tracked and never acked: the next rebalance or shutdown would
    wait for it forever (`Consumer.wait_empty`), and no later record of its partitions could be
    committed. Exiting at once commits nothing; the group gives the partitions to a worker that
    processes the batch again (dedupe absorbs what was done already).
    """
    try:
        await work
    except LostWrite as exc:
        log.critical("ferry worker: %s; exiting without committing this batch's offsets", exc)
        os._exit(EXIT_LOST_WRITE)
    except Exception:
        log.critical("ferry worker: a batch failed; exiting without committing its offsets", exc_info=True)
        os._exit(EXIT_LOST_WRITE)


def _record(message: Any, config: ServerConfig) -> Record:
    record_ms = int(round(message.timestamp * 1000)) if message.timestamp else 0
    channel = STATUS if message.topic == config.status_topic else TELEMETRY
    return Record(device_key(message.key), channel, message.value, record_ms, _received_ms(message.headers),
                  message.partition, message.offset)


def _received_ms(headers: Any) -> int:
    """The bridge's `ferry-received-ms` header; 0 when the record has none (or a broken one)."""
    items = headers.items() if hasattr(headers, "items") else (headers or ())
    for name, value in items:
        if name == HEADER_RECEIVED_MS:
            try:
                return int(value)
            except (TypeError, ValueError):
                return 0
    return 0
