"""What the agents do with one record, as pure functions over JSON-safe table values.

The agents in `server.streams` only read a table value, call one of these and
write the result back, so everything here is tested without Faust or Kafka.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from ferry.contract import ContractError, parse_reading, parse_status
from server.accounting import DeviceAccount, DeviceStatus
from server.config import ServerConfig
from server.windows import ClosedWindow, DeviceWindows, History, WindowKind

UNKNOWN_DEVICE = "_unknown"
"""Where contract breakers without a usable key are counted."""


@dataclass(frozen=True, slots=True)
class Settings:
    dedupe_window: int
    kinds: tuple[WindowKind, ...]
    lateness_ms: int
    keep: int
    published_kind: str = "1m"

    @classmethod
    def from_config(cls, config: ServerConfig) -> "Settings":
        kinds = (WindowKind("1m", config.tumbling_s * 1000, config.tumbling_s * 1000),
                 WindowKind("5m", config.hopping_size_s * 1000, config.hopping_step_s * 1000))
        return cls(config.dedupe_window, kinds, config.allowed_lateness_s * 1000, config.series_keep)


@dataclass(slots=True)
class Outcome:
    """The new table values for one device and what to publish."""

    device: str
    verdict: str
    """new, duplicate, late (new but older than the watermark) or invalid."""
    account: dict
    windows: dict | None = None
    """None when the windows did not change."""
    history: dict | None = None
    """None when no window closed."""
    publish: list[ClosedWindow] = field(default_factory=list)


def device_key(key: bytes | str | None) -> str:
    if isinstance(key, bytes):
        key = key.decode("utf-8", "replace")
    return key or UNKNOWN_DEVICE


def event_time_ms(synced: bool, ts_ms: int, record_ts_ms: int) -> int:
    """The reading's own time when its clock was synced, else the bridge's stamp (receive time)."""
    return ts_ms if synced else record_ts_ms


def handle_reading(account: dict | None, windows: dict | None, key: bytes | str | None, payload: bytes,
                   record_ts_ms: int, settings: Settings,
                   history: Callable[[], dict | None] = lambda: None) -> Outcome:
    """Dedupe, account and window one telemetry record.

    `history` returns the device's closed-window history; it is called only when a window closes.
    """
    device = device_key(key)
    acc = (DeviceAccount.from_dict(account, settings.dedupe_window) if account
           else DeviceAccount(device, settings.dedupe_window))
    try:
        reading = parse_reading(payload)
        if reading.device != device:
            raise ContractError("dev", f"{reading.device!r} differs from the record key {device!r}")
    except ContractError:
        acc.invalid += 1
        return Outcome(device, "invalid", acc.to_dict())
    when = event_time_ms(reading.synced, reading.ts_ms, record_ts_ms)
    if not acc.observe_reading(reading, when):
        return Outcome(device, "duplicate", acc.to_dict())
    win = DeviceWindows.from_dict(windows) if windows else DeviceWindows(device)
    closed = win.add(when, reading.metrics, settings.kinds, settings.lateness_ms)
    if closed is None:
        acc.late += 1
        return Outcome(device, "late", acc.to_dict(), win.to_dict())
    if not closed:
        return Outcome(device, "new", acc.to_dict(), win.to_dict())
    kept = History.from_dict(device, history() or {})
    kept.extend(closed, settings.keep)
    publish = [w for w in closed if w.kind == settings.published_kind]
    return Outcome(device, "new", acc.to_dict(), win.to_dict(), kept.to_dict(), publish)


def handle_status(status: dict | None, key: bytes | str | None, payload: bytes) -> tuple[str, str, dict]:
    """Take the device's state and its own loss counter from a status message.

    Returns (device, verdict, new status table value).
    """
    device = device_key(key)
    current = DeviceStatus.from_dict(status) if status else DeviceStatus(device)
    try:
        parsed = parse_status(payload)
        if parsed.device != device:
            raise ContractError("dev", f"{parsed.device!r} differs from the record key {device!r}")
    except ContractError:
        current.invalid += 1
        return device, "invalid", current.to_dict()
    current.observe(parsed)
    return device, "new", current.to_dict()
