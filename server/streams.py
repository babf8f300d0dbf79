"""Topics, tables, agents and web views of the worker: thin wiring around `server.logic`.

`wire(app, config)` declares everything on an app made by `server.app.create_app`;
it returns the handles tests need. Table values are JSON dicts, written back
whole after each record (Faust only logs assignments to the changelog).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import faust
from faust.web import Request, Response, View

from server.accounting import DeviceAccount, DeviceStatus, detail, summary, totals
from server.config import ServerConfig
from server.logic import Settings, device_key, handle_reading, handle_status
from server.models import SeriesPoint
from server.windows import DeviceWindows, History, series as series_view


@dataclass(frozen=True, slots=True)
class Streams:
    settings: Settings
    telemetry: Any
    status: Any
    series: Any
    accounts: Any
    device_status: Any
    windows: Any
    history: Any
    ingest: Any
    statuses: Any


def wire(app: faust.App, config: ServerConfig) -> Streams:
    settings = Settings.from_config(config)
    raw = {"key_type": bytes, "value_type": bytes, "key_serializer": "raw", "value_serializer": "raw",
           "partitions": config.partitions}
    telemetry = app.topic(config.telemetry_topic, **raw)
    status = app.topic(config.status_topic, **raw)
    series = app.topic(config.series_topic, key_type=str, value_type=SeriesPoint, key_serializer="raw",
                       partitions=config.partitions)
    table_args = {"key_type": str, "partitions": config.partitions}
    accounts = app.Table("accounts", default=None, help="dedupe state and reading counts per device",
                         **table_args)
    device_status = app.Table("status", default=None, help="state and device-side losses per device",
                              **table_args)
    windows = app.Table("windows", default=None, help="open event-time windows per device", **table_args)
    history = app.Table("history", default=None, help="the newest closed windows per device", **table_args)
    for table in (accounts, device_status, windows, history):
        # Keys as the bridge writes them (the raw device id), so the web router hashes the same
        # bytes the records carry. (Changelog records go to the source record's partition.)
        table.key_serializer = "raw"
        table.changelog_topic = table.changelog_topic.derive(key_serializer="raw")

    async def ingest(stream: faust.StreamT) -> None:
        async for event in stream.events():
            device = device_key(event.key)
            out = handle_reading(accounts.get(device), windows.get(device), event.key, event.value,
                                 _record_ms(event), settings, lambda: history.get(device))
            # Publish before the tables record that the windows closed: a crash in between
            # publishes them again (identical) rather than never.
            for w in out.publish:
                await series.send(key=w.device, value=SeriesPoint(
                    device=w.device, metric=w.metric, start_ms=w.start_ms, end_ms=w.end_ms, count=w.count,
                    min=w.min, max=w.max, mean=w.mean, last=w.last))
            accounts[out.device] = out.account
            if out.windows is not None:
                windows[out.device] = out.windows
            if out.history is not None:
                history[out.device] = out.history

    async def statuses(stream: faust.StreamT) -> None:
        async for event in stream.events():
            device, _, value = handle_status(device_status.get(device_key(event.key)), event.key, event.value)
            device_status[device] = value

    ingest_agent = app.agent(telemetry, name="ferry-ingest")(ingest)
    status_agent = app.agent(status, name="ferry-status")(statuses)

    def account(device: str) -> DeviceAccount | None:
        data = accounts.get(device)
        return None if data is None else DeviceAccount.from_dict(data, settings.dedupe_window)

    def status_of(device: str) -> DeviceStatus | None:
        data = device_status.get(device)
        return None if data is None else DeviceStatus.from_dict(data)

    def local_devices() -> list[str]:
        return sorted({d for d, v in accounts.items() if v is not None}
                      | {d for d, v in device_status.items() if v is not None})

    @app.page("/devices")
    class DevicesView(View):
        """Devices owned by this worker, with their numbers."""

        async def get(self, request: Request) -> Response:
            return self.json({d: summary(account(d), status_of(d)) for d in local_devices()})

    @app.page("/accounting")
    class AccountingView(View):
        """Fleet totals over the devices this worker owns."""

        async def get(self, request: Request) -> Response:
            return self.json(totals([summary(account(d), status_of(d)) for d in local_devices()]))

    @app.page("/devices/{device}")
    class DeviceView(View):
        @app.table_route(table=accounts, match_info="device")
        async def get(self, request: Request, device: str) -> Response:
            acc, status = account(device), status_of(device)
            if acc is None and status is None:
                return self.notfound(f"no device {device!r}")
            data = detail(device, acc, status)
            open_windows, kept = _windows(device)
            data["metrics"] = sorted(set(open_windows.metrics() if open_windows else [])
                                     | set(kept.metrics() if kept else []))
            return self.json(data)

    @app.page("/devices/{device}/series/{metric}")
    class SeriesView(View):
        @app.table_route(table=windows, match_info="device")
        async def get(self, request: Request, device: str, metric: str) -> Response:
            open_windows, kept = _windows(device)
            if open_windows is None:
                return self.notfound(f"no windows for device {device!r}")
            return self.json({"device": device, "metric": metric,
                              "watermark_ms": open_windows.watermark(settings.lateness_ms),
                              **series_view(metric, settings.kinds, open_windows, kept)})

    def _windows(device: str) -> tuple[DeviceWindows | None, History | None]:
        data, kept = windows.get(device), history.get(device)
        return (DeviceWindows.from_dict(data) if data else None,
                History.from_dict(device, kept) if kept else None)

    return Streams(settings, telemetry, status, series, accounts, device_status, windows, history, ingest_agent,
                   status_agent)


def _record_ms(event: Any) -> int:
    timestamp = event.message.timestamp
    return int(round(timestamp * 1000)) if timestamp else 0
