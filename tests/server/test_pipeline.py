"""The pipeline view's parts without Faust: the exposition parser, the gateway scraper against a
local HTTP server, the `[server]` keys, and the JSON `/pipeline` builds (server/pipeline.py)."""

from __future__ import annotations

import asyncio
import json
import math
import socket
from pathlib import Path

import aiohttp
import pytest
from aiohttp import web

from ferry.prometheus import Metric, prometheus_text
from ferry.server.config import ConfigError, ServerConfig, load_config
from ferry.server.latency import LatencyHistogram
from ferry.server.pipeline import (
    ExpositionError, GatewayFigures, GatewayScrape, GatewayScraper, ask_peers, local_part, parse_exposition,
    pipeline_view,
)

GATEWAY_TEXT = prometheus_text([
    Metric("ferry_connections", "gauge", "Open connections.", (((), 4.0),)),
    Metric("ferry_client_connections", "gauge", "Open client connections.", (((), 3.0),)),
    Metric("ferry_messages_received_total", "counter", "PUBLISH packets.",
           (((("qos", "0"),), 2.0), ((("qos", "1"),), 40.0), ((("qos", "2"),), 0.0))),
    Metric("ferry_bridge_unacked_records", "gauge", "Not acknowledged.", (((), 12.0),)),
    Metric("ferry_bridge_spool_messages", "gauge", "Spooled.", (((), 10.0),)),
    Metric("ferry_bridge_spool_oldest_age_seconds", "gauge", "Oldest.", (((), 4.25),)),
    Metric("ferry_bridge_kafka_connected", "gauge", "Up.", (((), 0.0),)),
    Metric("ferry_bridge_acked_total", "counter", "Acked.", (((), 30.0),)),
    Metric("ferry_bridge_deadlettered_total", "counter", "Dead-lettered.", (((), 1.0),)),
    Metric("ferry_bridge_rejected_total", "counter", "Rejected.",
           (((("reason", "too_large"),), 2.0), ((("reason", "invalid"),), 1.0))),
    Metric("ferry_store_free_bytes", "gauge", "Free.", (((), 123456789.0),)),
    Metric("ferry_store_disk_low", "gauge", "Low.", (((), 0.0),)),
])
FIGURES = GatewayFigures(connections=3, received=42, unacked=12, spooled=10, oldest_age_s=4.25,
                         kafka_connected=False, acked=30, deadlettered=1, rejected=3,
                         free_disk_bytes=123456789, disk_low=False)


# ---- the parser -------------------------------------------------------------------------------

def test_the_gateways_own_text_parses_into_its_figures() -> None:
    families = parse_exposition(GATEWAY_TEXT)
    assert families["ferry_messages_received_total"].kind == "counter"
    assert families["ferry_messages_received_total"].value(qos="1") == 40.0
    assert families["ferry_messages_received_total"].value() is None  # no unlabelled sample
    assert GatewayFigures.from_families(families) == FIGURES


def test_labels_escapes_special_values_and_timestamps() -> None:
    text = ('# a comment\n# HELP x_total some help\n# TYPE x_total counter\n'
            'x_total{path="a\\"b\\\\c\\nd",code="200",} 1.5e3 1732480000000\n'
            'y NaN\nz +Inf\nw -Inf\n\n')
    families = parse_exposition(text)
    assert families["x_total"].value(path='a"b\\c\nd', code="200") == 1500.0
    assert math.isnan(families["y"].value()) and families["z"].value() == math.inf
    assert families["w"].value() == -math.inf and families["y"].kind == "unknown"
    # An older gateway without the bridge: those figures are unknown, not 0.
    partial = GatewayFigures.from_families(parse_exposition("ferry_client_connections 2\n"))
    assert partial.connections == 2 and partial.unacked is None and partial.kafka_connected is None


@pytest.mark.parametrize(("text", "says"), [
    ("ferry_connections 2\n<html>oops</html>\n", "invalid metric name"),
    ("ferry_connections two\n", "could not convert"),
    ('x{a="1" b="2"} 1\n', "Invalid labels"),
    ('x{a="1",a="2"} 1\n', "Invalid labels"),
    ("x 1\nx 2\n", "sample x given twice"),
    ('x{a="1"} 1\nx{a="1"} 2\n', "given twice"),
    ("# TYPE x countr\nx 1\n", "Invalid metric type"),
    ("9x 1\n", "invalid metric name"),
])
def test_anything_else_is_refused_saying_why(text: str, says: str) -> None:
    with pytest.raises(ExpositionError, match=says):
        parse_exposition(text)


# ---- the scraper ------------------------------------------------------------------------------

def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_scrapes_each_gateway_and_shows_a_dead_one_down_with_the_error() -> None:
    async def main() -> None:
        async def metrics(request: web.Request) -> web.Response:
            return web.Response(text=GATEWAY_TEXT)

        release = asyncio.Event()

        async def slow(request: web.Request) -> web.Response:
            await release.wait()
            return web.Response(text=GATEWAY_TEXT)

        async def broken(request: web.Request) -> web.Response:
            return web.Response(text="ferry_connections 1\nnot prometheus\n")

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        app.router.add_get("/slow", slow)
        app.router.add_get("/broken", broken)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        port = runner.addresses[0][1]
        base = f"http://127.0.0.1:{port}"
        urls = [f"{base}/metrics", f"{base}/slow", f"{base}/broken", f"{base}/missing",
                f"http://127.0.0.1:{closed_port()}/metrics"]
        scraper = GatewayScraper(urls, interval_s=60, timeout_s=0.5, clock=lambda: 1_700_000_000.0)
        try:
            assert [s.scraped_at_ms for s in scraper.latest.values()] == [None] * 5  # before the first scrape
            started = asyncio.get_running_loop().time()
            async with aiohttp.ClientSession() as session:
                await scraper.scrape_all(session)
            assert asyncio.get_running_loop().time() - started < 3  # concurrent, each bounded
        finally:
            release.set()
            await runner.cleanup()
        good, slow_one, garbage, missing, dead = (scraper.latest[u] for u in urls)
        assert good == GatewayScrape(urls[0], True, 1_700_000_000_000, None, FIGURES)
        assert not slow_one.up and slow_one.error == "no answer within 0.5 s" and slow_one.figures is None
        assert not garbage.up and garbage.error.startswith("ExpositionError: could not convert string to float")
        assert not missing.up and missing.error == "ExpositionError: HTTP 404"
        assert not dead.up and dead.error.startswith("ClientConnectorError") and dead.scraped_at_ms is not None

    asyncio.run(main())


def test_the_scrape_task_runs_until_cancelled_and_scrapes_at_once() -> None:
    async def main() -> None:
        hits = []

        async def metrics(request: web.Request) -> web.Response:
            hits.append(asyncio.get_running_loop().time())
            return web.Response(text=GATEWAY_TEXT)

        app = web.Application()
        app.router.add_get("/metrics", metrics)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        url = f"http://127.0.0.1:{runner.addresses[0][1]}/metrics"
        scraper = GatewayScraper([url], interval_s=0.2, timeout_s=1)
        task = asyncio.ensure_future(scraper.run())
        try:
            while len(hits) < 3:
                await asyncio.sleep(0.05)
            assert scraper.latest[url].up
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            await runner.cleanup()
        assert 0.15 < hits[2] - hits[1] < 1.0

    asyncio.run(main())


# ---- the configuration ------------------------------------------------------------------------

def test_gateways_come_from_the_file_or_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "worker.toml"
    path.write_text('[server]\nbroker = "k:1"\ngateways = ["http://10.0.0.7:9883/metrics", '
                    '"http://gw-2.lan:9883/metrics"]\ngateway_scrape_interval_s = 2\n')
    config = load_config({}, path)
    assert config.gateways == ("http://10.0.0.7:9883/metrics", "http://gw-2.lan:9883/metrics")
    assert (config.gateway_scrape_interval_s, config.gateway_scrape_timeout_s) == (2.0, 2.0)
    env = {"FERRY_SERVER_BROKER": "k:1", "FERRY_SERVER_GATEWAYS": "http://a:1/metrics, http://b:2/metrics"}
    assert load_config(env).gateways == ("http://a:1/metrics", "http://b:2/metrics")
    assert ServerConfig(broker="k:1").gateways == ()


@pytest.mark.parametrize(("toml", "message"), [
    ('gateways = "http://a:1/metrics"', None),  # a string in the file: one URL (as in the environment)
    ("gateways = [1]", "server.gateways[0]: expected a string, got 1"),
    ("gateways = 3", "server.gateways: expected a list of strings, got 3"),
    ('gateways = ["a:9883"]', "server.gateways[0]: must be a gateway's metrics URL"),
    ('gateways = ["http://a:1/metrics", "ftp://b/metrics"]', "server.gateways[1]: must be a gateway's metrics URL"),
    ('gateways = ["http://a:99999/metrics"]', "server.gateways[0]: bad port"),
    ('gateways = ["http://a:1/metrics", "http://a:1/metrics"]', "server.gateways: a URL is given twice"),
    ("gateway_scrape_timeout_s = 0", "server.gateway_scrape_timeout_s: must be positive"),
])
def test_a_bad_gateways_value_names_the_key(tmp_path: Path, toml: str, message: str | None) -> None:
    path = tmp_path / "worker.toml"
    path.write_text(f'[server]\nbroker = "k:1"\n{toml}\n')
    if message is None:
        assert load_config({}, path).gateways == ("http://a:1/metrics",)
        return
    with pytest.raises(ConfigError, match="^" + message.replace("[", r"\[").replace("]", r"\]")):
        load_config({}, path)


# ---- the view ---------------------------------------------------------------------------------

class FakeAccount:
    def __init__(self, received: int, duplicates: int, gaps: int, invalid: int = 0) -> None:
        self.received, self.duplicates, self.gaps, self.invalid, self.late = received, duplicates, gaps, invalid, 0


class FakeStatus:
    def __init__(self, lost: int) -> None:
        self.lost_at_device, self.invalid = lost, 0


class FakeState:
    def __init__(self, account: FakeAccount, status: FakeStatus) -> None:
        self.account, self.status = account, status


class FakeWorker:
    """What `local_part` asks of a `WorkerState`."""

    def __init__(self, ready: bool = True, latencies_s: tuple[float, ...] = ()) -> None:
        self.ready = ready
        self.latency = LatencyHistogram()
        for seconds in latencies_s:
            self.latency.observe(seconds)
        self.states = {"dev-1": FakeState(FakeAccount(100, 2, 3), FakeStatus(1)),
                       "dev-2": FakeState(FakeAccount(50, 0, 0, invalid=1), FakeStatus(0))}

    def consumer_lag(self, end_offsets: dict) -> dict[tuple[str, int], int]:
        return {("t.telemetry", 1): end_offsets.get("tp1", 0) - 90, ("t.status", 0): 0}

    def local_devices(self) -> list[str]:
        return sorted(self.states)

    def state(self, device: str) -> FakeState:
        return self.states[device]


def test_the_view_adds_up_gateways_and_workers_along_the_path() -> None:
    mine = local_part("http://w1:6066", FakeWorker(), {"tp1": 97})
    assert mine == {"url": "http://w1:6066", "ready": True, "error": None,
                    "lag": [{"topic": "t.status", "partition": 0, "lag": 0},
                            {"topic": "t.telemetry", "partition": 1, "lag": 7}],
                    "counted": {"received": 150, "duplicates": 2, "gaps": 3, "lost_at_device": 1, "invalid": 1,
                                "devices": 2},
                    "latency": LatencyHistogram().to_json()}
    recovering = local_part("http://w2:6066", FakeWorker(ready=False), {"tp1": 95})
    assert recovering["counted"] is None and recovering["lag"][1]["lag"] == 5  # its lag is shown all the same
    gateways = [GatewayScrape("http://g1/metrics", True, 1, None, FIGURES),
                GatewayScrape("http://g2/metrics", True, 1, None, FIGURES),
                GatewayScrape("http://g3/metrics", False, 1, "no answer within 2 s")]
    view = pipeline_view(gateways, [mine, recovering])
    assert [g["up"] for g in view["gateways"]] == [True, True, False]
    assert view["gateways"][0]["figures"]["free_disk_bytes"] == 123456789
    assert view["gateways"][2] == {"url": "http://g3/metrics", "up": False, "scraped_at_ms": 1,
                                   "error": "no answer within 2 s", "figures": None}
    stages = {s["stage"]: s for s in view["path"]}
    assert (stages["devices"]["count"], stages["devices"]["lost"]) == (153, 1)  # received + gaps
    assert (stages["gateway"]["count"], stages["gateway"]["waiting"]) == (84, 24)  # two gateways up
    assert (stages["kafka"]["count"], stages["kafka"]["waiting"]) == (60, 12)  # acked; lag of both workers
    assert (stages["worker"]["count"], stages["worker"]["duplicates"]) == (150, 2)
    assert view["complete"] is False  # a gateway down, a worker recovering
    assert view["latency"] == {"readings": 0, "p50_s": None, "p95_s": None, "p99_s": None}
    empty = pipeline_view([], [])
    assert [s["count"] for s in empty["path"]] == [None] * 4 and empty["complete"] is True
    assert empty["latency"] is None


def test_the_other_workers_parts_are_asked_and_one_not_answering_is_listed_with_its_error() -> None:
    part = local_part("http://w2:6066", FakeWorker(), {"tp1": 91})
    seen_headers = []

    async def main() -> list[dict]:
        async def pipeline(request: web.Request) -> web.Response:
            seen_headers.append((request.query.get("scope"), request.headers.get("Authorization")))
            return web.json_response({"workers": [part]})

        app = web.Application()
        app.router.add_get("/pipeline", pipeline)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", 0).start()
        peers = [f"http://127.0.0.1:{runner.addresses[0][1]}", f"http://127.0.0.1:{closed_port()}"]
        try:
            return await ask_peers(peers, {"Authorization": "Bearer t0ken"})
        finally:
            await runner.cleanup()

    good, dead = asyncio.run(main())
    assert good == part and seen_headers == [("local", "Bearer t0ken")]
    assert dead["error"].startswith("ClientConnectorError") and dead["lag"] is None and dead["counted"] is None
    view = pipeline_view([], [local_part("http://w1:6066", FakeWorker(), {"tp1": 90}), good, dead])
    assert {s["stage"]: s.get("waiting") for s in view["path"]}["kafka"] == 1  # w1 0 + w2 1; w3 unknown
    assert view["complete"] is False


def test_the_latency_percentiles_are_over_every_worker_that_answered() -> None:
    """Each worker's histogram travels in its part (JSON: +Inf as null) and the view adds them up."""
    fast = local_part("http://w1:6066", FakeWorker(latencies_s=(0.03,) * 50 + (0.3,) * 40), {})
    slow = local_part("http://w2:6066", FakeWorker(latencies_s=(3.0,) * 9 + (700.0,)), {})
    assert json.loads(json.dumps(slow))["latency"]["buckets"][-1] == [None, 10]
    dead = {"url": "http://w3:6066", "ready": None, "error": "down", "lag": None, "counted": None, "latency": None}
    older = {"url": "http://w4:6066", "ready": True, "error": None, "lag": [], "counted": None}
    view = pipeline_view([], [json.loads(json.dumps(fast)), json.loads(json.dumps(slow)), dead, older])
    latency = view["latency"]
    assert latency["readings"] == 100
    assert latency["p50_s"] == pytest.approx(0.05)  # linear within the bucket, as histogram_quantile
    assert 2.0 < latency["p95_s"] < 3.0 and latency["p99_s"] == pytest.approx(3.0)  # 9 at 3 s: the (2, 3] bucket
    alone = pipeline_view([], [slow])["latency"]
    assert alone["readings"] == 10 and alone["p50_s"] > 2.0
