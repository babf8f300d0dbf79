"""Per-device loss accounting: pure, no Faust. Per device a `DeviceAccount` (from its readings)
and a `DeviceStatus` (from its status messages), each in its own table, so the two agents never
write the same table value; both round-trip through JSON.

* received: readings accepted (each (boot, seq) once);
* duplicates: readings whose (boot, seq) was already accepted;
* gaps: seqs below a boot's high-water mark that have not arrived (a late arrival heals one);
* lost_at_device: the device's own `outbox.dropped` from its status messages. The counter lives
  in the device's outbox state and survives reboots, so it is a running total: increases are
  added; a decrease means the outbox was re-created, and the new value is added whole;
* invalid: records on the telemetry topic that break the contract (not counted as received);
* late: accepted readings older than the device's watermark (counted here, not windowed).

A reading the device dropped from its outbox never arrives, so it usually also shows as a gap;
the two numbers are reported side by side, never summed (docs/server.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.contract import DeviceState, Reading, Status
from ferry.server.sequence import SeqTracker


@dataclass(slots=True)
class DeviceAccount:
    device: str
    window: int
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    late: int = 0
    boots: dict[int, SeqTracker] = field(default_factory=dict)
    last_boot: int = 0
    last_seq: int = -1
    last_ts_ms: int = 0

    def observe_reading(self, reading: Reading, event_ms: int) -> bool:
        """Dedupe and account one reading; True when it is new (to be windowed)."""
        tracker = self.boots.get(reading.boot)
        if tracker is None:
            tracker = self.boots[reading.boot] = SeqTracker(self.window)
        if not tracker.observe(reading.seq):
            self.duplicates += 1
            return False
        self.received += 1
        if (reading.boot, reading.seq) > (self.last_boot, self.last_seq):
            self.last_boot, self.last_seq, self.last_ts_ms = reading.boot, reading.seq, event_ms
        return True

    @property
    def gaps(self) -> int:
        return sum(t.missing for t in self.boots.values())

    def to_dict(self) -> dict:
        return {
            "device": self.device, "received": self.received, "duplicates": self.duplicates,
            "invalid": self.invalid, "late": self.late,
            "boots": {str(b): t.to_dict() for b, t in self.boots.items()},
            "last": [self.last_boot, self.last_seq, self.last_ts_ms],
        }

    @classmethod
    def from_dict(cls, data: dict, window: int) -> "DeviceAccount":
        account = cls(data["device"], window, data["received"], data["duplicates"], data["invalid"], data["late"])
        account.boots = {int(b): SeqTracker.from_dict(t, window) for b, t in data["boots"].items()}
        account.last_boot, account.last_seq, account.last_ts_ms = data["last"]
        return account


@dataclass(slots=True)
class DeviceStatus:
    """What a device's status messages say, in its own table (written only by the status agent)."""

    device: str
    lost_at_device: int = 0
    device_dropped_last: int = 0
    invalid: int = 0
    state: str | None = None
    firmware: str | None = None
    reset_cause: str | None = None
    boot: int = 0

    def observe(self, status: Status) -> None:
        self.state, self.boot = status.state.value, status.boot
        if status.state is DeviceState.ONLINE:
            self.firmware, self.reset_cause = status.firmware, status.reset_cause
        dropped = status.outbox_dropped
        if dropped is None:
            return
        if dropped >= self.device_dropped_last:
            self.lost_at_device += dropped - self.device_dropped_last
        else:  # the outbox was re-created: its counter restarted from 0
            self.lost_at_device += dropped
        self.device_dropped_last = dropped

    def to_dict(self) -> dict:
        return {"device": self.device, "lost_at_device": self.lost_at_device,
                "device_dropped_last": self.device_dropped_last, "invalid": self.invalid, "state": self.state,
                "fw": self.firmware, "reset": self.reset_cause, "boot": self.boot}

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceStatus":
        return cls(data["device"], data["lost_at_device"], data["device_dropped_last"], data["invalid"],
                   data["state"], data["fw"], data["reset"], data["boot"])


def summary(account: DeviceAccount | None, status: DeviceStatus | None) -> dict:
    """One device's numbers, as `/devices` and `/accounting` report them."""
    return {
        "received": account.received if account else 0,
        "duplicates": account.duplicates if account else 0,
        "gaps": account.gaps if account else 0,
        "lost_at_device": status.lost_at_device if status else 0,
        "invalid": (account.invalid if account else 0) + (status.invalid if status else 0),
        "late": account.late if account else 0,
    }


def detail(device: str, account: DeviceAccount | None, status: DeviceStatus | None, gap_limit: int = 100) -> dict:
    """`/devices/{id}`: the numbers, the last reading, the status and the open gaps per boot."""
    return {
        "device": device, **summary(account, status),
        "last": ({"boot": account.last_boot, "seq": account.last_seq, "ts_ms": account.last_ts_ms}
                 if account else None),
        "status": ({"state": status.state, "boot": status.boot, "fw": status.firmware,
                    "reset": status.reset_cause, "outbox_dropped": status.device_dropped_last}
                   if status else None),
        "boots": ({str(b): {"high": t.high, "missing": t.missing, "gaps": t.gaps(gap_limit)}
                   for b, t in sorted(account.boots.items())} if account else {}),
    }


def totals(summaries: list[dict]) -> dict:
    """Sum per-device summaries into the fleet's accounting."""
    keys = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late")
    out = {k: sum(s[k] for s in summaries) for k in keys}
    out["devices"] = len(summaries)
    return out
