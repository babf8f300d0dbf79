"""The dashboard in headless Chromium: every number it renders equals what the API says.

Two sources of API answers: canned JSON from a tiny in-process server (fast, and covers the
shapes the worker may give: full, without the health fields, without the chart library), and
a real `ferry worker` fed contract records through the local broker. Chromium renders the page
with `--dump-dom` (its `--virtual-time-budget` lets the page's fetches finish first) and takes a
screenshot; the test parses the page's `data-field` hooks (see server/dashboard/dashboard.js).

Set FERRY_SCREENSHOT=docs/img/dashboard.png to keep the real worker's screenshot.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ferry.contract import Reading, encode_reading
from ferry.gateway.process import GatewayProcess
from ferry.process import free_port
from ferry.server.pipeline import GatewayFigures, parse_exposition
from ferry.server.web import DASHBOARD_DIR, dashboard_file
from tests.gateway.paho_client import TestClient
from tests.server.worker_support import create_topics, get_json, get_status, produce, wait_for, worker_process

CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-quic", "--no-first-run", "--disable-component-update", "--disable-sync")
VIRTUAL_TIME_BUDGET_MS = 4000  # less than the page's 5 s poll: it renders once
CHROMIUM_TIMEOUT_S = 90.0
NONE = "\u2014"
TOTALS = ("received", "duplicates", "gaps", "lost_at_device", "late", "invalid", "devices", "offline", "alerts")
ROW_FIELDS = ("state", "last_seen_ms", "battery_mv", "rssi_dbm", "reboots_recent", "received", "duplicates",
              "gaps", "lost_at_device", "late", "invalid", "alerts", "problems")
HEALTH_FIELDS = frozenset({"state", "last_seen_ms", "battery_mv", "rssi_dbm", "reboots_recent", "problems"})
ALERT_FIELDS = ("ts_ms", "device", "kind", "metric", "value", "score", "reason")


# ---- Chromium ---------------------------------------------------------------------------------

def chromium_binary() -> str:
    """Debian's Chromium (or $FERRY_CHROMIUM); a missing browser fails the test, it does not skip it."""
    candidate = os.environ.get("FERRY_CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
    if not os.access(candidate, os.X_OK):
        pytest.fail("Chromium is not installed, and the dashboard's browser test needs it: `make test` installs "
                    "Debian's `chromium` when run as root; otherwise run `sudo apt-get install chromium` "
                    "(or point FERRY_CHROMIUM at a Chromium binary)", pytrace=False)
    return candidate


def run_chromium(args: list[str], tmp_path: Path) -> str:
    """Run headless Chromium with a fresh profile; its stdout. Its whole process group is always stopped."""
    profile = tempfile.mkdtemp(prefix="chromium-profile-", dir=tmp_path)
    argv = [chromium_binary(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", *args]
    with subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          start_new_session=True) as browser:
        try:
            out, err = browser.communicate(timeout=CHROMIUM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            os.killpg(browser.pid, signal.SIGKILL)
            out, err = browser.communicate()
            pytest.fail(f"chromium did not finish in {CHROMIUM_TIMEOUT_S} s: {err.decode(errors='replace')[-2000:]}")
        finally:
            try:  # helpers (zygote, GPU, network service) that outlived the browser
                os.killpg(browser.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert browser.returncode == 0, f"chromium exited with {browser.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out.decode("utf-8", "replace")


def render_dom(url: str, tmp_path: Path, *extra: str) -> str:
    return run_chromium([f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", *extra, "--dump-dom", url], tmp_path)


def screenshot(url: str, path: Path, tmp_path: Path) -> None:
    run_chromium([f"--virtual-time-budget={VIRTUAL_TIME_BUDGET_MS}", "--window-size=1400,1000", "--hide-scrollbars",
                  f"--screenshot={path}", url], tmp_path)


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", "not a PNG"
    return struct.unpack(">II", data[16:24])


# ---- the rendered page ------------------------------------------------------------------------

@dataclass
class Hook:
    attrs: dict[str, str]
    text: list[str] = field(default_factory=list)

    @property
    def value(self) -> str:
        return " ".join("".join(self.text).split())


class HookParser(HTMLParser):
    """Every element with a `data-field` attribute, with its attributes and text content."""

    VOID = frozenset({"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta", "source",
                      "track", "wbr"})

    def __init__(self) -> None:
        super().__init__()
        self.hooks: list[Hook] = []
        self.body: dict[str, str] = {}
        self.texts: list[str] = []
        self.charts: list[dict[str, str]] = []
        """The attributes of every `data-chart` element."""
        self._open: list[tuple[str, Hook | None]] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        values = {k: v or "" for k, v in attrs}
        if tag == "body":
            self.body = values
        if "data-chart" in values:
            self.charts.append(values)
        if tag in self.VOID:
            return
        hook = Hook(values) if "data-field" in values else None
        if hook is not None:
            self.hooks.append(hook)
        self._open.append((tag, hook))

    def handle_endtag(self, tag: str) -> None:
        for i in range(len(self._open) - 1, -1, -1):
            if self._open[i][0] == tag:
                del self._open[i:]
                return

    def handle_data(self, data: str) -> None:
        self.texts.append(data)
        for _, hook in self._open:
            if hook is not None:
                hook.text.append(data)


@dataclass
class Page:
    state: str
    totals: dict[str, Hook]
    rows: dict[str, dict[str, Hook]]
    panel: dict[str, dict[str, Hook]]
    metric_stats: dict[tuple[str, str], dict[str, Hook]]
    alerts: dict[int, dict[str, Hook]]
    text: str
    pipeline: dict[tuple[str, str], dict[str, Hook]] = field(default_factory=dict)
    """(data-pipeline, data-key) -> field -> hook."""
    chart_ranges: dict[str, tuple[float, float]] = field(default_factory=dict)
    """metric -> the time axis' (min, max) in seconds, as the chart set it."""

    @classmethod
    def parse(cls, dom: str) -> "Page":
        parser = HookParser()
        parser.feed(dom)
        page = cls(parser.body.get("data-state", ""), {}, {}, {}, {}, {}, " ".join("".join(parser.texts).split()))
        for attrs in parser.charts:
            if "data-x-min" in attrs and "data-x-max" in attrs:
                page.chart_ranges[attrs["data-chart"]] = (float(attrs["data-x-min"]), float(attrs["data-x-max"]))
        for hook in parser.hooks:
            a, name = hook.attrs, hook.attrs["data-field"]
            if "data-pipeline" in a:
                page.pipeline.setdefault((a["data-pipeline"], a["data-key"]), {})[name] = hook
            elif "data-alert" in a:
                page.alerts.setdefault(int(a["data-alert"]), {})[name] = hook
            elif "data-metric" in a:
                page.metric_stats.setdefault((a["data-panel"], a["data-metric"]), {})[name] = hook
            elif "data-panel" in a:
                page.panel.setdefault(a["data-panel"], {})[name] = hook
            elif "data-device" in a:
                page.rows.setdefault(a["data-device"], {})[name] = hook
            else:
                page.totals[name] = hook
        return page


def mismatch(hook: Hook, expected: object) -> str | None:
    """Why `hook` does not show `expected` (absent and null show "—"), or None when it does."""
    text = hook.value
    if "data-value" in hook.attrs:  # a time shown relative; the raw value rides along
        raw = "" if expected is None else str(expected)
        ok = hook.attrs["data-value"] == raw and (text == NONE) == (expected is None)
        return None if ok else f"data-value {hook.attrs['data-value']!r} / {text!r}, API {expected!r}"
    if expected is None:
        return None if text == NONE else f"{text!r}, API has no value"
    if isinstance(expected, list):
        shown = ", ".join(map(str, expected)) if expected else NONE
        return None if text == shown else f"{text!r}, API {expected!r}"
    if isinstance(expected, str):
        return None if text == expected else f"{text!r}, API {expected!r}"
    if isinstance(expected, bool) or not isinstance(expected, (int, float)):
        return f"{text!r}: the API's {expected!r} is not a number"
    try:
        number = float(text.replace(",", ""))
    except ValueError:
        return f"{text!r} is not a number, API {expected!r}"
    # Integers exactly; fractions as the page rounds them (2 decimals).
    ok = number == expected if isinstance(expected, int) else math.isclose(number, expected, abs_tol=0.005 + 1e-9)
    return None if ok else f"{text!r}, API {expected!r}"


def dotted(data: dict | None, path: str) -> object:
    value: object = data
    for key in path.split("."):
        if not isinstance(value, dict) or key not in value:
            return None
        value = value[key]
    return value


@dataclass
class Api:
    """What the API answered around one rendering."""

    accounting: dict | None
    devices: dict
    alerts: dict | None
    selected: str
    detail: dict | None
    series: dict[str, dict | None]
    pipeline: dict | None = None
    """`/pipeline`; None: not checked."""


GATEWAY_FIGURES = ("connections", "received", "unacked", "spooled", "oldest_age_s", "kafka_connected", "acked",
                   "deadlettered", "rejected", "free_disk_bytes")


def pipeline_mismatch(hook: Hook, expected: object) -> str | None:
    """Why a pipeline hook does not show `expected`: the raw value in data-value where the text is
    not the number (a flag, bytes, seconds), else the number as text; absent and null show "—"."""
    if "data-value" not in hook.attrs:
        return mismatch(hook, expected)
    raw = hook.attrs["data-value"]
    if expected is None:
        return None if raw == "" and hook.value == NONE else f"{raw!r} / {hook.value!r}, API has no value"
    if isinstance(expected, bool):
        return None if raw == str(expected).lower() else f"{raw!r}, API {expected!r}"
    try:
        ok = float(raw) == expected
    except ValueError:
        ok = False
    return None if ok and hook.value != NONE else f"{raw!r} / {hook.value!r}, API {expected!r}"


def compare_pipeline(page: Page, pipeline: dict) -> tuple[list[str], int]:
    """(every pipeline value the page renders differently from `/pipeline`, how many were checked)."""
    problems: list[str] = []
    checked = 0

    def check(where: str, hooks: dict[str, Hook], name: str, expected: object) -> None:
        nonlocal checked
        hook = hooks.get(name)
        if hook is None:
            problems.append(f"{where}.{name}: not rendered")
            return
        checked += 1
        why = pipeline_mismatch(hook, expected)
        if why:
            problems.append(f"{where}.{name}: {why}")

    for entry in pipeline["path"]:
        hooks = page.pipeline.get(("path", entry["stage"]), {})
        for name, value in entry.items():
            if name != "stage":
                check(f"path {entry['stage']}", hooks, name, value)
    for gateway in pipeline["gateways"]:
        hooks = page.pipeline.get(("gateway", gateway["url"]), {})
        check(f"gateway {gateway['url']}", hooks, "up", gateway["up"])
        if not gateway["up"] and gateway["error"] not in hooks.get("up", Hook({})).value:
            problems.append(f"gateway {gateway['url']}: the error {gateway['error']!r} is not shown")
        for name in GATEWAY_FIGURES:
            check(f"gateway {gateway['url']}", hooks, name, (gateway["figures"] or {}).get(name))
    rendered_lag = {key for kind, key in page.pipeline if kind == "lag"}
    expected_lag = set()
    for worker in pipeline["workers"]:
        if worker["error"]:
            check(f"worker {worker['url']}", page.pipeline.get(("worker", worker["url"]), {}), "error",
                  worker["error"])
        for entry in worker["lag"] or ():
            key = f"{worker['url']} {entry['topic']} {entry['partition']}"
            expected_lag.add(key)
            check(f"lag {key}", page.pipeline.get(("lag", key), {}), "lag", entry["lag"])
    if rendered_lag != expected_lag:
        problems.append(f"lag rows {sorted(rendered_lag)} != {sorted(expected_lag)}")
    for name in ("readings", "p50_s", "p95_s", "p99_s"):
        check("latency", page.pipeline.get(("latency", "fleet"), {}), name, (pipeline.get("latency") or {}).get(name))
    return problems, checked


def compare(page: Page, api: Api) -> tuple[list[str], int]:
    """(every rendered value that differs from the API, how many values were checked)."""
    problems: list[str] = []
    checked = 0

    def check(where: str, hook: Hook | None, expected: object) -> None:
        nonlocal checked
        if hook is None:
            problems.append(f"{where}: not rendered")
            return
        checked += 1
        why = mismatch(hook, expected)
        if why:
            problems.append(f"{where}: {why}")

    for key in TOTALS:
        check(f"totals.{key}", page.totals.get(key), (api.accounting or {}).get(key))
    if sorted(page.rows) != sorted(api.devices):
        problems.append(f"fleet rows {sorted(page.rows)} != devices {sorted(api.devices)}")
    for device, numbers in api.devices.items():
        row = page.rows.get(device, {})
        health = numbers.get("health") or {}
        for key in ROW_FIELDS:
            check(f"{device}.{key}", row.get(key), (health if key in HEALTH_FIELDS else numbers).get(key))
    panel = page.panel.get(api.selected, {})
    if not panel:
        problems.append(f"device panel for {api.selected}: not rendered")
    for key, hook in panel.items():
        check(f"panel {api.selected}.{key}", hook, dotted(api.detail, key))
    for metric in (api.detail or {}).get("metrics", []):
        stats = page.metric_stats.get((api.selected, metric), {})
        windows = (api.series.get(metric) or {}).get("1m", [])
        closed = [w for w in windows if w["closed"]]
        for key in ("mean", "min", "max", "count"):
            check(f"chart {metric}.{key}", stats.get(key), closed[-1][key] if closed else None)
    alerts = (api.alerts or {}).get("alerts", [])
    if sorted(page.alerts) != list(range(len(alerts))):
        problems.append(f"{len(page.alerts)} alert rows rendered, the API lists {len(alerts)}")
    for i, alert in enumerate(alerts):
        for key in ALERT_FIELDS:
            check(f"alert {i}.{key}", page.alerts.get(i, {}).get(key), alert.get(key))
    if api.pipeline is not None:
        more, count = compare_pipeline(page, api.pipeline)
        problems += more
        checked += count
    return problems, checked


def assert_page_matches(page: Page, api: Api) -> int:
    assert page.state == "ready", f"the page did not finish rendering (body data-state={page.state!r}): {page.text}"
    problems, checked = compare(page, api)
    assert not problems, "rendered values differ from the API:\n" + "\n".join(problems)
    return checked


# ---- canned API answers -----------------------------------------------------------------------

def canned_api(now_ms: int, *, with_health: bool = True) -> dict[str, object]:
    """Answers in the API's final shape (`with_health=False`: the shape before health and alerts)."""
    minute = 60_000
    start = now_ms - now_ms % minute - 10 * minute
    windows = [{"start_ms": start + i * minute, "end_ms": start + (i + 1) * minute, "count": 6,
                "min": 20.0 + i * 0.1, "max": 21.5 + i * 0.1 + (3 if i == 7 else 0), "mean": 20.75 + i / 3,
                "last": 21.0, "closed": i < 9} for i in range(10)]
    health = {
        "dev-01": {"state": "ok", "last_seen_ms": now_ms - 4_000, "offline": False, "offline_reason": None,
                   "battery_mv": 3912, "battery_low": False, "rssi_dbm": -58, "rssi_poor": False,
                   "reboots_recent": 0, "reboot_loop": False, "problems": []},
        "dev-02": {"state": "warning", "last_seen_ms": now_ms - 9_000, "offline": False, "offline_reason": None,
                   "battery_mv": 3310, "battery_low": True, "rssi_dbm": -86, "rssi_poor": True,
                   "reboots_recent": 1, "reboot_loop": False, "problems": ["battery low", "signal poor"]},
        "dev-03": {"state": "offline", "last_seen_ms": now_ms - 3_600_000, "offline": True,
                   "offline_reason": "lwt", "battery_mv": None, "battery_low": False, "rssi_dbm": None,
                   "rssi_poor": False, "reboots_recent": 3, "reboot_loop": True,
                   "problems": ["offline (last will)", "reboot loop"]},
    }
    numbers = {
        "dev-01": {"received": 12345, "duplicates": 2, "gaps": 0, "lost_at_device": 0, "invalid": 0, "late": 1},
        "dev-02": {"received": 980, "duplicates": 0, "gaps": 4, "lost_at_device": 2, "invalid": 1, "late": 0},
        "dev-03": {"received": 77, "duplicates": 0, "gaps": 0, "lost_at_device": 0, "invalid": 0, "late": 0},
    }
    alerts = [
        {"device": "dev-02", "kind": "anomaly", "metric": "temp_c", "reason": "temp_c 33.1 above its median 21.0",
         "ts_ms": now_ms - 60_000, "value": 33.125, "score": 14.73},
        {"device": "dev-02", "kind": "battery_low", "metric": None, "reason": "battery 3310 mV below 3400 mV",
         "ts_ms": now_ms - 120_000, "value": 3310, "score": None},
        {"device": "dev-03", "kind": "offline", "metric": None, "reason": "last will received",
         "ts_ms": now_ms - 3_600_000, "value": None, "score": None},
    ]
    devices: dict[str, dict] = {}
    for device, counts in numbers.items():
        devices[device] = dict(counts)
        if with_health:
            devices[device].update(alerts=sum(a["device"] == device for a in alerts), health=health[device])
    accounting = {k: sum(d[k] for d in numbers.values()) for k in numbers["dev-01"]}
    accounting["devices"] = len(numbers)
    if with_health:
        accounting.update(alerts=len(alerts), offline=1)
    detail = {"device": "dev-02", **devices["dev-02"],
              "last": {"boot": 4, "seq": 979, "ts_ms": now_ms - 9_000},
              "status": {"state": "online", "boot": 4, "fw": "0.1.0", "reset": "brownout", "outbox_dropped": 2},
              "boots": {"4": {"high": 983, "missing": 4, "gaps": [[100, 101], [500, 501]]}},
              "metrics": ["rh_pct", "temp_c"]}
    answers: dict[str, object] = {"/accounting": accounting, "/devices": devices, "/devices/dev-02": detail}
    for device in ("dev-01", "dev-03"):
        answers[f"/devices/{device}"] = {**detail, "device": device, **devices[device]}
    for metric in detail["metrics"]:
        answers[f"/devices/dev-02/series/{metric}"] = {"device": "dev-02", "metric": metric,
                                                       "watermark_ms": now_ms, "1m": windows, "5m": []}
    if with_health:
        answers["/alerts"] = {"alerts": alerts}
        answers["/pipeline"] = canned_pipeline(now_ms)
    return answers


def canned_pipeline(now_ms: int) -> dict:
    """A `/pipeline` answer: a gateway up with Kafka down, a gateway and a worker not answering."""
    north = {"connections": 12, "received": 45210, "unacked": 134, "spooled": 120, "oldest_age_s": 8.5,
             "kafka_connected": False, "acked": 45001, "deadlettered": 2, "rejected": 0,
             "free_disk_bytes": 12_345_678_901, "disk_low": False}
    return {
        "gateways": [
            {"url": "http://gw-north:9883/metrics", "up": True, "scraped_at_ms": now_ms - 1000, "error": None,
             "figures": north},
            {"url": "http://gw-south:9883/metrics", "up": False, "scraped_at_ms": now_ms - 1000,
             "error": "no answer within 2 s", "figures": None},
        ],
        "workers": [
            {"url": "http://127.0.0.1:6066", "ready": True, "error": None,
             "lag": [{"topic": "ferry.telemetry", "partition": 0, "lag": 0},
                     {"topic": "ferry.telemetry", "partition": 1, "lag": 17}],
             "counted": {"received": 13402, "duplicates": 2, "gaps": 4, "lost_at_device": 2, "invalid": 1,
                         "devices": 3}},
            {"url": "http://10.0.0.6:6066", "ready": None, "error": "ClientConnectorError: cannot connect",
             "lag": None, "counted": None},
        ],
        "path": [
            {"stage": "devices", "count": 13406, "lost": 2},
            {"stage": "gateway", "count": 45210, "waiting": 134},
            {"stage": "kafka", "count": 45001, "waiting": 17},
            {"stage": "worker", "count": 13402, "duplicates": 2, "invalid": 1},
        ],
        "latency": {"readings": 13002, "p50_s": 0.42, "p95_s": 1.875, "p99_s": 4.6},
        "complete": False,
    }


class CannedApi:
    """Serves the dashboard's files (through `ferry.server.web.dashboard_file`) and canned API answers;
    with a `token`, the answers only to `Authorization: Bearer <token>` (401 otherwise, as the worker)."""

    def __init__(self, answers: dict[str, object], vendor: bool = True, token: str = "") -> None:
        self.answers, self.vendor, self.token = answers, vendor, token
        self.requests: list[str] = []
        self.authorization: list[tuple[str, str | None]] = []
        """(path, its Authorization header) of every API request."""
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                owner.requests.append(self.path)
                path = urllib.parse.urlsplit(self.path).path
                if path.startswith("/dashboard/") and (owner.vendor or not path.startswith("/dashboard/vendor/")):
                    found = dashboard_file(path.removeprefix("/dashboard/"))
                    if found is not None:
                        return self.reply(200, found[0], found[1])
                elif path in owner.answers:
                    owner.authorization.append((path, self.headers.get("Authorization")))
                    if owner.token and self.headers.get("Authorization") != f"Bearer {owner.token}":
                        return self.reply(401, b'{"error": "token"}', "application/json",
                                          {"WWW-Authenticate": 'Bearer realm="ferry-worker"'})
                    return self.reply(200, json.dumps(owner.answers[path]).encode(), "application/json")
                self.reply(404, b'{"error": "not found"}', "application/json")

            def reply(self, status: int, body: bytes, kind: str, headers: dict[str, str] | None = None) -> None:
                self.send_response(status)
                for name, value in (headers or {}).items():
                    self.send_header(name, value)
                self.send_header("Content-Type", kind)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]

    def __enter__(self) -> "CannedApi":
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def api(self, selected: str) -> Api:
        a = self.answers
        detail = a.get(f"/devices/{selected}")
        metrics = detail.get("metrics", []) if isinstance(detail, dict) else []
        return Api(a.get("/accounting"), a["/devices"], a.get("/alerts"), selected, detail,
                   {m: a.get(f"/devices/{selected}/series/{m}") for m in metrics}, a.get("/pipeline"))


@pytest.fixture
def vendored() -> None:
    if dashboard_file("vendor/uPlot.iife.min.js") is None:
        pytest.fail("the chart library is not vendored: run `make install` (ferry/npm_vendor.py)", pytrace=False)


@pytest.mark.integration
def test_renders_every_number_of_the_full_api(tmp_path: Path, vendored: None) -> None:
    with CannedApi(canned_api(int(time.time() * 1000))) as served:
        page = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#dev-02", tmp_path))
        checked = assert_page_matches(page, served.api("dev-02"))
    assert checked >= 9 + 3 * len(ROW_FIELDS) + 3 * len(ALERT_FIELDS) + 8
    assert "temp_c" in page.text and "chart library not installed" not in page.text
    assert page.rows["dev-02"]["state"].attrs["class"] == "state state-warning"
    assert page.rows["dev-03"]["state"].attrs["class"] == "state state-offline"
    assert "boot 4: 100–101, boot 4: 500–501" in page.text  # open gaps in the device panel
    # The pipeline panel: every figure of /pipeline checked above; what is flagged and said in words.
    assert ("pipeline", "gw-north") not in page.pipeline and len(page.pipeline) >= 4 + 2 + 2 + 1
    assert page.pipeline[("gateway", "http://gw-north:9883/metrics")]["kafka_connected"].value == "down"
    assert page.pipeline[("gateway", "http://gw-north:9883/metrics")]["free_disk_bytes"].value == "12.3 GB"
    assert page.pipeline[("gateway", "http://gw-south:9883/metrics")]["up"].value == "down: no answer within 2 s"
    assert "incomplete: a gateway or worker did not answer" in page.text
    latency = page.pipeline[("latency", "fleet")]
    assert (latency["p95_s"].value, latency["readings"].value) == ("1.88 s", "13,002")
    # A chart of many windows spans them exactly (the first start to the last).
    windows = served.answers["/devices/dev-02/series/temp_c"]["1m"]
    assert page.chart_ranges["temp_c"] == (windows[0]["start_ms"] / 1000, windows[-1]["start_ms"] / 1000)
    # No request left the page's own origin (the canned server saw them all; a CDN would not show here).
    assert any(r.startswith("/dashboard/vendor/uPlot.iife.min.js") for r in served.requests)


@pytest.mark.integration
def test_shows_a_dash_for_what_an_older_api_lacks(tmp_path: Path, vendored: None) -> None:
    with CannedApi(canned_api(int(time.time() * 1000), with_health=False)) as served:
        page = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html", tmp_path))
        assert_page_matches(page, served.api("dev-01"))  # the first device is selected by default
    for key in ("offline", "alerts"):
        assert page.totals[key].value == NONE
    assert {page.rows[d]["state"].value for d in page.rows} == {NONE}
    assert "this worker serves no /alerts yet" in page.text
    assert "this worker serves no /pipeline yet" in page.text
    assert {page.pipeline[("path", stage)]["count"].value for stage in ("devices", "gateway", "kafka", "worker")} \
        == {NONE}


@pytest.mark.integration
def test_a_chart_of_one_point_spans_minutes_not_years(tmp_path: Path, vendored: None) -> None:
    """uPlot pads an empty time range (one window, seen 30 s into a demo) to years; the page gives
    it a window either side."""
    now_ms = int(time.time() * 1000)
    answers = canned_api(now_ms)
    for metric in ("rh_pct", "temp_c"):
        series = answers[f"/devices/dev-02/series/{metric}"]
        series["1m"] = series["1m"][-1:]  # one open window
        if metric == "rh_pct":  # two windows at the same start: no range either
            series["1m"] = series["1m"] * 2
    point_s = answers["/devices/dev-02/series/temp_c"]["1m"][0]["start_ms"] / 1000
    with CannedApi(answers) as served:
        page = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#dev-02", tmp_path))
        assert_page_matches(page, served.api("dev-02"))
    assert set(page.chart_ranges) == {"rh_pct", "temp_c"}, "the charts did not report their time range"
    for metric, (low, high) in page.chart_ranges.items():
        assert low < point_s < high and high - low <= 600, f"{metric}: x from {low} to {high}, the point at {point_s}"


@pytest.mark.integration
def test_without_the_chart_library_numbers_still_render(tmp_path: Path) -> None:
    with CannedApi(canned_api(int(time.time() * 1000)), vendor=False) as served:
        page = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#dev-02", tmp_path))
        assert_page_matches(page, served.api("dev-02"))
    assert page.text.count("chart library not installed: run make install") == 2  # rh_pct, temp_c


@pytest.mark.integration
def test_a_token_in_the_fragment_is_sent_with_every_api_request(tmp_path: Path, vendored: None) -> None:
    token = "dash-board_token.42"
    with CannedApi(canned_api(int(time.time() * 1000)), token=token) as served:
        page = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#token={token}", tmp_path))
        # The fragment held the token, not a device: the first device is selected.
        assert_page_matches(page, served.api("dev-01"))
    assert served.authorization and {h for _, h in served.authorization} == {f"Bearer {token}"}, \
        served.authorization
    assert not any(token in r for r in served.requests)  # a fragment never reaches the server


@pytest.mark.integration
def test_without_the_token_the_page_asks_for_it(tmp_path: Path) -> None:
    with CannedApi(canned_api(int(time.time() * 1000)), token="needed-token") as served:
        dom = render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#dev-02", tmp_path)
        asked_without = {h for _, h in served.authorization}
        served.authorization.clear()
        refused = Page.parse(render_dom(f"http://127.0.0.1:{served.port}/dashboard/index.html#token=wrong",
                                        tmp_path))
    page = Page.parse(dom)
    assert page.state == "auth" and "API token needed" in page.text, page.text
    assert re.search(r'<form id="token-form"[^>]*>', dom) and not re.search(r'<form id="token-form"[^>]*hidden', dom)
    assert {k: h.value for k, h in page.totals.items()} == dict.fromkeys(TOTALS, NONE)  # no numbers shown
    assert asked_without == {None}
    assert {h for _, h in served.authorization} == {"Bearer wrong"}
    assert refused.state == "auth" and "token refused" in refused.text, refused.text


# ---- the real worker --------------------------------------------------------------------------

SAMPLE_S = 10
SAMPLES = 36  # six minutes of readings: several 1-minute windows close


def fleet_messages(t0_ms: int) -> list[tuple[str, bytes]]:
    """Four devices' records as the bridge receives them: a duplicate, a gap, device-side loss, a spike,
    a weak battery, a weak signal and a last will."""
    def telemetry(dev: str, seq: int, temp: float, bat: int, rssi: int) -> tuple[str, bytes]:
        reading = Reading(dev, 1, seq, t0_ms + seq * SAMPLE_S * 1000, True,
                          {"temp_c": round(temp, 2), "rh_pct": round(45 + 3 * math.cos(seq / 4), 2)}, bat, rssi)
        return f"ferry/site-1/{dev}/telemetry", encode_reading(reading)

    def status(dev: str, state: str, dropped: int = 0) -> tuple[str, bytes]:
        body = {"v": 1, "dev": dev, "state": state, "boot": 1}
        if state == "online":
            body.update(fw="0.1.0", reset="power_on", ts=t0_ms, sync=True, outbox={"queued": 0, "dropped": dropped})
        return f"ferry/site-1/{dev}/status", json.dumps(body).encode()

    messages = [status(d, "online") for d in ("dev-01", "dev-02", "dev-04")] + [status("dev-03", "online", 3)]
    for seq in range(SAMPLES):
        wave = 21 + 0.4 * math.sin(seq / 3) + 0.05 * ((seq * 7) % 5)
        messages.append(telemetry("dev-01", seq, wave, 3920, -55))
        if seq == 5:
            messages.append(telemetry("dev-01", seq, wave, 3920, -55))  # a duplicate
        if seq not in (12, 13):  # a gap of two
            messages.append(telemetry("dev-02", seq, wave + (12 if seq == 30 else 0), 3850, -85))
        messages.append(telemetry("dev-03", seq, wave - 2, 3300, -63))
        if seq < 24:
            messages.append(telemetry("dev-04", seq, wave + 1, 3700, -70))
    messages.append(status("dev-04", "offline"))
    return messages


def snapshot(port: int, selected: str) -> Api:
    detail = get_json(port, f"/devices/{selected}")
    metrics = detail.get("metrics", []) if isinstance(detail, dict) else []
    return Api(get_json(port, "/accounting"), get_json(port, "/devices") or {}, get_json(port, "/alerts?limit=50"),
               selected, detail, {m: get_json(port, f"/devices/{selected}/series/{m}") for m in metrics})


@pytest.mark.integration
def test_dashboard_of_a_real_worker(kafka, tmp_path: Path, vendored: None) -> None:
    topics = create_topics(kafka, "dash")
    now_ms = int(time.time() * 1000)
    t0_ms = now_ms - now_ms % 60_000 - SAMPLES * SAMPLE_S * 1000
    produce(kafka, topics.naming, fleet_messages(t0_ms))
    # Windows close as soon as event time passes them; the devices, silent once their records are
    # in, stay online for an hour (else the silence check takes them offline during the test).
    worker, port = worker_process(kafka, topics, tmp_path, allowed_lateness_s="0",
                                  offline_after_intervals=str(3600 // SAMPLE_S))
    with worker:
        # dev-01 all, dev-02 all but the gap, dev-03 all, dev-04 the first 24
        expected = {"received": SAMPLES + (SAMPLES - 2) + SAMPLES + 24, "duplicates": 1, "gaps": 2,
                    "lost_at_device": 3, "invalid": 0, "late": 0, "devices": 4}
        accounting = wait_for(lambda: get_json(port, "/accounting"),
                              lambda a: isinstance(a, dict) and {k: a.get(k) for k in expected} == expected, worker)
        assert {k: accounting.get(k) for k in expected} == expected, worker.log_tail()
        series = get_json(port, "/devices/dev-02/series/temp_c")
        assert sum(w["closed"] for w in series["1m"]) >= 4, series
        assert get_status(port, "/") == 200  # the redirect to the page, followed
        assert get_status(port, "/dashboard/vendor/uPlot.iife.min.js") == 200
        assert get_status(port, "/dashboard/..%2Fweb.py") == 404

        url = f"http://127.0.0.1:{port}/dashboard/index.html#dev-02"
        for _ in range(3):  # health may change while the page renders (a device going silent): retry
            before = snapshot(port, "dev-02")
            page = Page.parse(render_dom(url, tmp_path))
            if snapshot(port, "dev-02") == before:
                break
        else:
            pytest.fail("the API kept changing while the page rendered")
        assert_page_matches(page, before)
        assert page.totals["received"].value == f"{expected['received']:,}"

        png = tmp_path / "dashboard.png"
        screenshot(url, png, tmp_path)
        assert worker.stop() == 0, worker.log_tail()
    data = png.read_bytes()
    assert png_size(data) == (1400, 1000)
    assert len(data) > 30_000, f"the screenshot is only {len(data)} bytes: a blank page?"
    if os.environ.get("FERRY_SCREENSHOT"):
        target = Path(os.environ["FERRY_SCREENSHOT"])
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(png, target)


# ---- the pipeline panel of a real worker scraping a real gateway -------------------------------

PIPELINE_READINGS = 12


def gateway_figures(metrics_port: int) -> GatewayFigures:
    """The gateway's figures, read from its metrics endpoint as Prometheus would."""
    with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as response:
        return GatewayFigures.from_families(parse_exposition(response.read().decode()))


@pytest.mark.integration
def test_pipeline_panel_shows_what_the_gateways_metrics_say(kafka, tmp_path: Path, vendored: None) -> None:
    """device → gateway (its Kafka bridge) → Kafka → worker, all real; the panel's numbers are the
    gateway's metrics endpoint's, and the path's counts those of each stage."""
    topics = create_topics(kafka, "pipe")
    names = topics.naming
    metrics_port = free_port()
    gateway = GatewayProcess(tmp_path / "gw", metrics_port=metrics_port, config_text=(
        f'[bridge]\nkafka = "{kafka.bootstrap_servers}"\ngateway_id = "gw-pipe"\n'
        f'telemetry_topic = "{names.telemetry_topic}"\nstatus_topic = "{names.status_topic}"\n'))
    metrics_url = f"http://127.0.0.1:{metrics_port}/metrics"
    dead_url = f"http://127.0.0.1:{free_port()}/metrics"  # nothing listens: shown down, with the error
    now_ms = int(time.time() * 1000)
    with gateway:
        device = TestClient(gateway.port, "dev-p1")
        try:
            infos = [device.client.publish(f"ferry/site-1/dev-p1/telemetry", encode_reading(
                Reading("dev-p1", 1, seq, now_ms - (PIPELINE_READINGS - seq) * 1000, True, {"temp_c": 20.5})), 1)
                for seq in range(PIPELINE_READINGS)]
            for info in infos:
                info.wait_for_publish(10)
            worker, port = worker_process(kafka, topics, tmp_path, gateways=f"{metrics_url},{dead_url}",
                                          gateway_scrape_interval_s="0.5", gateway_scrape_timeout_s="1")
            with worker:
                def settled(view: object) -> bool:
                    if not isinstance(view, dict) or not view["gateways"][0]["up"]:
                        return False
                    figures = view["gateways"][0]["figures"]
                    counts = {s["stage"]: s["count"] for s in view["path"]}
                    return (figures["acked"] == PIPELINE_READINGS and counts["worker"] == PIPELINE_READINGS
                            and not view["gateways"][1]["up"] and view["gateways"][1]["error"] is not None)
                view = wait_for(lambda: get_json(port, "/pipeline"), settled, worker)
                assert settled(view), view
                url = f"http://127.0.0.1:{port}/dashboard/index.html#dev-p1"
                for _ in range(3):  # a scrape may land while the page renders: retry
                    before = get_json(port, "/pipeline")
                    page = Page.parse(render_dom(url, tmp_path))
                    after = get_json(port, "/pipeline")
                    if strip_volatile(after) == strip_volatile(before):
                        break
                else:
                    pytest.fail("the pipeline kept changing while the page rendered")
                metrics = gateway_figures(metrics_port)
                assert worker.stop() == 0, worker.log_tail()
        finally:
            device.close()
    assert page.state == "ready", page.text
    problems, checked = compare_pipeline(page, before)
    # Free disk moves with every other writer on this machine: the page shows a recent scrape.
    problems = [p for p in problems if ".free_disk_bytes:" not in p]
    assert not problems, "the pipeline panel differs from /pipeline:\n" + "\n".join(problems)
    assert checked >= 4 * 2 + 2 * (1 + len(GATEWAY_FIGURES))
    north = page.pipeline[("gateway", metrics_url)]
    # The panel against the gateway's own metrics endpoint, figure by figure.
    for name in GATEWAY_FIGURES:
        expected = getattr(metrics, name)
        if name == "free_disk_bytes":
            shown = float(north[name].attrs["data-value"])
            assert abs(shown - expected) <= 0.05 * expected, f"free disk {shown} on the page, {expected} now"
        else:
            assert pipeline_mismatch(north[name], expected) is None, (name, north[name], expected)
    assert (metrics.acked, metrics.unacked, metrics.spooled, metrics.kafka_connected) == \
        (PIPELINE_READINGS, 0, 0, True)
    assert metrics.connections == 1 and metrics.received == PIPELINE_READINGS
    # The path: each stage's count where it comes from.
    path = {s["stage"]: s for s in before["path"]}
    assert path["gateway"]["count"] == metrics.received and path["kafka"]["count"] == metrics.acked
    assert path["devices"]["count"] == path["worker"]["count"] == PIPELINE_READINGS
    assert page.pipeline[("path", "worker")]["count"].value == str(PIPELINE_READINGS)
    assert page.pipeline[("gateway", dead_url)]["up"].value.startswith("down: ClientConnectorError")
    lag = before["workers"][0]["lag"]
    assert lag and all(entry["lag"] == 0 for entry in lag), lag  # every record counted


def strip_volatile(view: object) -> object:
    """`/pipeline` without what changes with every scrape (its time, the free disk)."""
    if not isinstance(view, dict):
        return view
    gateways = [{**g, "scraped_at_ms": None,
                 "figures": g["figures"] and {**g["figures"], "free_disk_bytes": None}} for g in view["gateways"]]
    return {**view, "gateways": gateways}


# ---- no external requests ---------------------------------------------------------------------

URL = re.compile(r"(?:https?:)?//[A-Za-z0-9.-]+")
LICENSE_COMMENT = re.compile(r"^\s*/\*!?.*?\*/", re.S)


def served_files() -> Iterator[tuple[str, str]]:
    names = sorted(p.name for p in DASHBOARD_DIR.iterdir() if p.is_file())
    names += sorted(f"vendor/{p.name}" for p in (DASHBOARD_DIR / "vendor").glob("*") if p.is_file())
    for name in names:
        found = dashboard_file(name)
        if found is not None and not found[1].startswith("image/png"):
            yield name, found[0].decode("utf-8")


def test_the_page_requests_nothing_outside_the_worker() -> None:
    files = dict(served_files())
    assert {"index.html", "dashboard.js", "dashboard.css"} <= set(files)
    for name, text in files.items():
        if name.startswith("vendor/"):
            text = LICENSE_COMMENT.sub("", text, count=1)  # the library's banner names its home page
        if name.endswith(".js"):  # comments are not requests
            text = re.sub(r"^\s*(//|/\*|\*).*$", "", text, flags=re.M)
        found = [m.group(0) for m in URL.finditer(text)]
        assert not found, f"{name} refers to {found}"
    index = files["index.html"]
    for ref in re.findall(r'(?:src|href)="([^"]*)"', index):
        assert ref == "data:," or not urllib.parse.urlsplit(ref).netloc and not ref.startswith("/"), ref
    # The script asks only its own origin: every fetch is of a path starting with "/".
    for call in re.findall(r"getJSON\(([^)]*)\)", files["dashboard.js"]):
        assert call.startswith(("`/", '"/', "url")), call
