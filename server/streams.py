"""Topics, tables, the ingest agent and the health timer of the worker: thin wiring around `ferry.server.logic`.

`wire(app, config)` declares everything on an app made by `ferry.server.app.create_app`
and returns the handles tests need.

One agent reads both source topics (telemetry and status are keyed and
partitioned alike, so a device's records and its state share a partition) in
batches (`take_events`): each batch reads every device's state once, applies
its records in order, publishes closed windows, alerts and health changes
(docs/contract.md), then writes each device's state once, each step waiting for Kafka's acknowledgement of what it
wrote. Faust acks a batch's events only after the agent is done with it, and
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
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

import faust

from ferry.contract import HEADER_RECEIVED_MS
from ferry.server.app import rewind_uncommitted
from ferry.server.config import ServerConfig
from ferry.server.logic import STATUS, TELEMETRY, Record, Settings, device_key
from ferry.server.views import register_views
from ferry.server.web import register_dashboard
from ferry.server.worker_state import LostWrite, Outputs, WorkerState

log = logging.getLogger(__name__)
EXIT_LOST_WRITE = 1
"""`ferry worker`'s exit status when Kafka refused a record it wrote (as for a stalled consumer: restart it)."""


@dataclass(frozen=True, slots=True)
class Streams:
    settings: Settings
    source: Any
    outputs: Outputs
    devices: Any
    history: Any
    alert_log: Any
    ingest: Any
    worker: WorkerState


def wire(app: faust.App, config: ServerConfig) -> Streams:
    settings = Settings.from_config(config)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": config.partitions}
    source = app.topic(config.telemetry_topic, config.status_topic, **raw)
    # What the worker publishes: contract bytes (ferry.contract.encode_*), keyed by the device id's bytes;
    # no Faust model, so no `__faust` metadata on the wire.
    out = {"key_type": str, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": config.partitions}
    outputs = Outputs(series={"1m": app.topic(config.series_topic, **out),
                              "5m": app.topic(config.series_5m_topic, **out)},
                      alerts=app.topic(config.alerts_topic, **out), health=app.topic(config.health_topic, **out))
    # Values are compact JSON bytes (`ferry.server.worker_state.encode_value`): the store holds the
    # bytes, 3-4x smaller than the dicts Faust's json serializer would keep; the history table's are
    # zlib-compressed besides (its closed windows compress ~9x).
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

    async def ingest(stream: faust.StreamT) -> None:
        async for events in stream.take_events(config.batch_size, within=config.batch_within_ms / 1000):
            # `take_events` acks the batch when this body is left, even by a cancellation (the
            # worker stopping): finish writing the batch first, or its records would be acked,
            # committed and never applied.
            batch = asyncio.ensure_future(_or_exit(worker.process([_record(event, config) for event in events])))
            try:
                await asyncio.shield(batch)
            except asyncio.CancelledError:
                await batch
                raise

    ingest_agent = app.agent(source, name="ferry-ingest")(ingest)

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
    return Streams(settings, source, outputs, devices, history, alert_log, ingest_agent, worker)


async def _or_exit(work: Awaitable[object]) -> None:
    """Await `work`; end the process when Kafka did not take what it wrote.

    Leaving the agent's body, normally or by an exception, acks the batch's events, and Faust
    commits acked offsets, on an agent error too (`Consumer.on_task_error`): the batch would
    count as done with its effects not in Kafka. Exiting at once commits nothing; the group
    gives the partitions to a worker that processes the batch again (dedupe absorbs what was
    done already).
    """
    try:
        await work
    except LostWrite as exc:
        log.critical("ferry worker: %s; exiting without committing this batch's offsets", exc)
        os._exit(EXIT_LOST_WRITE)


def _record(event: Any, config: ServerConfig) -> Record:
    message = event.message
    record_ms = int(round(message.timestamp * 1000)) if message.timestamp else 0
    channel = STATUS if message.topic == config.status_topic else TELEMETRY
    return Record(device_key(event.key), channel, event.value, record_ms, _received_ms(event.headers),
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
