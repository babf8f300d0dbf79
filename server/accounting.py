"""Per-device loss accounting: pure, no Faust. Per device a `DeviceAccount` (from its readings)
and a `DeviceStatus` (from its status messages), both parts of the device's one table value
(`ferry.server.state`); both round-trip through JSON.

* received: readings accepted (each (boot, seq) once);
* duplicates: readings whose (boot, seq) was already accepted;
* gaps: seqs below a boot's high-water mark that have not arrived (a late arrival heals one),
  in open boots, in closed ones, and from before the boot counter started again;
* lost_at_device: the device's own `outbox.dropped` from its status messages. The counter lives
  in the device's outbox state and survives reboots, so it is a running total: increases are
  added; a decrease means the outbox was re-created, and the new value is added whole;
* invalid: records on the telemetry topic that break the contract (not counted as received);
* late: accepted readings older than the device's watermark (counted here, not windowed);
* future (beside these, a flag on the device's clock rather than a loss): accepted readings stamped
  further ahead of their receive time than the allowed clock skew.

A reading the device dropped from its outbox never arrives, so it usually also shows as a gap;
the two numbers are reported side by side, never summed (docs/server.md).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ferry.contract import DeviceState, Reading, Status
from ferry.server.sequence import ClosedBoots, SeqTracker


@dataclass(slots=True)
class DeviceAccount:
    """Dedupe and loss accounting of one device's readings.

    Boots are open (a `SeqTracker` each) until they close into `closed` (see `close_boots`).
    Times given here are the gateway's receive times (`ferry-received-ms`; 0 when a record has
    none, and then nothing closes and no restart is recognised from readings): they follow the
    device's own order, whatever the worker's clock or backlog.
    """

    device: str
    window: int
    received: int = 0
    duplicates: int = 0
    invalid: int = 0
    late: int = 0
    future: int = 0
    """Received readings stamped more than the allowed clock skew after their receive time."""
    boots: dict[int, SeqTracker] = field(default_factory=dict)
    """The open boots."""
    closed: ClosedBoots = field(default_factory=ClosedBoots)
    restarts: int = 0
    """How often the device's boot counter started again (its flash was wiped)."""
    earlier_gaps: int = 0
    """Seqs still missing when the boot counter started again: they stay in `gaps`, though they can
    no longer arrive (the outbox holding them went with the flash)."""
    last_boot: int = 0
    last_seq: int = -1
    last_ts_ms: int = 0
    last_receive_ms: int = 0
    """When the gateway received the newest reading (0: not known)."""

    def observe_reading(self, reading: Reading, event_ms: int, receive_ms: int, grace_ms: int) -> bool:
        """Dedupe and account one reading; True when it is new (to be windowed)."""
        boot, seq = reading.boot, reading.seq
        tracker = self.boots.get(boot)
        if tracker is None and self.closed.holds(boot):
            if seq == 0 and receive_ms > self.last_receive_ms and not self._fills_gap(boot, seq):
                # The first reading of a boot long over, sent after everything else: the device counts
                # its boots from 1 again (its flash was wiped), and its birth has not come yet.
                self._start_again()
            else:
                new = self.closed.observe(boot, seq)
                self._count(new)
                self.last_receive_ms = max(self.last_receive_ms, receive_ms)
                return new
        if tracker is None:
            tracker = self.boots[boot] = SeqTracker(self.window)
        new = tracker.observe(seq)
        self._count(new)
        if new and (boot, seq) > (self.last_boot, self.last_seq):
            self.last_boot, self.last_seq, self.last_ts_ms = boot, seq, event_ms
        tracker.last_receive_ms = max(tracker.last_receive_ms, receive_ms)
        self.last_receive_ms = max(self.last_receive_ms, receive_ms)
        self.close_boots(grace_ms)
        return new

    def observe_birth(self, boot: int, receive_ms: int) -> None:
        """A birth ("online" status) of a boot below the newest, received after every reading: the
        boot counter started again."""
        newest = self.newest_boot
        if newest is not None and boot < newest and receive_ms > self.last_receive_ms > 0:
            self._start_again()

    def close_boots(self, grace_ms: int) -> None:
        """Close every boot but the newest once nothing of it was received for `grace_ms`."""
        if len(self.boots) < 2:
            return
        newest = max(self.boots)
        horizon = self.last_receive_ms - grace_ms
        for boot in sorted(b for b, t in self.boots.items() if b != newest and t.last_receive_ms <= horizon):
            self.closed.close(boot, self.boots.pop(boot))

    @property
    def newest_boot(self) -> int | None:
        """The highest boot number since the counter (re)started, None before any reading."""
        candidates = [b for b in (max(self.boots, default=None), self.closed.newest) if b is not None]
        return max(candidates, default=None)

    @property
    def gaps(self) -> int:
        return sum(t.missing for t in self.boots.values()) + self.closed.missing + self.earlier_gaps

    def _fills_gap(self, boot: int, seq: int) -> bool:
        return any(first <= seq <= last for first, last in self.closed.gaps.get(boot, []))

    def _count(self, new: bool) -> None:
        if new:
            self.received += 1
        else:
            self.duplicates += 1

    def _start_again(self) -> None:
        for boot in sorted(self.boots):
            self.closed.close(boot, self.boots.pop(boot))
        self.earlier_gaps += self.closed.start_again()
        self.restarts += 1
        self.last_boot, self.last_seq = 0, -1

    def to_dict(self) -> dict:
        return {
            "device": self.device, "received": self.received, "duplicates": self.duplicates,
            "invalid": self.invalid, "late": self.late, "future": self.future,
            "boots": {str(b): t.to_dict() for b, t in self.boots.items()}, "closed": self.closed.to_dict(),
            "restarts": [self.restarts, self.earlier_gaps],
            "last": [self.last_boot, self.last_seq, self.last_ts_ms, self.last_receive_ms],
        }

    @classmethod
    def from_dict(cls, data: dict, window: int) -> "DeviceAccount":
        account = cls(data["device"], window, data["received"], data["duplicates"], data["invalid"], data["late"],
                      data.get("future", 0))
        account.boots = {int(b): SeqTracker.from_dict(t, window) for b, t in data["boots"].items()}
        # "closed", "restarts" and the last receive time came with closing boots: older states have none.
        if "closed" in data:
            account.closed = ClosedBoots.from_dict(data["closed"])
            account.restarts, account.earlier_gaps = data["restarts"]
            account.last_boot, account.last_seq, account.last_ts_ms, account.last_receive_ms = data["last"]
        else:
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
    ota: dict | None = None
    """The newest birth's over-the-air update state ({"slot", "state", "ver", "last"}, docs/ota.md);
    None when the device does not report one."""

    def observe(self, status: Status, restarted: bool = False) -> None:
        """Take a status message. One of an older boot than the newest seen is ignored: it arrives late
        when the device rebooted into another site while the old site's gateway still held it (two
        gateways, no order between them), and its outbox counter, lower than the newest, would look
        like an outbox made anew and count its drops again. Unless the boot counter started again
        (`restarted`: the account recognised it from this birth)."""
        if status.boot < self.boot and not restarted:
            return
        self.state, self.boot = status.state.value, status.boot
        if status.state is DeviceState.ONLINE:
            self.firmware, self.reset_cause = status.firmware, status.reset_cause
            ota = status.ota
            self.ota = None if ota is None else {"slot": ota.slot, "state": ota.state, "ver": ota.version,
                                                 "last": ota.last}
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
                "fw": self.firmware, "reset": self.reset_cause, "boot": self.boot, "ota": self.ota}

    @classmethod
    def from_dict(cls, data: dict) -> "DeviceStatus":
        return cls(data["device"], data["lost_at_device"], data["device_dropped_last"], data["invalid"],
                   data["state"], data["fw"], data["reset"], data["boot"], data.get("ota"))  # no ota: stored before it


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
    """`/devices/{id}`: the numbers, the last reading, the status, the open gaps per boot, the closed boots."""
    return {
        "device": device, **summary(account, status), "future": account.future if account else 0,
        "last": ({"boot": account.last_boot, "seq": account.last_seq, "ts_ms": account.last_ts_ms}
                 if account else None),
        "status": ({"state": status.state, "boot": status.boot, "fw": status.firmware,
                    "reset": status.reset_cause, "outbox_dropped": status.device_dropped_last, "ota": status.ota}
                   if status else None),
        "boots": _boots(account, gap_limit) if account else {},
        "closed_boots": ({"boots": account.closed.boots, "received": account.closed.received,
                          "duplicates": account.closed.duplicates, "missing": account.closed.missing}
                         if account else None),
        "restarts": account.restarts if account else 0,
    }


def _boots(account: DeviceAccount, gap_limit: int) -> dict:
    """Per boot with something to say: the open ones, and the closed ones with seqs still missing."""
    out = {b: {"high": t.high, "missing": t.missing, "gaps": t.gaps(gap_limit), "closed": False}
           for b, t in account.boots.items()}
    out.update({b: {"high": None, "missing": sum(last - first + 1 for first, last in ranges),
                    "gaps": ranges[:gap_limit], "closed": True} for b, ranges in account.closed.gaps.items()})
    return {str(b): out[b] for b in sorted(out)}


def totals(summaries: list[dict]) -> dict:
    """Sum per-device summaries into the fleet's accounting."""
    keys = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late")
    out = {k: sum(s[k] for s in summaries) for k in keys}
    out["devices"] = len(summaries)
    return out
