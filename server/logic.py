"""What the worker does with a batch of records, as pure functions over table values.

The ingest task in `ferry.server.streams` turns Kafka records into `Record`s, calls
`apply_batch` and writes back what it returns, so everything here is tested
without Faust or Kafka. A batch reads each device's state once and returns it
once, however many of its records the batch held.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from ferry.contract import ContractError, parse_reading, parse_status
from ferry.contract import DeviceState as ReportedState
from ferry.worker_records import HealthChange
from ferry.server.alerts import Alert, AlertLog
from ferry.server.anomaly import AnomalySettings
from ferry.server.config import ServerConfig
from ferry.server.health import HealthSettings
from ferry.server.state import DeviceState, encode_value
from ferry.server.windows import ClosedWindow, History, WindowKind

UNKNOWN_DEVICE = "_unknown"
"""Where contract breakers without a usable key are counted."""
TELEMETRY = "telemetry"
STATUS = "status"
REPLAYED = "replayed"
"""The verdict on a record Kafka delivered again that the device's state already holds
(`DeviceState.already_applied`): skipped, counted nowhere but the worker's own counters."""


@dataclass(frozen=True, slots=True)
class Settings:
    dedupe_window: int
    kinds: tuple[WindowKind, ...]
    lateness_ms: int
    skew_ms: int
    """How far a synced reading's stamp may be ahead of its receive time (`max_clock_skew_s`)."""
    boot_grace_ms: int
    keep: int
    """Closed windows kept per device, metric and kind (`series_keep`)."""
    alerts_keep: int
    """Alerts kept per partition (`alerts_keep`)."""
    anomaly: AnomalySettings
    health: HealthSettings

    @classmethod
    def from_config(cls, config: ServerConfig) -> "Settings":
        kinds = (WindowKind("1m", config.tumbling_s * 1000, config.tumbling_s * 1000),
                 WindowKind("5m", config.hopping_size_s * 1000, config.hopping_step_s * 1000))
        health = HealthSettings(offline_after_intervals=config.offline_after_intervals,
                                battery_low_mv=config.battery_low_mv, rssi_poor_dbm=config.rssi_poor_dbm,
                                reboot_loop_boots=config.reboot_loop_boots,
                                reboot_loop_window_ms=config.reboot_loop_window_s * 1000)
        return cls(config.dedupe_window, kinds, config.allowed_lateness_s * 1000, config.max_clock_skew_s * 1000,
                   config.boot_grace_s * 1000, config.series_keep, config.alerts_keep, AnomalySettings(), health)

    def new_state(self, device: str) -> DeviceState:
        return DeviceState.new(device, self.dedupe_window, self.anomaly)

    def load_state(self, device: str, data: dict | None) -> DeviceState:
        return DeviceState.from_dict(data, self.dedupe_window, self.anomaly) if data else self.new_state(device)


@dataclass(frozen=True, slots=True)
class Record:
    """One Kafka record as the worker needs it."""

    device: str
    channel: str
    """TELEMETRY or STATUS: which source topic it came from."""
    payload: bytes
    record_ms: int
    """The record's timestamp: the reading's time when synced, else the gateway's receive time."""
    receive_ms: int
    """When the gateway received it (the bridge's `ferry-received-ms` header); 0 when the record has
    none: then health takes `record_ms`, and neither the clock skew nor closing boots is judged."""
    partition: int
    offset: int = -1


@dataclass(slots=True)
class Outcome:
    verdict: str
    """new, duplicate, late (new but older than the watermark) or invalid."""
    closed: list[ClosedWindow] = field(default_factory=list)
    alerts: list[Alert] = field(default_factory=list)
    health: HealthChange | None = None
    """The device's health when this record changed it."""
    sample_ms: int | None = None
    """A clock-synced reading counted for the first time: its sample time (for the latency)."""


@dataclass(slots=True)
class BatchResult:
    """New table values (device → (partition, value); partition → alert log) and what to publish."""

    states: dict[str, tuple[int, DeviceState]] = field(default_factory=dict)
    """The states the batch changed, not encoded: the writer encodes each as it sends it (`encode_state`),
    so a batch's encoded states, ~5 MB at 2,000 devices, are never all alive at once."""
    history: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    """Compressed (`encode_value(..., compress=True)`)."""
    alert_logs: dict[int, bytes] = field(default_factory=dict)
    publish: list[ClosedWindow] = field(default_factory=list)
    """Every window closed, of every kind, in the order they closed."""
    alerts: list[Alert] = field(default_factory=list)
    health: list[HealthChange] = field(default_factory=list)
    verdicts: Counter = field(default_factory=Counter)
    sample_ms: list[int] = field(default_factory=list)
    """The sample times of the clock-synced readings counted for the first time (the latency)."""


def device_key(key: bytes | str | None) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return key or UNKNOWN_DEVICE


def event_time_ms(synced: bool, ts_ms: int, record_ts_ms: int) -> int:
    """The reading's own time when its clock was synced, else the bridge's stamp (receive time)."""
    return ts_ms if synced else record_ts_ms


def apply_reading(state: DeviceState, payload: bytes, record_ms: int, receive_ms: int,
                  settings: Settings) -> Outcome:
    """Dedupe, account, window, score and health-check one telemetry record."""
    try:
        reading = parse_reading(payload)
        if reading.device != state.device:
            raise ContractError("dev", f"{reading.device!r} differs from the record key {state.device!r}")
    except ContractError:
        state.account.invalid += 1
        return Outcome("invalid")
    when = event_time_ms(reading.synced, reading.ts_ms, record_ms)
    # A clock far ahead (a bad NTP answer, a corrupted RTC) must not drag the device's watermark into
    # the future, where every later reading would be late: such a reading is kept, counted, windowed
    # at the latest time it can honestly have, and leaves the watermark and the detectors alone.
    ahead = receive_ms > 0 and when > receive_ms + settings.skew_ms
    if ahead:
        when = receive_ms + settings.skew_ms
    seen_ms = receive_ms or record_ms
    if not state.account.observe_reading(reading, when, receive_ms, settings.boot_grace_ms):
        # A duplicate still shows the device is alive; its battery and signal were counted already.
        alerts = state.health.observe_reading(seen_ms, reading.boot, None, None, settings.health)
        return _outcome(state, "duplicate", [], alerts, settings)
    alerts = state.health.observe_reading(seen_ms, reading.boot, reading.battery_mv, reading.rssi_dbm,
                                          settings.health)
    if ahead:
        state.account.future += 1
    closed = state.windows.add(when, reading.metrics, settings.kinds, settings.lateness_ms, advance=not ahead)
    sample_ms = reading.ts_ms if reading.synced and not ahead else None
    if closed is None:
        state.account.late += 1
        outcome = _outcome(state, "late", [], alerts, settings)
    else:
        if not ahead:
            alerts += state.detectors.observe(when, reading.metrics)
        outcome = _outcome(state, "new", closed, alerts, settings)
    outcome.sample_ms = sample_ms
    return outcome


def apply_status(state: DeviceState, payload: bytes, receive_ms: int, settings: Settings) -> Outcome:
    """Take the device's state, its own loss counter and its health from a status message."""
    try:
        parsed = parse_status(payload)
        if parsed.device != state.device:
            raise ContractError("dev", f"{parsed.device!r} differs from the record key {state.device!r}")
    except ContractError:
        state.status.invalid += 1
        return Outcome("invalid")
    restarts = state.account.restarts
    if parsed.state is ReportedState.ONLINE:
        state.account.observe_birth(parsed.boot, receive_ms)
    state.status.observe(parsed, restarted=state.account.restarts != restarts)
    alerts = state.health.observe_status(receive_ms, parsed.state.value, parsed.boot, parsed.reset_cause,
                                         settings.health, parsed.boot_failures, parsed.faults,
                                         tuple((s.sensor, s.errors) for s in parsed.sensor_errors))
    return _outcome(state, "new", [], alerts, settings)


def _outcome(state: DeviceState, verdict: str, closed: list[ClosedWindow], alerts: list[Alert],
             settings: Settings) -> Outcome:
    if alerts:
        state.remember(alerts)
    return Outcome(verdict, closed, alerts)


def apply_record(state: DeviceState, record: Record, settings: Settings) -> Outcome:
    """One record of either channel, with the health record it makes when it changed the device's health."""
    before = state.health.flags()
    seen_ms = record.receive_ms or record.record_ms
    if record.channel == TELEMETRY:
        outcome = apply_reading(state, record.payload, record.record_ms, record.receive_ms, settings)
    else:
        outcome = apply_status(state, record.payload, seen_ms, settings)
    outcome.health = state.health.change(before, seen_ms)
    return outcome


def apply_batch(records: Iterable[Record], state_of: Callable[[str], DeviceState],
                history_of: Callable[[str], History], settings: Settings,
                alert_log_of: Callable[[int], AlertLog] | None = None) -> BatchResult:
    """Apply records in order to the states, histories and alert logs `state_of`, `history_of` and
    `alert_log_of` give (changing them in place); each device's state is returned once (to be written
    once), its history and its partition's alert log encoded at most once. Without `alert_log_of`
    each partition's log starts empty.
    """
    if alert_log_of is None:
        alert_log_of = _empty_logs()
    result = BatchResult()
    states: dict[str, DeviceState] = {}
    partitions: dict[str, int] = {}
    closed_by_device: dict[str, list[ClosedWindow]] = {}
    alerts_by_partition: dict[int, list[Alert]] = {}
    for record in records:
        state = states.get(record.device)
        if state is None:
            state = states[record.device] = state_of(record.device)
        partitions[record.device] = record.partition
        if state.already_applied(record.channel, record.partition, record.offset):
            result.verdicts[f"{record.channel}.{REPLAYED}"] += 1
            continue
        state.mark_applied(record.channel, record.partition, record.offset)
        outcome = apply_record(state, record, settings)
        result.verdicts[f"{record.channel}.{outcome.verdict}"] += 1
        if outcome.sample_ms is not None:
            result.sample_ms.append(outcome.sample_ms)
        if outcome.closed:
            closed_by_device.setdefault(record.device, []).extend(outcome.closed)
            result.publish.extend(outcome.closed)
        if outcome.alerts:
            result.alerts.extend(outcome.alerts)
            alerts_by_partition.setdefault(record.partition, []).extend(outcome.alerts)
        if outcome.health is not None:
            result.health.append(outcome.health)
    for device, state in states.items():
        result.states[device] = (partitions[device], state)
    for device, closed in closed_by_device.items():
        kept = history_of(device)
        kept.extend(closed, settings.keep)
        result.history[device] = (partitions[device], encode_value(kept.to_dict(), compress=True))
    for partition, alerts in alerts_by_partition.items():
        log = alert_log_of(partition)
        log.add(alerts, settings.alerts_keep)
        result.alert_logs[partition] = encode_value(log.to_list())
    return result


def _empty_logs() -> Callable[[int], AlertLog]:
    logs: dict[int, AlertLog] = {}
    return lambda partition: logs.setdefault(partition, AlertLog())


def check_health(state: DeviceState, now_ms: int, settings: Settings) -> Outcome:
    """The time-driven part of health (a device that went silent): its alerts (remembered) and
    health record."""
    before = state.health.flags()
    alerts = state.health.check(now_ms, settings.health)
    outcome = _outcome(state, "checked", [], alerts, settings)
    outcome.health = state.health.change(before, now_ms)
    return outcome
