"""The pipeline view (`GET /pipeline`, docs/server.md): where data is between device and worker.

The worker scrapes the metrics endpoints of the gateways its config names (`server.gateways`)
every `gateway_scrape_interval_s`, each scrape bounded by `gateway_scrape_timeout_s`, in a task
of its own: `/pipeline` answers from the latest scrapes and never waits for a gateway. A gateway
that does not answer (or answers something that is not Prometheus text) is shown down with the
error, and its last good figures are dropped rather than shown as current.

Three parts, all pure but the scraper and the view:
* `parse_exposition`: the Prometheus text the gateway serves (`ferry.prometheus.prometheus_text`
  writes it), read by prometheus_client's parser, by sample name;
* `GatewayFigures`: the figures one gateway's metrics give;
* `pipeline_view`: the JSON, from the scrapes, this worker's part and the other workers' parts.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

import aiohttp
from prometheus_client.parser import text_string_to_metric_families

from ferry.prometheus import Labels
from ferry.server.latency import buckets_from_json, latency_summary

if TYPE_CHECKING:
    import faust

    from ferry.server.config import ServerConfig
    from ferry.server.worker_state import WorkerState

log = logging.getLogger(__name__)

PEER_TIMEOUT_S = 5.0
MAX_BODY_BYTES = 4 * 1024 * 1024
"""A metrics page larger than this is refused (a gateway's is ~15 KB)."""


# ---------------------------------------------------------------------- the exposition format

class ExpositionError(ValueError):
    """Text that is not the Prometheus text format, or names one sample twice."""


@dataclass(frozen=True, slots=True)
class Family:
    """The samples of one sample name, with its metric's `# TYPE` (`unknown` when none was given)."""

    name: str
    kind: str
    samples: tuple[tuple[Labels, float], ...]

    def value(self, **labels: str) -> float | None:
        """The sample with exactly these labels (none: the unlabelled one), or None."""
        wanted = tuple(sorted(labels.items()))
        for sample_labels, value in self.samples:
            if tuple(sorted(sample_labels)) == wanted:
                return value
        return None

    def total(self) -> float:
        """The sum of every sample (a counter split by a label, summed)."""
        return math.fsum(value for _, value in self.samples)


def parse_exposition(text: str) -> dict[str, Family]:
    """Families by sample name (`ferry_bridge_acked_total`, not the metric's `ferry_bridge_acked`)
    from Prometheus text, read by prometheus_client's own parser; raises `ExpositionError` for text
    it refuses and for a sample (name and labels) given twice, which it would take as two."""
    kinds: dict[str, str] = {}
    samples: dict[str, dict[Labels, float]] = {}
    try:
        for metric in text_string_to_metric_families(text):
            for sample in metric.samples:
                family = samples.setdefault(sample.name, {})
                labels = tuple(sorted(sample.labels.items()))
                if labels in family:
                    raise ExpositionError(f"sample {sample.name}{sample.labels or ''} given twice")
                family[labels] = float(sample.value)
                kinds.setdefault(sample.name, metric.type)
    except ExpositionError:
        raise
    except (ValueError, IndexError, KeyError) as exc:  # what its parser raises for a line it cannot read
        raise ExpositionError(str(exc) or type(exc).__name__) from None
    return {name: Family(name, kinds[name], tuple(values.items())) for name, values in samples.items()}


# ---------------------------------------------------------------------- one gateway's figures

@dataclass(frozen=True, slots=True)
class GatewayFigures:
    """What the pipeline view shows of one gateway; None where its metrics do not say (an older
    gateway, or one without its Kafka bridge). Counters count since the gateway's process started."""

    connections: int | None
    """`ferry_client_connections`: open MQTT connections of devices and operators (the bridge's own
    connection left out; `ferry_connections` counts it)."""
    received: int | None
    """`ferry_messages_received_total`, every QoS summed: PUBLISH packets received from clients."""
    unacked: int | None
    """`ferry_bridge_unacked_records`: records Kafka has not acknowledged, wherever the bridge holds them."""
    spooled: int | None
    """`ferry_bridge_spool_messages`: of those, the ones in the disk spool."""
    oldest_age_s: float | None
    """`ferry_bridge_spool_oldest_age_seconds`."""
    kafka_connected: bool | None
    """`ferry_bridge_kafka_connected`."""
    acked: int | None
    """`ferry_bridge_acked_total`: records Kafka acknowledged."""
    deadlettered: int | None
    """`ferry_bridge_deadlettered_total`: of those, records on the dead-letter topic."""
    rejected: int | None
    """`ferry_bridge_rejected_total`, every reason summed: records in the dead-letter file."""
    free_disk_bytes: int | None
    """`ferry_store_free_bytes`: free bytes on the data dir's filesystem."""
    disk_low: bool | None
    """`ferry_store_disk_low`: publishes needing the store are refused."""

    @classmethod
    def from_families(cls, families: Mapping[str, Family]) -> "GatewayFigures":
        def number(name: str, *, whole: bool = True, total: bool = False) -> Any:
            family = families.get(name)
            if family is None:
                return None
            value = family.total() if total else family.value()
            if value is None or math.isnan(value):
                return None
            return int(value) if whole else value

        def flag(name: str) -> bool | None:
            value = number(name)
            return None if value is None else value == 1

        return cls(
            connections=number("ferry_client_connections"),
            received=number("ferry_messages_received_total", total=True),
            unacked=number("ferry_bridge_unacked_records"),
            spooled=number("ferry_bridge_spool_messages"),
            oldest_age_s=number("ferry_bridge_spool_oldest_age_seconds", whole=False),
            kafka_connected=flag("ferry_bridge_kafka_connected"),
            acked=number("ferry_bridge_acked_total"),
            deadlettered=number("ferry_bridge_deadlettered_total"),
            rejected=number("ferry_bridge_rejected_total", total=True),
            free_disk_bytes=number("ferry_store_free_bytes"),
            disk_low=flag("ferry_store_disk_low"),
        )


@dataclass(frozen=True, slots=True)
class GatewayScrape:
    """The latest scrape of one gateway's metrics endpoint."""

    url: str
    up: bool
    """The last scrape got Prometheus text."""
    scraped_at_ms: int | None
    """When the last scrape ended; None before the first."""
    error: str | None = None
    """Why the last scrape failed (None when up, or before the first)."""
    figures: GatewayFigures | None = None
    """From the last scrape, only when it succeeded."""

    def to_dict(self) -> dict:
        return {"url": self.url, "up": self.up, "scraped_at_ms": self.scraped_at_ms, "error": self.error,
                "figures": asdict(self.figures) if self.figures is not None else None}


# ---------------------------------------------------------------------- the scraper

class GatewayScraper:
    """Scrapes each gateway of `urls` every `interval_s`, each bounded by `timeout_s`; keeps the latest."""

    def __init__(self, urls: Sequence[str], interval_s: float, timeout_s: float,
                 clock: Callable[[], float] = time.time) -> None:
        self.urls = tuple(urls)
        self.interval_s = interval_s
        self.timeout_s = timeout_s
        self._clock = clock
        self.latest: dict[str, GatewayScrape] = {url: GatewayScrape(url, False, None) for url in self.urls}

    async def scrape_all(self, session: aiohttp.ClientSession) -> None:
        """Scrape every gateway once, concurrently."""
        results = await asyncio.gather(*(self._scrape(session, url) for url in self.urls))
        for scrape in results:
            before = self.latest[scrape.url]
            first = before.scraped_at_ms is None
            if not scrape.up and (before.up or first):  # logged when it goes down, not at every scrape
                log.warning("gateway metrics %s: %s (shown down on /pipeline)", scrape.url, scrape.error)
            elif scrape.up and not before.up and not first:
                log.info("gateway metrics %s answer again", scrape.url)
            self.latest[scrape.url] = scrape

    async def _scrape(self, session: aiohttp.ClientSession, url: str) -> GatewayScrape:
        try:
            async with asyncio.timeout(self.timeout_s):
                async with session.get(url) as response:
                    if response.status != 200:
                        raise ExpositionError(f"HTTP {response.status}")
                    body = await response.content.read(MAX_BODY_BYTES + 1)
            if len(body) > MAX_BODY_BYTES:
                raise ExpositionError(f"more than {MAX_BODY_BYTES} bytes")
            figures = GatewayFigures.from_families(parse_exposition(body.decode("utf-8")))
        except TimeoutError:
            return self._down(url, f"no answer within {self.timeout_s:g} s")
        except (aiohttp.ClientError, OSError, UnicodeDecodeError, ExpositionError) as exc:
            return self._down(url, f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__)
        return GatewayScrape(url, True, self._now_ms(), None, figures)

    def _down(self, url: str, error: str) -> GatewayScrape:
        return GatewayScrape(url, False, self._now_ms(), error)

    def _now_ms(self) -> int:
        return int(self._clock() * 1000)

    async def run(self) -> None:
        """Scrape for ever (until cancelled), the first time at once."""
        if not self.urls:
            return
        async with aiohttp.ClientSession() as session:
            while True:
                started = time.monotonic()
                await self.scrape_all(session)
                await asyncio.sleep(max(0.0, self.interval_s - (time.monotonic() - started)))


# ---------------------------------------------------------------------- the view

COUNTED = ("received", "duplicates", "gaps", "lost_at_device", "invalid")
"""This worker's accounting totals that the path uses."""


def local_part(url: str, worker: "WorkerState", end_offsets: Mapping[Any, int]) -> dict:
    """This worker's part of the view: its lag per partition (always), its devices' totals (when ready)."""
    from ferry.server.accounting import summary

    lag = worker.consumer_lag(dict(end_offsets))
    part: dict[str, Any] = {
        "url": url, "ready": worker.ready, "error": None,
        "lag": [{"topic": topic, "partition": partition, "lag": n} for (topic, partition), n in sorted(lag.items())],
        "counted": None, "latency": worker.latency.to_json(),
    }
    if worker.ready:
        totals = dict.fromkeys(COUNTED, 0)
        for device in worker.local_devices():
            state = worker.state(device)
            numbers = summary(state.account, state.status)
            for key in COUNTED:
                totals[key] += numbers[key]
        part["counted"] = {**totals, "devices": len(worker.local_devices())}
    return part


def _sum(values: Iterable[int | None]) -> int | None:
    """The sum of the known values; None when none is known."""
    known = [v for v in values if v is not None]
    return sum(known) if known else None


def pipeline_view(gateways: Iterable[GatewayScrape], workers: Sequence[dict]) -> dict:
    """`/pipeline`: per gateway its figures and scrape status, per worker its lag and totals, the
    path device → gateway → Kafka → worker with a count (and what waits) at each stage, and the
    end-to-end latency's percentiles over every worker that answered (None when none did).

    A stage's count is None when no source of it answered; `complete` is False when a gateway
    or a worker did not (the sums then leave it out).
    """
    scrapes = list(gateways)
    up = [s.figures for s in scrapes if s.up and s.figures is not None]
    counted = [w["counted"] for w in workers if w.get("counted") is not None]
    lag = _sum(entry["lag"] for w in workers for entry in w.get("lag") or ())

    def total(key: str) -> int | None:
        return _sum(c[key] for c in counted)

    received, gaps = total("received"), total("gaps")
    path = [
        {"stage": "devices", "count": None if received is None else received + gaps,
         "lost": total("lost_at_device")},
        {"stage": "gateway", "count": _sum(f.received for f in up), "waiting": _sum(f.unacked for f in up)},
        {"stage": "kafka", "count": _sum(f.acked for f in up), "waiting": lag},
        {"stage": "worker", "count": received, "duplicates": total("duplicates"),
         "invalid": total("invalid")},
    ]
    complete = all(s.up for s in scrapes) and all(w.get("error") is None and w.get("counted") is not None
                                                 for w in workers)
    latency = latency_summary(buckets_from_json(w.get("latency")) for w in workers)
    return {"gateways": [s.to_dict() for s in scrapes], "workers": list(workers), "path": path,
            "latency": latency, "complete": complete}


# ---------------------------------------------------------------------- wiring into the worker

async def ask_peers(peers: Sequence[str], headers: Mapping[str, str]) -> list[dict]:
    """`/pipeline?scope=local` of each other worker; one that does not answer is an entry with its error."""
    if not peers:
        return []
    timeout = aiohttp.ClientTimeout(total=PEER_TIMEOUT_S)
    async with aiohttp.ClientSession(timeout=timeout, headers=dict(headers)) as session:
        async def one(peer: str) -> dict:
            try:
                async with session.get(f"{peer}/pipeline", params={"scope": "local"}) as response:
                    if response.status != 200:
                        raise aiohttp.ClientError(f"HTTP {response.status}")
                    part = await response.json()
                    return part["workers"][0]
            except (aiohttp.ClientError, asyncio.TimeoutError, KeyError, IndexError, TypeError, ValueError) as exc:
                return {"url": peer, "ready": None, "error": f"{type(exc).__name__}: {exc}", "lag": None,
                        "counted": None, "latency": None}
        return list(await asyncio.gather(*(one(p) for p in peers)))


def register_pipeline(app: "faust.App", config: "ServerConfig", worker: "WorkerState") -> GatewayScraper:
    """`GET /pipeline` (`?scope=local`: this worker's part only) and the task scraping `config.gateways`."""
    from faust.web import Request, Response, View

    from ferry.server.auth import auth_headers

    scraper = GatewayScraper(config.gateways, config.gateway_scrape_interval_s, config.gateway_scrape_timeout_s)
    me = config.canonical_url
    headers = auth_headers(config.api_token)

    if config.gateways:
        @app.task
        async def scrape_gateways() -> None:
            await scraper.run()

    @app.page("/pipeline")
    class PipelineView(View):
        """The gateways' figures (as last scraped by this worker), every worker's lag, the path."""

        async def get(self, request: Request) -> Response:
            mine = local_part(me, worker, app.monitor.tp_end_offsets)
            if request.query.get("scope") == "local":
                return self.json({"workers": [mine]})
            peers = sorted({str(h).rstrip("/") for h in app.router.tables_metadata()} - {me.rstrip("/")})
            workers = [mine, *await ask_peers(peers, headers)]
            return self.json(pipeline_view(scraper.latest.values(), workers))

    return scraper
