"""`Alert`: the one record for anything worth telling an operator about a device, raised by
`ferry.server.anomaly` (a metric behaves oddly) and `ferry.server.health` (the device is in trouble).

One type for both, so the worker publishes, stores and shows them the same way. Alerts mark
the start of an episode (or a transition), never every reading of it.
"""

from __future__ import annotations

from dataclasses import dataclass


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
