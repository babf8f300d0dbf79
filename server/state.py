"""Everything the worker knows about one device, as one table value, and how table values are stored: pure, no Faust.

One value per device (not one table per concern) so a batch of records costs
one read and one changelog write per device, whatever it touched: dedupe and
loss accounting, status, open windows, anomaly detectors, health and how many
alerts it raised. Closed windows live apart (`ferry.server.windows.History`, written only
when a window closes), and so do the alerts themselves (`ferry.server.alerts.AlertLog`, one
per partition, written only when one is raised), so this value stays small.
"""

from __future__ import annotations

import marshal
import zlib
from dataclasses import dataclass, field

import orjson

from ferry.server.accounting import DeviceAccount, DeviceStatus
from ferry.server.alerts import Alert
from ferry.server.anomaly import AnomalySettings, DeviceDetectors
from ferry.server.health import DeviceHealth
from ferry.server.windows import DeviceWindows


@dataclass(slots=True)
class DeviceState:
    device: str
    account: DeviceAccount
    status: DeviceStatus
    windows: DeviceWindows
    detectors: DeviceDetectors
    health: DeviceHealth
    alerts_raised: int = 0
    offsets: dict[str, tuple[int, int]] = field(default_factory=dict)
    """Per source channel, the (partition, offset) of the newest record applied to this state. Kafka
    delivers a record again after a restart or a rebalance (at-least-once); one at or below this
    offset was applied already and is skipped, so a redelivery is never counted as the device
    sending a reading twice. Kept in the same table value as what the record changed, so the two
    are restored together."""

    def already_applied(self, channel: str, partition: int, offset: int) -> bool:
        """Whether the record at (partition, offset) of `channel` is in this state (offset -1: unknown, no)."""
        newest = self.offsets.get(channel)
        return offset >= 0 and newest is not None and newest[0] == partition and offset <= newest[1]

    def mark_applied(self, channel: str, partition: int, offset: int) -> None:
        if offset >= 0:
            self.offsets[channel] = (partition, offset)

    @classmethod
    def new(cls, device: str, dedupe_window: int, anomaly: AnomalySettings) -> "DeviceState":
        return cls(device, DeviceAccount(device, dedupe_window), DeviceStatus(device), DeviceWindows(device),
                   DeviceDetectors(device, anomaly), DeviceHealth(device))

    def remember(self, alerts: list[Alert]) -> None:
        self.alerts_raised += len(alerts)

    def to_dict(self, packed: bool = False) -> dict:
        """JSON-safe; with `packed`, the panes and baselines as bytes (`ferry.server.doubles`), as
        `encode_state` stores them."""
        return {"device": self.device, "account": self.account.to_dict(), "status": self.status.to_dict(),
                "windows": self.windows.to_dict(packed), "detectors": self.detectors.to_dict(packed),
                "health": self.health.to_dict(), "alerts_raised": self.alerts_raised,
                "offsets": {channel: list(at) for channel, at in self.offsets.items()}}

    @classmethod
    def from_dict(cls, data: dict, dedupe_window: int, anomaly: AnomalySettings) -> "DeviceState":
        """Also reads values written before the alerts moved out (their `alerts` list is ignored:
        those alerts are on the alerts topic, not in `/alerts`) and before offsets were kept."""
        device = data["device"]
        return cls(device, DeviceAccount.from_dict(data["account"], dedupe_window),
                   DeviceStatus.from_dict(data["status"]), DeviceWindows.from_dict(data["windows"]),
                   DeviceDetectors.from_dict(device, data["detectors"], anomaly),
                   DeviceHealth.from_dict(device, data["health"]), data["alerts_raised"],
                   {channel: (at[0], at[1]) for channel, at in data.get("offsets", {}).items()})


HISTORY_ZLIB_LEVEL = 3
"""A device's closed windows (14.5 KB of JSON for 2 metrics at `series_keep` 60) compress ~9x at
level 3 in ~40 us; they are written once a minute, when windows close, so the memory saved per
device (docs/server.md, "Memory per device") costs little."""


MARSHALLED = b"\x00"
"""The first byte of a device state stored in marshal's format (`encode_state`): no JSON value and no
zlib stream starts with it."""
MARSHAL_VERSION = 4
"""marshal's format version 4 (Python 3.4 on; every later version reads it)."""


def encode_state(state: DeviceState) -> bytes:
    """A device state as the `devices` table stores it: `to_dict()` in marshal's binary format.

    The same dict as JSON costs ~80 us to encode here and marshal ~17 us (floats as 8 bytes, not
    decimal text: the open panes and the detectors' baselines are most of a state), about the same
    size (~2.4 KB at 2 metrics). A state is written for every device a batch touches, which at
    10,000 devices is one per reading (docs/server.md, "Throughput"). Values stored as JSON before
    read back as they were (`decode_value`)."""
    return MARSHALLED + marshal.dumps(state.to_dict(packed=True), MARSHAL_VERSION)


def encode_value(value: dict | list, compress: bool = False) -> bytes:
    """A table value as the store and the changelog hold it: compact UTF-8 JSON (orjson; every number
    in a history or an alert log is finite: a window's values are checked readings), zlib-compressed
    when `compress` (the history table's values)."""
    raw = orjson.dumps(value)
    return zlib.compress(raw, HISTORY_ZLIB_LEVEL) if compress else raw


def decode_value(raw: bytes | None) -> dict | list | None:
    """A table value read back (None when the table has none): a marshalled state (`encode_state`),
    JSON, or zlib-compressed JSON (a zlib stream starts with 0x78, `x`, which no JSON value does)."""
    if raw is None:
        return None
    if raw[:1] == MARSHALLED:
        value = marshal.loads(memoryview(raw)[1:])
        if not isinstance(value, dict):
            raise ValueError(f"a marshalled table value must be a dict, not {type(value).__name__}")
        return value
    return orjson.loads(zlib.decompress(raw) if raw[:1] == b"x" else raw)
