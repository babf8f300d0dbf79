"""The dashboard's browser tests' harness: Chromium rendering the page, the parser of its `data-*`
hooks, the comparison of every hook with the API's answers, canned API answers and the server
serving them (used by test_dashboard_browser.py and test_dashboard_pipeline.py)."""

from __future__ import annotations

import json
import math
import os
import shutil
import signal
import struct
import subprocess
import tempfile
import threading
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from html.parser import HTMLParser
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ferry.server.web import dashboard_file

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
              "status": {"state": "online", "boot": 4, "fw": "0.1.0", "reset": "brownout", "outbox_dropped": 2,
                         "ota": {"slot": "a", "state": "trial", "ver": "0.2.0", "last": "installed 0.2.0"}},
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
