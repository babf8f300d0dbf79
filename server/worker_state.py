"""The worker's state: its tables, the live device states between batches, and which devices it owns.

Kept apart from `ferry.server.streams` (which declares topics, tables, the ingest task and timer and
builds one `WorkerState`) so the HTTP views can name it without importing the wiring.
"""

from __future__ import annotations

import asyncio
import time
import weakref
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import faust
from aiokafka.partitioner import murmur2
from faust import streams as faust_streams
from faust.types import TP

from ferry.server.alerts import Alert, AlertLog
from ferry.server.alerts import order as alert_order
from ferry.server.allocator import release_free_memory
from ferry.server.config import ServerConfig
from ferry.server.kafka_batches import send_acknowledged
from ferry.server.latency import LatencyHistogram
from ferry.server.liveness import StallWatch
from ferry.server.logic import STATUS, BatchResult, Record, Settings, apply_batch, check_health
from ferry.server.state import DeviceState, decode_value, encode_state, encode_value
from ferry.server.windows import History
from ferry.worker_records import encode_alert, encode_health_change, encode_series_point


@dataclass(frozen=True, slots=True)
class Outputs:
    """The names of the topics the worker publishes to (docs/contract.md): every value is contract
    bytes, every key the device id."""

    series: dict[str, str]
    """Window kind ("1m", "5m") -> its series topic."""
    alerts: str
    health: str


@dataclass(slots=True)
class Write:
    """A table value to store and send to the table's changelog partition `partition` (not frozen: a
    batch makes one per device, and a frozen dataclass's `__init__` sets each field through
    `object.__setattr__`)."""

    table: Any
    partition: int
    key: str
    value: bytes | DeviceState
    """The value as the store and the changelog hold it (`encode_value`), or a device state, encoded
    (`encode_state`) by `WorkerState._write` only as it goes into its record batch."""


def _encoded(value: bytes | DeviceState) -> bytes:
    return value if isinstance(value, bytes) else encode_state(value)


class _PartitionMessage:
    def __init__(self, partition: int) -> None:
        self.partition = partition


class _PartitionEvent:
    """What Faust's RocksDB store reads of the event being processed: `event.message.partition`."""

    def __init__(self, partition: int) -> None:
        self.message = _PartitionMessage(partition)


@contextmanager
def in_partition(partition: int) -> Iterator[None]:
    """Table reads and writes in this block go to `partition`'s store.

    Faust's RocksDB store keeps a database per partition and picks it from the event being
    processed (faust/stores/rocksdb.py `_set` asserts there is one, `_get` reads only that
    partition's database when there is): a batch (`ferry.server.ingest`) and a timer have none.
    The memory store ignores it.
    """
    event = _PartitionEvent(partition)
    token = faust_streams._current_event.set(weakref.ref(event))
    try:
        yield
    finally:
        faust_streams._current_event.reset(token)


LIVE = b"\x01"
"""What a `memory://` store holds for a device whose state is live (`WorkerState.live`): the changelog
gets the encoded state, the store this marker (no table value starts with 0x01, `decode_value`), and
`WorkerState.forget` puts the encoded state back before it drops the live one. The store is the
process's memory too, so the encoded bytes beside the live objects were a second copy: 2.6 KB of a
deep-sleep device's ~18 (`ferry bench server`, docs/server.md). A `rocksdb://` store keeps the bytes:
it outlives the process."""


def alert_log_key(partition: int) -> str:
    """The `alert_log` table's key for a source partition's log (written to that changelog partition)."""
    return f"partition-{partition}"


class WorkerState:
    """The tables of this worker, the live states of its devices, and which devices it owns now.

    The single writer of both tables. Device states stay live in memory between
    batches (`live`), so a batch deserializes nothing. Faust's rebalance signals
    (`on_partitions_revoked`/`_assigned`) fire when table recovery *starts*
    (faust/app/base.py `_on_partitions_assigned`: `tables.on_rebalance()`, then the
    signal); recovery ends in `on_rebalance_complete`, sent from
    `Recovery.on_recovery_completed` (faust/tables/recovery.py) once the active
    partitions' changelogs are read to their end, and `app.rebalancing` goes False in
    `app.on_rebalance_end()` at the very end of it. Between the two the tables hold a
    partial replay: nothing is cached then (`ready` is False), the health check is
    skipped and the views answer 503, and the cache is dropped again when recovery
    completes. The ingest task and the health timer both write device states; `lock`
    keeps one from overwriting the other across an await.
    """

    def __init__(self, app: faust.App, config: ServerConfig, settings: Settings, devices: Any, history: Any,
                 alert_log: Any, outputs: Outputs) -> None:
        self.app, self.config, self.settings = app, config, settings
        self.devices, self.history, self.alert_log, self.outputs = devices, history, alert_log, outputs
        self.lock = asyncio.Lock()
        self.live: dict[str, DeviceState] = {}
        """Device states kept between batches (a batch then deserializes nothing). Histories are not
        kept: one is read only when one of its device's windows closes or the API asks."""
        self.live_alert_logs: dict[int, AlertLog] = {}
        self.states_stay_live = str(app.conf.store).startswith("memory:")
        """The `devices` store is this process's memory: a live state's store value is `LIVE` (see there)."""
        self._partitions: dict[str, int] = {}
        self.recovered = False
        """The tables hold the current assignment's partitions in full (set by `recovery_completed`)."""
        self.lagging = False
        self.watch = StallWatch(config.broker, config.stall_timeout_s)
        self.stall_reason: str | None = None
        self.counts: dict[str, int] = {}
        self.latency = LatencyHistogram()
        """Sample time on the device to counted here, of the clock-synced readings (server/metrics.py)."""
        """Records processed by `<channel>.<verdict>` (`ferry.server.logic`), e.g. `telemetry.duplicate`."""
        self.batches = 0
        """Batches processed (written and acknowledged)."""
        self.batch_seconds_total = 0.0
        self.last_batch_seconds: float | None = None
        """How long the last batch took, from taking its records to Kafka's last acknowledgement."""
        self.last_batch_records = 0

    @property
    def ready(self) -> bool:
        """Safe to cache and serve table values: recovery completed and no rebalance began since."""
        return self.recovered and not self.app.rebalancing

    def rebalance_started(self) -> None:
        """Partitions are moving: drop the live states; the tables are about to be recovered."""
        self.recovered = False
        self.forget()

    def recovery_completed(self) -> None:
        """The tables hold what their changelogs say: read them afresh from now on."""
        self.forget()
        self.recovered = True

    def forget(self) -> None:
        """Drop the live states (a rebalance may have moved devices or changed their table values); the
        store gets back the value of each one it held only as `LIVE`."""
        if self.states_stay_live:
            store = self.devices.data
            for device, state in self.live.items():
                if store.get(device) == LIVE:
                    store[device] = encode_state(state)
        self.live.clear()
        self.live_alert_logs.clear()
        self.watch.forget()

    def partition_of(self, device: str) -> int:
        """The partition the bridge puts this device's records on (murmur2, as the bridge produces).

        Kept per device (a dict entry, ~100 bytes): murmur2 in Python takes ~10 us, and the fleet
        views and the health check ask it of every device (at 10,000 devices, `/accounting` spent
        a tenth of its time here)."""
        partition = self._partitions.get(device)
        if partition is None:
            partition = self._partitions[device] = (murmur2(device.encode()) & 0x7FFFFFFF) % self.config.partitions
        return partition

    def owned_partitions(self) -> set[int]:
        """Partitions of the source topics this worker is active for: empty when it holds none (more
        workers than partitions, or no assignment yet), whatever standby copies its stores hold."""
        return {tp.partition for tp in self.app.assignor.assigned_actives() if tp.topic == self.config.telemetry_topic}

    def consumer_lag(self, end_offsets: dict[Any, int]) -> dict[tuple[str, int], int]:
        """(topic, partition) → records in Kafka this worker has not processed yet, for the source
        partitions it owns and has processed a batch of since the last rebalance.

        `end_offsets` is Faust's `app.monitor.tp_end_offsets` (TP → the partition's high-water mark,
        which the consumer notes for every record it fetches): no broker round trip. It moves only when
        the consumer fetches, so a consumer that stopped fetching shows no lag here (the stall watch,
        `ferry.server.liveness`, asks the broker itself for that).
        """
        owned = self.owned_partitions()
        lag = {}
        for (topic, partition), processed in self.watch.next_offset.items():
            end = end_offsets.get((topic, partition))
            if partition in owned and end is not None:
                lag[(topic, partition)] = max(0, end - processed)
        return lag

    def behind(self) -> bool:
        """Records wait in Kafka that the next batch would not take: the last batch was full, or a
        partition this worker owns lags by more than a batch."""
        return self.lagging or any(n > self.config.batch_size
                                   for n in self.consumer_lag(self.app.monitor.tp_end_offsets).values())

    def local_devices(self) -> list[str]:
        """Devices whose partition this worker owns (its stores may also hold standby copies)."""
        owned = self.owned_partitions()
        return sorted(d for d, v in self.devices.items() if v is not None and self.partition_of(d) in owned)

    def state(self, device: str) -> DeviceState | None:
        """The device's live state, None when the table has none (kept live only when `ready`)."""
        state = self.live.get(device)
        if state is None:
            with in_partition(self.partition_of(device)):
                data = decode_value(self.devices.get(device))
            if data is None:
                return None
            state = self.settings.load_state(device, data)
            if self.ready:
                self.live[device] = state
        return state

    def history_of(self, device: str) -> History:
        """The device's closed-window history (empty when the table has none), read afresh."""
        with in_partition(self.partition_of(device)):
            return History.from_dict(decode_value(self.history.get(device)) or {})

    def alert_log_of(self, partition: int) -> AlertLog:
        """The newest alerts of a source partition's devices (kept live only when `ready`)."""
        log = self.live_alert_logs.get(partition)
        if log is None:
            with in_partition(partition):
                log = AlertLog.from_list(decode_value(self.alert_log.get(alert_log_key(partition))))
            if self.ready:
                self.live_alert_logs[partition] = log
        return log

    def local_alerts(self, limit: int, since_ms: int | None) -> list[Alert]:
        """The newest `limit` alerts (since `since_ms`) of the partitions this worker owns, newest first."""
        alerts = [a for p in self.owned_partitions() for a in self.alert_log_of(p).newest(limit, since_ms)]
        return sorted(alerts, key=alert_order, reverse=True)[:limit]

    def _state_or_new(self, device: str) -> DeviceState:
        state = self.state(device)
        if state is None:
            state = self.settings.new_state(device)
            if self.ready:
                self.live[device] = state
        return state

    async def process(self, records: Iterable[Record], full: bool | None = None) -> BatchResult:
        """Apply a batch and write its effects; returns once Kafka acknowledged every record written.

        `full`: more records were waiting when the batch was taken (by default: it has `batch_size`).

        Raises `LostWrite` if Kafka refused one; then the tables may hold what their changelogs do not.
        """
        started = time.monotonic()
        records = list(records)
        # A full batch means more records were waiting: the worker is behind its topics.
        self.lagging = len(records) >= self.config.batch_size if full is None else full
        async with self.lock:
            # Every record of the batch is applied, even one whose partition was revoked while it
            # waited: the whole batch is acked afterwards, so one left out would be lost.
            result = apply_batch(records, self._state_or_new, self.history_of, self.settings, self.alert_log_of)
            # Published before the tables record that the windows closed and the alerts were raised:
            # a crash in between publishes them again (identical) rather than never.
            await self._publish(result)
            await self._write(
                [Write(self.devices, partition, device, state) for device, (partition, state) in result.states.items()]
                + [Write(self.history, partition, device, raw) for device, (partition, raw) in result.history.items()]
                + [Write(self.alert_log, partition, alert_log_key(partition), raw)
                   for partition, raw in result.alert_logs.items()])
            for verdict, n in result.verdicts.items():
                self.counts[verdict] = self.counts.get(verdict, 0) + n
            counted_s = time.time()  # the batch is in Kafka: its readings are counted now
            for sample_ms in result.sample_ms:
                self.latency.observe(counted_s - sample_ms / 1000)
            done = time.monotonic()
            self.watch.processed(((self._topic(r.channel), r.partition, r.offset) for r in records), done)
            self.batches += 1
            self.last_batch_seconds = done - started
            self.batch_seconds_total += done - started
            self.last_batch_records = len(records)
            release_free_memory()
            return result

    def _topic(self, channel: str) -> str:
        return self.config.status_topic if channel == STATUS else self.config.telemetry_topic

    async def stalled(self) -> str | None:
        """Why the consumer looks stuck (records wait, nothing processed for a while), or None."""
        if not self.watch.due(time.monotonic()):
            return None
        return self.watch.waiting(await asyncio.to_thread(self.watch.partition_ends))

    async def check_health(self, now_ms: int) -> int:
        """Raise `offline` for devices that went silent (and publish their health records); returns how
        many alerts were raised.

        Skipped while the tables recover (a device's state may be half replayed) and while the
        worker is behind its topics: a device whose readings still wait in Kafka is not silent,
        and calling it offline would make every device flap offline/online during a catch-up.
        """
        if not self.ready or self.behind():
            return 0
        async with self.lock:
            result = BatchResult()
            changed: dict[str, DeviceState] = {}
            logs: dict[int, AlertLog] = {}
            for device in self.local_devices():
                state = self.state(device)
                outcome = check_health(state, now_ms, self.settings)
                if outcome.alerts:
                    result.alerts.extend(outcome.alerts)
                    partition = self.partition_of(device)
                    logs.setdefault(partition, self.alert_log_of(partition)).add(outcome.alerts,
                                                                                 self.settings.alerts_keep)
                if outcome.health is not None:
                    result.health.append(outcome.health)
                if outcome.alerts or outcome.health is not None:
                    changed[device] = state
            await self._publish(result)
            await self._write([Write(self.devices, self.partition_of(device), device, state)
                               for device, state in changed.items()]
                              + [Write(self.alert_log, partition, alert_log_key(partition), encode_value(log.to_list()))
                                 for partition, log in logs.items()])
        return len(result.alerts)

    async def _publish(self, result: BatchResult) -> None:
        """Send the closed windows, the alerts and the health changes, and wait until Kafka has them all
        (keyed by the device id, partitioned by its murmur2 like every record of the contract)."""
        out = self.outputs
        records = [(out.series[w.kind], None, w.device.encode(), encode_series_point(w.to_record()))
                   for w in result.publish]
        records += [(out.alerts, None, a.device.encode(), encode_alert(a.to_record())) for a in result.alerts]
        records += [(out.health, None, h.device.encode(), encode_health_change(h)) for h in result.health]
        if records:
            await send_acknowledged(await self._kafka_producer(), records, self._partition_for,
                                    self.config.write_timeout_s)

    async def _write(self, writes: list[Write]) -> None:
        """Store each value and send it to its table's changelog, to the partition it names; return
        once Kafka acknowledged every one.

        Faust's `table[key] = value` takes the changelog partition from the event being processed,
        which a batch (or the timer) does not have; the source partition is the one the changelog
        must use (tables are co-partitioned with the source topics). Sent straight to the producer
        in record batches (`ferry.server.kafka_batches`) rather than through `Table.send_changelog`
        (a `FutureMessage` per record in Faust's producer buffer, published by its background task:
        ~20 % of the event loop at 10,000 devices, a write per reading); what Faust's callback does
        on the acknowledgement, the persisted offset a `rocksdb://` store keeps per partition
        (faust/tables/base.py `_on_changelog_sent`), is done here, once per table and partition.
        """
        if not writes:
            return
        by_partition: dict[int, list[Write]] = {}
        for write in writes:
            by_partition.setdefault(write.partition, []).append(write)
        live = self.live if self.states_stay_live else {}
        for partition, stored in by_partition.items():  # one store context per partition, not per write
            with in_partition(partition):
                for write in stored:
                    if write.table is self.devices and write.key in live:
                        write.table.data[write.key] = LIVE
                    else:
                        write.value = _encoded(write.value)
                        write.table.data[write.key] = write.value
        tables = {table.changelog_topic.get_topic_name(): table for table in (self.devices, self.history,
                                                                              self.alert_log)}
        topics = {id(table): topic for topic, table in tables.items()}
        # A live state is encoded as its record goes into a batch and its bytes dropped then: a batch's
        # encoded states (~5 MB at 2,000 devices) are never all alive at once beside the batches' copies.
        newest = await send_acknowledged(
            await self._kafka_producer(),
            ((topics[id(write.table)], write.partition, write.key.encode(), _encoded(write.value)) for write in writes),
            self._partition_for, self.config.write_timeout_s)
        for (topic, partition), offset in newest.items():
            tables[topic].data.set_persisted_offset(TP(topic, partition), offset)

    async def _kafka_producer(self) -> Any:
        """The aiokafka producer under Faust's (started if it is not yet)."""
        return (await self.app.maybe_start_producer())._ensure_producer()

    def _partition_for(self, key: bytes, count: int) -> int:
        """A published record's partition: its device's, by the bridge's murmur2 (`partition_of`'s cache
        when the topic has as many partitions as the source topics)."""
        if count == self.config.partitions:
            return self.partition_of(key.decode())
        return (murmur2(key) & 0x7FFFFFFF) % count
