"""Everything the worker knows about one device, as one table value: pure, no Faust.

One value per device (not one table per concern) so a batch of records costs
one read and one changelog write per device, whatever it touched: dedupe and
loss accounting, status, open windows, anomaly detectors, health and how many
alerts it raised. Closed windows live apart (`ferry.server.windows.History`, written only
when a window closes), and so do the alerts themselves (`ferry.server.alerts.AlertLog`, one
per partition, written only when one is raised), so this value stays small.
"""

from __future__ import annotations

from dataclasses import dataclass

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

    @classmethod
    def new(cls, device: str, dedupe_window: int, anomaly: AnomalySettings) -> "DeviceState":
        return cls(device, DeviceAccount(device, dedupe_window), DeviceStatus(device), DeviceWindows(device),
                   DeviceDetectors(device, anomaly), DeviceHealth(device))

    def remember(self, alerts: list[Alert]) -> None:
        self.alerts_raised += len(alerts)

    def to_dict(self) -> dict:
        return {"device": self.device, "account": self.account.to_dict(), "status": self.status.to_dict(),
                "windows": self.windows.to_dict(), "detectors": self.detectors.to_dict(),
                "health": self.health.to_dict(), "alerts_raised": self.alerts_raised}

    @classmethod
    def from_dict(cls, data: dict, dedupe_window: int, anomaly: AnomalySettings) -> "DeviceState":
        """Also reads values written before the alerts moved out (their `alerts` list is ignored:
        those alerts are on the alerts topic, not in `/alerts`)."""
        device = data["device"]
        return cls(device, DeviceAccount.from_dict(data["account"], dedupe_window),
                   DeviceStatus.from_dict(data["status"]), DeviceWindows.from_dict(data["windows"]),
                   DeviceDetectors.from_dict(device, data["detectors"], anomaly),
                   DeviceHealth.from_dict(device, data["health"]), data["alerts_raised"])
