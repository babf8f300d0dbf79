"""What the analytics worker publishes (docs/contract.md "What the worker publishes").

Three kinds of record, each a compact UTF-8 JSON object with `v` first and its keys in the order
below, keyed by the device id (UTF-8) and partitioned with murmur2 like the bridge's records.
No Faust metadata, no Python names: any Kafka client reads them with a JSON parser. The device
side of the contract, and the field checks these share with it, are in :mod:`ferry.contract`.
"""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

import orjson

from ferry.contract import (
    CONTRACT_VERSION, KIND_RE, MAX_U32, METRIC_RE, ContractError, check_id, decoded, int_field, names_field,
)

SERIES_TOPICS = {"1m": "ferry.series.1m", "5m": "ferry.series.5m"}
"""The default topic of each window kind."""
ALERTS_TOPIC = "ferry.alerts"
HEALTH_TOPIC = "ferry.health"
HEALTH_STATES = frozenset({"ok", "warning", "offline"})
"""What `HealthChange.state` may be; `previous` may also be "unknown" (the device's first record)."""
_WINDOW_RE = re.compile(r"[1-9][0-9]{0,3}[smhd]")
_MAX_TS = 2**53


@dataclass(frozen=True, slots=True)
class SeriesPoint:
    """One closed window of one device's metric: final once published (a crash may repeat it, identical)."""

    device: str
    window: str
    """The window kind: "1m" (tumbling) or "5m" (hopping: a 5-minute window closes every minute)."""
    metric: str
    start_ms: int
    """Event time, ms since the Unix epoch: the window is [start_ms, end_ms)."""
    end_ms: int
    count: int
    """Readings in the window (each (device, boot, seq) once); at least 1."""
    min: float
    max: float
    mean: float
    last: float
    """The value with the newest event time (on a tie, the later arrival)."""


@dataclass(frozen=True, slots=True)
class AlertRecord:
    """Something worth telling an operator about a device: an anomaly, or a health transition."""

    device: str
    kind: str
    """anomaly, stuck, offline, online, battery_low, rssi_poor, reboot_loop (consumers tolerate others)."""
    ts_ms: int
    reason: str
    metric: str | None = None
    value: float | None = None
    score: float | None = None


@dataclass(frozen=True, slots=True)
class HealthChange:
    """A device's health after it changed: published only when `state` or one of the flags changed."""

    device: str
    ts_ms: int
    """When the change was seen: the gateway's receive time of the message, or the health check's time."""
    state: str
    """offline (`offline_reason` set), warning (a flag set), else ok."""
    previous: str
    """The state before ("unknown" for a device's first record)."""
    offline_reason: str | None
    """"lwt" (the device's last will arrived) or "silent" (nothing for too long); None unless offline."""
    battery_low: bool
    rssi_poor: bool
    reboot_loop: bool
    last_seen_ms: int | None
    battery_mv: int | None
    """Median of the recent battery readings (what `battery_low` is judged on), None without any."""
    rssi_dbm: int | None
    """Median of the recent RSSI values, None without any."""
    boot_failures: int = 0
    """Failed starts the device's newest birth reported (0 when it reported none)."""
    faults: tuple[str, ...] = ()
    """Sensors the device's newest birth said it runs without."""
    sensors_failing: tuple[str, ...] = ()
    """Sensors whose failed reads grew in the device's newest status (or were above 0 in its boot's
    first one)."""


def health_state(offline_reason: str | None, battery_low: bool, rssi_poor: bool, reboot_loop: bool,
                 boot_failures: int = 0, faults: tuple[str, ...] = (), sensors_failing: tuple[str, ...] = ()) -> str:
    """The `state` the flags make."""
    if offline_reason is not None:
        return "offline"
    return "warning" if battery_low or rssi_poor or reboot_loop or boot_failures or faults or sensors_failing \
        else "ok"


def _dump(obj: dict) -> bytes:
    """Compact UTF-8 JSON (orjson: the worker encodes about one record for every two readings it
    applies, and json.dumps was 5 % of its event loop). The encoders' floats are checked finite first
    (`_finite`): orjson would write NaN as null."""
    return orjson.dumps(obj)


def _finite(name: str, value: float | None) -> float | None:
    if value is None:
        return None
    if not math.isfinite(value):
        raise ContractError(name, f"must be a finite number, got {value!r}")
    return float(value)


def encode_series_point(point: SeriesPoint) -> bytes:
    return _dump({"v": CONTRACT_VERSION, "dev": point.device, "metric": point.metric, "window": point.window,
                  "start_ms": point.start_ms, "end_ms": point.end_ms, "count": point.count,
                  "min": _finite("min", point.min), "max": _finite("max", point.max),
                  "mean": _finite("mean", point.mean), "last": _finite("last", point.last)})


def encode_alert(alert: AlertRecord) -> bytes:
    """`metric`, `value` and `score` are always there, null when they do not apply."""
    return _dump({"v": CONTRACT_VERSION, "dev": alert.device, "kind": alert.kind, "ts_ms": alert.ts_ms,
                  "metric": alert.metric, "value": _finite("value", alert.value),
                  "score": _finite("score", alert.score), "reason": alert.reason})


def encode_health_change(change: HealthChange) -> bytes:
    return _dump({"v": CONTRACT_VERSION, "dev": change.device, "ts_ms": change.ts_ms, "state": change.state,
                  "previous": change.previous, "offline_reason": change.offline_reason,
                  "battery_low": change.battery_low, "rssi_poor": change.rssi_poor,
                  "reboot_loop": change.reboot_loop, "last_seen_ms": change.last_seen_ms,
                  "battery_mv": change.battery_mv, "rssi_dbm": change.rssi_dbm,
                  "boot_failures": change.boot_failures, "faults": list(change.faults),
                  "sensors_failing": list(change.sensors_failing)})


def _json_object(payload: bytes) -> dict:
    obj = decoded(payload)
    if not isinstance(obj, dict):
        raise ContractError("payload", "not a JSON object")
    version = int_field(obj, "v", 1, MAX_U32)
    if version != CONTRACT_VERSION:
        raise ContractError("v", f"unsupported contract version {version}")
    return obj


def _number_field(obj: dict, name: str, optional: bool = False) -> float | None:
    value = obj.get(name)
    if value is None and optional:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        raise ContractError(name, f"must be a finite number, got {value!r}")
    return float(value)


def _str_field(obj: dict, name: str, pattern: re.Pattern | None = None, optional: bool = False) -> str | None:
    value = obj.get(name)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value or (pattern is not None and not pattern.fullmatch(value)):
        raise ContractError(name, f"missing or not a valid string: {value!r}")
    return value


def _bool_field(obj: dict, name: str) -> bool:
    value = obj.get(name)
    if not isinstance(value, bool):
        raise ContractError(name, "missing or not true/false")
    return value


def parse_series_point(payload: bytes) -> SeriesPoint:
    """Validate a `ferry.series.*` record value; raises ContractError naming the first bad field."""
    obj = _json_object(payload)
    point = SeriesPoint(
        device=check_id("dev", obj.get("dev")),
        window=_str_field(obj, "window", _WINDOW_RE),
        metric=_str_field(obj, "metric", METRIC_RE),
        start_ms=int_field(obj, "start_ms", 0, _MAX_TS),
        end_ms=int_field(obj, "end_ms", 0, _MAX_TS),
        count=int_field(obj, "count", 1, MAX_U32),
        min=_number_field(obj, "min"), max=_number_field(obj, "max"),
        mean=_number_field(obj, "mean"), last=_number_field(obj, "last"),
    )
    if point.end_ms <= point.start_ms:
        raise ContractError("end_ms", f"{point.end_ms} is not after start_ms {point.start_ms}")
    if not point.min <= point.mean <= point.max or not point.min <= point.last <= point.max:
        raise ContractError("mean", "mean and last must lie within min..max")
    return point


def parse_alert(payload: bytes) -> AlertRecord:
    """Validate a `ferry.alerts` record value; missing `metric`/`value`/`score` read as null."""
    obj = _json_object(payload)
    return AlertRecord(
        device=check_id("dev", obj.get("dev")),
        kind=_str_field(obj, "kind", KIND_RE),
        ts_ms=int_field(obj, "ts_ms", 0, _MAX_TS),
        reason=_str_field(obj, "reason"),
        metric=_str_field(obj, "metric", METRIC_RE, optional=True),
        value=_number_field(obj, "value", optional=True),
        score=_number_field(obj, "score", optional=True),
    )


def parse_health_change(payload: bytes) -> HealthChange:
    """Validate a `ferry.health` record value; `state` must be the one its flags make."""
    obj = _json_object(payload)
    state = obj.get("state")
    if state not in HEALTH_STATES:
        raise ContractError("state", f"must be one of {sorted(HEALTH_STATES)}, got {state!r}")
    previous = obj.get("previous")
    if previous not in HEALTH_STATES | {"unknown"}:
        raise ContractError("previous", f"must be unknown or one of {sorted(HEALTH_STATES)}, got {previous!r}")
    reason = obj.get("offline_reason")
    if reason not in (None, "lwt", "silent"):
        raise ContractError("offline_reason", f"must be lwt, silent or null, got {reason!r}")
    change = HealthChange(
        device=check_id("dev", obj.get("dev")),
        ts_ms=int_field(obj, "ts_ms", 0, _MAX_TS),
        state=state, previous=previous, offline_reason=reason,
        battery_low=_bool_field(obj, "battery_low"), rssi_poor=_bool_field(obj, "rssi_poor"),
        reboot_loop=_bool_field(obj, "reboot_loop"),
        last_seen_ms=int_field(obj, "last_seen_ms", 0, _MAX_TS, optional=True),
        battery_mv=int_field(obj, "battery_mv", 0, 65535, optional=True),
        rssi_dbm=int_field(obj, "rssi_dbm", -200, 0, optional=True),
        boot_failures=int_field(obj, "boot_failures", 0, MAX_U32, optional=True) or 0,
        faults=names_field(obj, "faults"),
        sensors_failing=names_field(obj, "sensors_failing"),
    )
    if state != health_state(reason, change.battery_low, change.rssi_poor, change.reboot_loop,
                             change.boot_failures, change.faults, change.sensors_failing):
        raise ContractError("state", f"{state!r} is not what offline_reason and the flags make")
    return change
