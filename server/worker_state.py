"""The worker's state: its tables, the live device states between batches, and which devices it owns.

Kept apart from `ferry.server.streams` (which declares topics, tables and agents and
builds one `WorkerState`) so the HTTP views can name it without importing the wiring.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterable
from typing import Any

import faust
from aiokafka.partitioner import murmur2

from ferry.server.config import ServerConfig
from ferry.server.liveness import StallWatch
from ferry.server.logic import STATUS, BatchResult, Record, Settings, apply_batch, check_health
from ferry.server.models import SeriesPoint
from ferry.server.state import DeviceState
from ferry.server.windows import History


class WorkerState:
    """The tables of this worker, the live states of its devices, and which devices it owns now.

    The single writer of both tables. Device states stay live in memory between
    batches (`live`), so a batch deserializes nothing; the cache is dropped at every
    rebalance, after which states are read back from the table, which Faust has
    recovered from the changelog by then. The ingest agent and the health timer both
    write device states; `lock` keeps one from overwriting the other across an await.
    """

    def __init__(self, app: faust.App, config: ServerConfig, settings: Settings, devices: Any, history: Any,
                 series: Any, alerts: Any) -> None:
        self.app, self.config, self.settings = app, config, settings
        self.devices, self.history, self.series, self.alerts = devices, history, series, alerts
        self.lock = asyncio.Lock()
        self.live: dict[str, DeviceState] = {}
        self.live_history: dict[str, History] = {}
        self.lagging = False
        self.watch = StallWatch(config.broker, config.stall_timeout_s)
        self.stall_reason: str | None = None
        self.counts: dict[str, int] = {}

    def forget(self) -> None:
        """Drop the live states (a rebalance may have moved devices or changed their table values)."""
        self.live.clear()
        self.live_history.clear()
        self.watch.forget()

    def partition_of(self, device: str) -> int:
        """The partition the bridge puts this device's records on (murmur2, as the bridge produces)."""
        return (murmur2(device.encode()) & 0x7FFFFFFF) % self.config.partitions

    def owned_partitions(self) -> set[int] | None:
        """Partitions of the telemetry topic this worker is active for; None before an assignment."""
        actives = self.app.assignor.assigned_actives()
        if not actives:
            return None
        return {tp.partition for tp in actives if tp.topic == self.config.telemetry_topic}

    def local_devices(self) -> list[str]:
        """Devices whose partition this worker owns (its stores may also hold standby copies)."""
        owned = self.owned_partitions()
        return sorted(d for d, v in self.devices.items()
                      if v is not None and (owned is None or self.partition_of(d) in owned))

    def state(self, device: str) -> DeviceState | None:
        """The device's live state, None when the table has none."""
        state = self.live.get(device)
        if state is None:
            data = self.devices.get(device)
            if data is None:
                return None
            state = self.live[device] = self.settings.load_state(device, data)
        return state

    def history_of(self, device: str) -> History:
        """The device's live closed-window history (empty when the table has none)."""
        kept = self.live_history.get(device)
        if kept is None:
            kept = self.live_history[device] = History.from_dict(self.history.get(device) or {})
        return kept

    def _state_or_new(self, device: str) -> DeviceState:
        state = self.state(device)
        if state is None:
            state = self.live[device] = self.settings.new_state(device)
        return state

    async def process(self, records: Iterable[Record]) -> BatchResult:
        records = list(records)
        # A full batch means more records were waiting: the worker is behind its topics.
        self.lagging = len(records) >= self.config.batch_size
        async with self.lock:
            # Every record of the batch is applied, even one whose partition was revoked while it
            # waited: `take_events` acks the whole batch afterwards, so one left out would be lost.
            result = apply_batch(records, self._state_or_new, self.history_of, self.settings)
            # Publish before the tables record that the windows closed: a crash in between
            # publishes them again (identical) rather than never.
            await self._publish(result)
            for device, (partition, value) in result.states.items():
                _put(self.devices, partition, device, value)
            for device, (partition, value) in result.history.items():
                _put(self.history, partition, device, value)
            for verdict, n in result.verdicts.items():
                self.counts[verdict] = self.counts.get(verdict, 0) + n
            self.watch.processed(((self._topic(r.channel), r.partition, r.offset) for r in records),
                                 time.monotonic())
            return result

    def _topic(self, channel: str) -> str:
        return self.config.status_topic if channel == STATUS else self.config.telemetry_topic

    async def stalled(self) -> str | None:
        """Why the consumer looks stuck (records wait, nothing processed for a while), or None."""
        if not self.watch.due(time.monotonic()):
            return None
        return self.watch.waiting(await asyncio.to_thread(self.watch.partition_ends))

    async def check_health(self, now_ms: int) -> int:
        """Raise `offline` for devices that went silent; returns how many alerts were raised.

        Skipped while the worker is behind its topics: a device whose readings still wait
        in Kafka is not silent, and calling it offline would make every device flap
        offline/online during a catch-up.
        """
        if self.lagging:
            return 0
        raised = 0
        async with self.lock:
            for device in self.local_devices():
                state = self.state(device)
                alerts = check_health(state, now_ms, self.settings)
                if not alerts:
                    continue
                await self._publish(BatchResult(alerts=alerts))
                _put(self.devices, self.partition_of(device), device, state.to_dict())
                raised += len(alerts)
        return raised

    async def _publish(self, result: BatchResult) -> None:
        for w in result.publish:
            await self.series.send(key=w.device, value=SeriesPoint(
                device=w.device, metric=w.metric, start_ms=w.start_ms, end_ms=w.end_ms, count=w.count,
                min=w.min, max=w.max, mean=w.mean, last=w.last))
        for alert in result.alerts:
            await self.alerts.send(key=alert.device, value=alert.to_dict())


def _put(table: Any, partition: int, key: str, value: dict) -> None:
    """`table[key] = value`, with the changelog partition given explicitly.

    Faust takes the partition from the event being processed, which a batch taken with
    `take_events` (or a timer) does not have; the source partition is the one the
    changelog must use (tables are co-partitioned with the source topics).
    """
    table.data[key] = value
    table.send_changelog(partition, key, value)
