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
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.contract import Reading, encode_reading
from ferry.server.web import DASHBOARD_DIR, dashboard_file
from tests.server.dashboard_support import (
    ALERT_FIELDS, NONE, ROW_FIELDS, TOTALS, Api, CannedApi, Page, assert_page_matches, canned_api, png_size,
    render_dom, screenshot,
)
from tests.server.worker_support import create_topics, get_json, get_status, produce, wait_for, worker_process


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
    assert page.panel["dev-02"]["status.ota.state"].value == "trial"  # the update state (docs/ota.md)
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
