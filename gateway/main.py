"""`ferry gateway`: recover the store, start the MQTT broker and the Kafka bridge, run until SIGTERM,
stop cleanly."""

from __future__ import annotations

import argparse
import asyncio
import logging
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ferry.addresses import host_port
from gateway.bridge.bridge import Bridge
from gateway.bridge.producer import ProducerSettingsError
from gateway.broker.core import Broker
from gateway.broker.recovery import durable_records, restore
from gateway.config import ConfigError, GatewayConfig, load_config
from gateway.metrics import MetricsServer, SysPublisher
from gateway.server import MqttServer
from gateway.store import Journal, recover

log = logging.getLogger("gateway")

EXIT_CONFIG = 2
EXIT_STORE_FAILED = 3



def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry gateway", description=__doc__)
    parser.add_argument("--listen", type=host_port, default=("127.0.0.1", 1883), metavar="HOST:PORT",
                        help="MQTT listener (default 127.0.0.1:1883; port 0 picks a free one)")
    parser.add_argument("--data-dir", type=Path, required=True, help="where the store lives")
    parser.add_argument("--config", type=Path, help="ferry.toml; defaults apply without it")
    parser.add_argument("--metrics", type=host_port, metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP at /metrics")
    parser.add_argument("--kafka", metavar="HOST:PORT",
                        help="run the Kafka bridge to these bootstrap servers (sets bridge.kafka; "
                             "the rest of [bridge] still comes from --config)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    return parser


class Gateway:
    """The broker, its journal, the network server, the Kafka bridge and the metrics, started and
    stopped together."""

    def __init__(self, config: GatewayConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.server: MqttServer | None = None
        self.metrics: MetricsServer | None = None
        self.bridge: Bridge | None = None
        self.journal: Journal | None = None
        self.store_failed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def start(self, listen: tuple[str, int], metrics: tuple[str, int] | None) -> tuple[str, int]:
        store_dir = self.data_dir / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        state, _ = recover(store_dir)  # logs what it kept and what it dropped
        self.journal = Journal(store_dir, self.config.store.durability,
                               segment_max_bytes=self.config.store.segment_max_bytes,
                               on_commit=self._on_commit,
                               on_error=lambda exc: self._loop.call_soon_threadsafe(self.store_failed.set))
        self.journal.open(state)
        broker = Broker(self.config.broker, self.journal, now=time.monotonic(), wall=time.time())
        restore(broker, state, time.monotonic())
        self.server = MqttServer(broker, self.journal, housekeeping=self._housekeeping)
        if self.config.bridge.enabled:
            # Attached before the listener opens, so no device message can miss the spool.
            self.bridge = Bridge(self.config.bridge, self.server)
            try:
                self.bridge.start()
            except ProducerSettingsError as exc:
                raise ConfigError(f"bridge.librdkafka: {exc}") from None
        sys_publisher = SysPublisher(broker, self.server, self.journal, self.bridge)
        self.server.add_tick(sys_publisher.tick)
        host, port = await self.server.start(*listen)
        log.info("listening on %s:%d (durability=%s, data dir %s)", host, port,
                 self.config.store.durability.value, self.data_dir)
        if metrics is not None:
            self.metrics = MetricsServer(broker, self.server, self.journal, self.bridge)
            metrics_host, metrics_port = await self.metrics.start(*metrics)
            log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
        return host, port

    def _on_commit(self, batch: int) -> None:
        if self.server is not None:
            self.server.on_commit(batch)

    def _housekeeping(self) -> None:
        journal = self.journal
        if journal.bytes_since_snapshot > self.config.store.compact_after_bytes:
            log.info("compacting the store (%d bytes since the last snapshot)", journal.bytes_since_snapshot)
            journal.snapshot(durable_records(self.server.broker))

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.bridge is not None:
            await self.bridge.stop()
        if self.server is not None:
            await self.server.stop()
        if self.journal is not None and self.journal.failed is None:
            log.info("stopped; store flushed")


async def _run(args: argparse.Namespace, config: GatewayConfig) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the store cannot write (exit 3).

    A store that cannot write (disk full, I/O error) can never make another
    message durable, so no acknowledgement that needs it would ever be sent:
    the gateway closes every connection and exits, and clients keep their
    unacknowledged messages until it is back.
    """
    gateway = Gateway(config, args.data_dir)
    try:
        await gateway.start(args.listen, args.metrics)
    except ConfigError as exc:
        print(f"ferry gateway: config error: {exc}", file=sys.stderr)
        await gateway.stop()
        return EXIT_CONFIG
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    stopped = loop.create_task(stop.wait())
    failed = loop.create_task(gateway.store_failed.wait())
    await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    if gateway.store_failed.is_set():
        log.critical("the store cannot write (%s): closing every connection and exiting",
                     gateway.journal.failed)
        await gateway.stop()
        return EXIT_STORE_FAILED
    log.info("signal received, stopping")
    await gateway.stop()
    return 0


def _raise_open_files_limit() -> None:
    """Each client is a socket: allow as many as the hard limit permits (10,000 idle devices and more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def _loop_factory():
    try:
        import uvloop
    except ImportError:
        return asyncio.new_event_loop
    return uvloop.new_event_loop


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=args.log_level, stream=sys.stderr,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        config = load_config(args.config, args.kafka)
    except ConfigError as exc:
        print(f"ferry gateway: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    _raise_open_files_limit()
    with asyncio.Runner(loop_factory=_loop_factory()) as runner:
        return runner.run(_run(args, config))
