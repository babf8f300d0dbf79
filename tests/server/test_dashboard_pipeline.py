"""The dashboard's pipeline panel in headless Chromium, against a real `ferry worker` scraping a real
gateway's metrics endpoint (the harness: tests/server/dashboard_support.py)."""

from __future__ import annotations

import time
import urllib.request
from pathlib import Path

import pytest

from ferry.contract import Reading, encode_reading
from ferry.gateway.process import GatewayProcess
from ferry.process import free_port
from ferry.server.pipeline import GatewayFigures, parse_exposition
from tests.gateway.paho_client import TestClient
from tests.server.dashboard_support import (
    GATEWAY_FIGURES, Page, compare_pipeline, pipeline_mismatch, render_dom,
)
from tests.server.worker_support import create_topics, get_json, wait_for, worker_process

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
            infos = [device.client.publish("ferry/site-1/dev-p1/telemetry", encode_reading(
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
