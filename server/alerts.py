"""`Alert`: the one record for anything worth telling an operator about a device, raised by
`ferry.server.anomaly` (a metric behaves oddly) and `ferry.server.health` (the device is in trouble);
`AlertLog`: the newest alerts of one partition's devices, for `/alerts`.

One type for both, so the worker publishes, stores and shows them the same way. Alerts mark
the start of an episode (or a transition), never every reading of it.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field

from ferry.worker_records import AlertRecord


@dataclass(frozen=True, slots=True)
class Alert:
    device: str
    kind: str
    """anomaly: "anomaly" (a deviation) or "stuck"; health: "offline", "online", "battery_low",
    "rssi_poor", "reboot_loop"."""
    reason: str
    """One human sentence with the numbers behind the alert."""
    ts_ms: int
    """When it happened: the reading's event time for anomalies, the receive or check time for health."""
    metric: str | None = None
    value: float | None = None
    """The value that raised it (the metric's value, the battery's mV, the median RSSI, ...)."""
    score: float | None = None
    """How strong: the robust z of a deviation, the number of identical readings of a stuck metric."""

    def to_dict(self) -> dict:
        return {"device": self.device, "kind": self.kind, "metric": self.metric, "reason": self.reason,
                "ts_ms": self.ts_ms, "value": self.value, "score": self.score}

    @classmethod
    def from_dict(cls, data: dict) -> "Alert":
        return cls(data["device"], data["kind"], data["reason"], data["ts_ms"], data.get("metric"),
                   data.get("value"), data.get("score"))

    def to_record(self) -> AlertRecord:
        """The record published to the alerts topic (docs/contract.md)."""
        return AlertRecord(self.device, self.kind, self.ts_ms, self.reason, self.metric, self.value, self.score)


def order(alert: Alert | dict) -> tuple[int, str, str, str]:
    """Alerts are ordered by time, then device, kind and metric: the same order on every worker."""
    if isinstance(alert, dict):
        return (alert["ts_ms"], alert["device"], alert["kind"], alert["metric"] or "")
    return (alert.ts_ms, alert.device, alert.kind, alert.metric or "")


@dataclass(slots=True)
class AlertLog:
    """The newest alerts of the devices of one source partition, oldest first (by `order`).

    One log per partition, not per device, so a device that raises many alerts pushes out older ones of
    the others, as "the fleet's newest" means; merging the logs of every partition (each worker owns some)
    and taking the newest N is exact for N up to `keep`.
    """

    alerts: list[Alert] = field(default_factory=list)

    def add(self, alerts: list[Alert], keep: int) -> None:
        """Insert in order (after an equal one), keep the newest `keep`."""
        for alert in alerts:
            bisect.insort_right(self.alerts, alert, key=order)
        del self.alerts[:-keep]

    def newest(self, limit: int, since_ms: int | None = None) -> list[Alert]:
        """Up to `limit` alerts with `ts_ms >= since_ms`, newest first."""
        first = 0 if since_ms is None else bisect.bisect_left(self.alerts, since_ms, key=lambda a: a.ts_ms)
        return self.alerts[max(first, len(self.alerts) - limit):][::-1]

    def to_list(self) -> list[dict]:
        return [a.to_dict() for a in self.alerts]

    @classmethod
    def from_list(cls, data: list[dict] | None) -> "AlertLog":
        return cls([Alert.from_dict(a) for a in data or ()])
