"""The worker's HTTP API (docs/server.md): per-device views routed to the worker that owns the
device, fleet views gathered from every worker of the app.

A fleet view (`/devices`, `/accounting`, `/alerts`) asked of any worker asks every
member of the consumer group for its own part (`?scope=local`) and merges the
answers, so two workers answer the same as one. A member that does not answer
makes the view fail with 503 naming it, rather than return partial numbers; so
does a worker whose tables are being recovered (`WorkerState.ready`), rather than
answer from a half-replayed changelog. `/metrics` (`ferry.server.metrics`) is this
worker's alone, and answers while it recovers too.

With `api_token` set, `ferry.server.auth` asks every request for the token before these views see it;
a request forwarded to the worker owning a device (`@app.table_route`) keeps the request's headers
(faust/app/router.py `_route_req`), and a fleet view asks the other workers with the same token.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
import faust
from faust.web import Request, Response, View

from ferry.prometheus import CONTENT_TYPE as PROMETHEUS_CONTENT_TYPE
from ferry.prometheus import prometheus_text
from ferry.server.accounting import detail, summary
from ferry.server.alerts import order as alert_order
from ferry.server.auth import auth_headers
from ferry.server.metrics import collect as collect_metrics
from ferry.server.windows import series as series_view

if TYPE_CHECKING:
    from ferry.server.state import DeviceState
    from ferry.server.worker_state import WorkerState

PEER_TIMEOUT_S = 5.0
ALERTS_LIMIT_DEFAULT = 100
ADDITIVE = ("received", "duplicates", "gaps", "lost_at_device", "invalid", "late", "future", "devices", "alerts",
            "offline")
RECOVERING = "recovering: this worker's tables are being restored from their changelogs (a rebalance); ask again"


def device_summary(state: "DeviceState", now_ms: int, worker: "WorkerState") -> dict:
    """One device's numbers and health, as `/devices` lists them."""
    return {**summary(state.account, state.status), "future": state.account.future, "alerts": state.alerts_raised,
            "health": state.health.view(now_ms, worker.settings.health)}


def local_devices_view(worker: "WorkerState", now_ms: int) -> dict[str, dict]:
    return {d: device_summary(worker.state(d), now_ms, worker) for d in worker.local_devices()}


def local_accounting(worker: "WorkerState", now_ms: int) -> dict:
    """`/accounting?scope=local`: `accounting_of(local_devices_view(...))` without building each device's
    summary and health view (at 10,000 devices that answer took ~0.1 s of the event loop)."""
    received = duplicates = gaps = lost = invalid = late = future = alerts = offline = devices = 0
    health = worker.settings.health
    for device in worker.local_devices():
        state = worker.state(device)
        account, status = state.account, state.status
        received += account.received
        duplicates += account.duplicates
        gaps += account.gaps
        lost += status.lost_at_device
        invalid += account.invalid + status.invalid
        late += account.late
        future += account.future
        alerts += state.alerts_raised
        offline += state.health.offline_at(now_ms, health)
        devices += 1
    return {"received": received, "duplicates": duplicates, "gaps": gaps, "lost_at_device": lost,
            "invalid": invalid, "late": late, "future": future, "alerts": alerts, "devices": devices,
            "offline": offline}


def accounting_of(devices: dict[str, dict]) -> dict:
    """Fleet totals of a `/devices` answer."""
    out = {k: sum(s[k] for s in devices.values()) for k in ADDITIVE if k not in ("devices", "offline")}
    out["devices"] = len(devices)
    out["offline"] = sum(1 for s in devices.values() if s["health"]["offline"])
    return out


def newest(alerts: list[dict], limit: int) -> list[dict]:
    return sorted(alerts, key=alert_order, reverse=True)[:limit]


class BadQuery(ValueError):
    """A query parameter the view cannot take (answered 400 with this message)."""


def ms_param(request: Request, name: str) -> int | None:
    """`?name=<ms since the Unix epoch>`, None when absent."""
    raw = request.query.get(name)
    if raw is None:
        return None
    try:
        value = int(raw)
    except ValueError:
        value = -1
    if not 0 <= value <= 2**53:
        raise BadQuery(f"{name}: expected milliseconds since the Unix epoch (an integer >= 0), got {raw!r}")
    return value


def alerts_query(request: Request, keep: int) -> tuple[int, int | None]:
    """(limit, since_ms) of `/alerts?limit=N&since=MS`: limit 1..keep, default min(100, keep)."""
    raw = request.query.get("limit")
    limit = min(ALERTS_LIMIT_DEFAULT, keep)
    if raw is not None:
        try:
            limit = int(raw)
        except ValueError:
            limit = 0
        if not 1 <= limit <= keep:
            raise BadQuery(f"limit: expected an integer 1..{keep} (alerts_keep), got {raw!r}")
    return limit, ms_param(request, "since")


class PeerError(Exception):
    """A worker of the group did not answer its part of a fleet view."""


async def gather_peers(app: faust.App, path: str, headers: dict[str, str] | None = None,
                       **params: str) -> list[Any]:
    """`path?scope=local` (and `params`) from every other worker of the group (per the last rebalance),
    each request with `headers` (the API token)."""
    me = str(app.conf.canonical_url).rstrip("/")
    peers = sorted(str(h).rstrip("/") for h in app.router.tables_metadata() if str(h).rstrip("/") != me)
    if not peers:
        return []
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=headers) as session:
        async def one(peer: str) -> Any:
            try:
                async with session.get(f"{peer}{path}", params={**params, "scope": "local"}) as response:
                    if response.status != 200:
                        raise PeerError(f"{peer} answered {response.status}")
                    return await response.json()
            except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
                raise PeerError(f"{peer}: {exc!r}") from None
        return list(await asyncio.gather(*(one(p) for p in peers)))


def register_views(app: faust.App, worker: "WorkerState", devices_table: Any) -> None:
    settings = worker.settings
    peer_headers = auth_headers(worker.config.api_token)

    def now_ms() -> int:
        return int(time.time() * 1000)

    def local_only(request: Request) -> bool:
        return request.query.get("scope") == "local"

    @app.page("/devices")
    class DevicesView(View):
        """Every device with its numbers and health."""

        async def get(self, request: Request) -> Response:
            if not worker.ready:
                return self.json({"error": RECOVERING}, status=503)
            out = local_devices_view(worker, now_ms())
            if not local_only(request):
                try:
                    for part in await gather_peers(app, "/devices", peer_headers):
                        out.update(part)
                except PeerError as exc:
                    return self.json({"error": str(exc)}, status=503)
            return self.json(dict(sorted(out.items())))

    @app.page("/accounting")
    class AccountingView(View):
        """Fleet totals."""

        async def get(self, request: Request) -> Response:
            if not worker.ready:
                return self.json({"error": RECOVERING}, status=503)
            out = local_accounting(worker, now_ms())
            if not local_only(request):
                try:
                    for part in await gather_peers(app, "/accounting", peer_headers):
                        out = {k: out[k] + part[k] for k in ADDITIVE}
                except PeerError as exc:
                    return self.json({"error": str(exc)}, status=503)
            return self.json(out)

    @app.page("/alerts")
    class AlertsView(View):
        """The fleet's newest alerts (`?limit=N`, default 100, at most `alerts_keep`; `?since=MS`: those
        with `ts_ms >= MS`), newest first: each worker's newest of the partitions it owns, merged."""

        async def get(self, request: Request) -> Response:
            try:
                limit, since_ms = alerts_query(request, worker.config.alerts_keep)
            except BadQuery as exc:
                return self.json({"error": str(exc)}, status=400)
            if not worker.ready:
                return self.json({"error": RECOVERING}, status=503)
            alerts = [a.to_dict() for a in worker.local_alerts(limit, since_ms)]
            if not local_only(request):
                params = {"limit": str(limit)} if since_ms is None else {"limit": str(limit), "since": str(since_ms)}
                try:
                    for part in await gather_peers(app, "/alerts", peer_headers, **params):
                        alerts.extend(part["alerts"])
                except PeerError as exc:
                    return self.json({"error": str(exc)}, status=503)
            return self.json({"alerts": newest(alerts, limit)})

    @app.page("/metrics")
    class MetricsView(View):
        """This worker's own numbers in Prometheus' text format; answers while recovering too."""

        async def get(self, request: Request) -> Response:
            text = prometheus_text(collect_metrics(worker, app.monitor.tp_end_offsets))
            # The type goes in the headers: aiohttp refuses a charset in its content_type argument.
            return self.bytes(text.encode(), headers={"Content-Type": PROMETHEUS_CONTENT_TYPE})

    @app.page("/devices/{device}")
    class DeviceView(View):
        @app.table_route(table=devices_table, match_info="device")
        async def get(self, request: Request, device: str) -> Response:
            if not worker.ready:
                return self.json({"error": RECOVERING}, status=503)
            state = worker.state(device)
            if state is None:
                return self.notfound(f"no device {device!r}")
            data = detail(device, state.account, state.status)
            data["metrics"] = sorted(set(state.windows.metrics()) | set(worker.history_of(device).metrics()))
            data["health"] = state.health.view(now_ms(), settings.health)
            data["alerts"] = state.alerts_raised
            return self.json(data)

    @app.page("/devices/{device}/series/{metric}")
    class SeriesView(View):
        """Per window kind, the kept closed windows then the open ones (`?from=MS&to=MS`: those starting in
        [from, to)); 404 naming the known metrics for a metric the device has no window of."""

        @app.table_route(table=devices_table, match_info="device")
        async def get(self, request: Request, device: str, metric: str) -> Response:
            try:
                from_ms, to_ms = ms_param(request, "from"), ms_param(request, "to")
            except BadQuery as exc:
                return self.json({"error": str(exc)}, status=400)
            if not worker.ready:
                return self.json({"error": RECOVERING}, status=503)
            state = worker.state(device)
            if state is None:
                return self.notfound(f"no device {device!r}")
            kept = worker.history_of(device)
            known = sorted(set(state.windows.metrics()) | set(kept.metrics()))
            if metric not in known:
                return self.json({"error": f"no metric {metric!r} for device {device!r}", "metrics": known},
                                 status=404)
            return self.json({"device": device, "metric": metric,
                              "watermark_ms": state.windows.watermark(settings.lateness_ms),
                              **series_view(metric, settings.kinds, state.windows, kept, from_ms, to_ms)})
