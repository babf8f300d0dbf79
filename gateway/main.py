"""`ferry gateway`: recover the store, start the MQTT broker and the Kafka bridge, run until SIGTERM,
stop cleanly.

Under systemd (`--systemd-unit` prints the unit) it reports readiness once the store is recovered
and the listener is open, and feeds the service watchdog from the event loop.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import logging
import resource
import signal
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from ferry.addresses import host_port
from ferry.event_loop import loop_factory
from ferry.gc_tuning import tune_gc
from ferry.gateway.auth.access import AccessControl
from ferry.gateway.auth.acl import Acl
from ferry.gateway.auth.authenticator import Authenticator
from ferry.gateway.auth.passwords import PasswordFileError
from ferry.gateway.bridge.bridge import Bridge
from ferry.gateway.bridge.producer import ProducerSettingsError
from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.recovery import durable_records, restore
from ferry.gateway.config import (
    DEFAULT_LISTEN, ConfigError, GatewayConfig, ListenerConfig, check_can_connect, load_config,
)
from ferry.gateway.metrics import MetricsServer, SysPublisher
from ferry.gateway.server import MqttServer
from ferry.gateway.disk import DiskGuard
from ferry.gateway.store import Durability, Journal, StoreFormatError, recover
from ferry.gateway.store.spool import SPOOL_DIR
from ferry.gateway.store.spool_queue import SpoolQueue
from ferry.gateway.systemd import configure_logging, notify, watchdog_interval_s
from ferry.gateway.tls import server_context

log = logging.getLogger("ferry.gateway")

EXIT_CONFIG = 2
EXIT_STORE_FAILED = 3
DISK_CHECK_AFTER_COMMIT_S = 0.05
"""Free disk is read after a commit at most this often (about 500 KB written at 10 MB/s)."""
COMPACT_RETRY_S = 60.0
"""After a compaction that could not be written, wait this long before trying again."""
DEPLOY_DIR = Path(__file__).resolve().parent / "deploy"
SAMPLE_CONFIG = DEPLOY_DIR / "ferry.toml"
SYSTEMD_UNIT = DEPLOY_DIR / "ferry-gateway.service"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry gateway", description=__doc__)
    parser.add_argument("--listen", type=host_port, metavar="HOST:PORT",
                        help="plain MQTT listener (gateway.listen, default 127.0.0.1:1883 without [[listener]] "
                             "tables; port 0 picks a free one)")
    parser.add_argument("--password-file", metavar="FILE",
                        help="users and password hashes, made with `ferry passwd` (auth.password_file)")
    parser.add_argument("--allow-anonymous", action="store_true",
                        help="let clients connect without a user name (auth.allow_anonymous = true)")
    parser.add_argument("--data-dir", type=Path, help="where the store lives (gateway.data_dir; required)")
    parser.add_argument("--config", type=Path, help="ferry.toml; defaults apply without it")
    parser.add_argument("--metrics", type=host_port, metavar="HOST:PORT",
                        help="serve Prometheus metrics over HTTP at /metrics (gateway.metrics)")
    parser.add_argument("--kafka", metavar="HOST:PORT",
                        help="run the Kafka bridge to these bootstrap servers (sets bridge.kafka; "
                             "the rest of [bridge] still comes from --config)")
    parser.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    parser.add_argument("--check-config", action="store_true",
                        help="validate the configuration, print it as used, and exit (0 valid, 2 not)")
    parser.add_argument("--sample-config", action="store_true",
                        help="print a ferry.toml with every key commented (for /etc/ferry/ferry.toml)")
    parser.add_argument("--systemd-unit", action="store_true",
                        help="print the systemd unit (for /etc/systemd/system/ferry-gateway.service)")
    return parser


@dataclasses.dataclass(frozen=True, slots=True)
class Service:
    """Where this run listens and keeps its data: the command line over `[gateway]`."""

    listeners: tuple[tuple[str, tuple[str, int], ListenerConfig | None], ...]
    """(config key, address, the `[[listener]]` table or None for the plain `gateway.listen`)."""
    data_dir: Path
    metrics: tuple[str, int] | None


def plain_service(listen: tuple[str, int], data_dir: Path, metrics: tuple[str, int] | None = None) -> Service:
    """One plain listener (in-process tests)."""
    return Service((("gateway.listen", listen, None),), data_dir, metrics)


def resolve_service(args: argparse.Namespace, config: GatewayConfig) -> Service:
    """The effective listeners, data dir and metrics address; ConfigError naming the key if unusable."""
    data_dir = args.data_dir or (Path(config.gateway.data_dir) if config.gateway.data_dir else None)
    if data_dir is None:
        raise ConfigError("gateway.data_dir: required (set it in [gateway] or pass --data-dir)")
    check_can_connect(config)
    metrics = args.metrics
    if metrics is None and config.gateway.metrics is not None:
        metrics = host_port(config.gateway.metrics)
    listeners = []
    plain = args.listen or (host_port(config.gateway.listen) if config.gateway.listen else None)
    if plain is None and not config.listener:
        plain = host_port(DEFAULT_LISTEN)
    if plain is not None:
        listeners.append(("gateway.listen", plain, None))
    for i, listener in enumerate(config.listener):
        listeners.append((f"listener[{i}]", host_port(listener.listen), listener))
    return Service(tuple(listeners), data_dir, metrics)


class Gateway:
    """The broker, its journal, the network server, the Kafka bridge and the metrics, started and
    stopped together."""

    def __init__(self, config: GatewayConfig, data_dir: Path) -> None:
        self.config = config
        self.data_dir = data_dir
        self.server: MqttServer | None = None
        self.authenticator: Authenticator | None = None
        self.metrics: MetricsServer | None = None
        self.bridge: Bridge | None = None
        self.journal: Journal | None = None
        self.disk_guard: DiskGuard | None = None
        self._compact_failed_at: float | None = None
        self._disk_checked_at = float("-inf")
        self.store_failed = asyncio.Event()
        self._loop = asyncio.get_running_loop()

    async def start(self, service: Service) -> list[tuple[str, int]]:
        """Recover the store and open every listener; returns the addresses bound, in order."""
        store_dir = self.data_dir / "store"
        store_dir.mkdir(parents=True, exist_ok=True)
        state, _ = recover(store_dir)  # logs what it kept and what it dropped
        self.journal = Journal(store_dir, self.config.store.durability,
                               segment_max_bytes=self.config.store.segment_max_bytes,
                               on_commit=self._on_commit,
                               on_error=lambda exc: self._loop.call_soon_threadsafe(self.store_failed.set))
        self.journal.open(state)
        try:
            self.authenticator = Authenticator(self.config.auth)
        except PasswordFileError as exc:
            raise ConfigError(f"auth.password_file: {exc}") from None
        auth = self.config.auth
        access = AccessControl(Acl(self.config.acl, defaults=auth.acl_defaults), self.authenticator.is_user,
                               lambda user: auth.anonymous_role if user is None else auth.role_of(user))
        broker = Broker(self.config.broker, self.journal, now=time.monotonic(), wall=time.time(), access=access)
        restore(broker, state, time.monotonic())
        self.server = MqttServer(broker, self.journal, housekeeping=self._housekeeping,
                                 authenticator=self.authenticator)
        self.disk_guard = DiskGuard(store_dir, self.config.store.min_free_disk_bytes)
        self._check_disk()
        if self.config.bridge.enabled:
            durable = self.config.store.durability is not Durability.MEMORY
            spool = SpoolQueue(self.journal, store_dir / SPOOL_DIR if durable else None, self.journal.salt,
                               state.spool_head, self.journal.spool_opened.tail,
                               max_messages=self.config.bridge.spool_max_messages,
                               max_bytes=self.config.bridge.spool_max_bytes)
            # Attached before the listener opens, so no device message can miss the spool.
            self.bridge = Bridge(self.config.bridge, self.server, self.data_dir, spool)
            try:
                self.bridge.start()
            except ProducerSettingsError as exc:
                raise ConfigError(f"bridge.librdkafka: {exc}") from None
        sys_publisher = SysPublisher(broker, self.server, self.journal, self.bridge, self.disk_guard)
        self.server.add_tick(sys_publisher.tick)
        bound = []
        for key, (host, port), listener in service.listeners:
            tls = None if listener is None or not listener.tls else server_context(key, listener)
            address = await self.server.start(host, port, tls, tls is not None and listener.cert_cn_as_username)
            bound.append(address)
            log.info("listening on %s:%d%s (%s)", *address, " with TLS" if tls else "", key)
        log.info("durability=%s, data dir %s, anonymous clients %s", self.config.store.durability.value,
                 self.data_dir, "allowed" if self.config.auth.allow_anonymous else "refused")
        if service.metrics is not None:
            self.metrics = MetricsServer(broker, self.server, self.journal, self.bridge, self.disk_guard)
            metrics_host, metrics_port = await self.metrics.start(*service.metrics)
            log.info("metrics on http://%s:%d/metrics", metrics_host, metrics_port)
        return bound

    def _on_commit(self, batch: int) -> None:
        """In the journal's writer thread: release what waited for `batch`, and look at the free disk
        again, at most every DISK_CHECK_AFTER_COMMIT_S (a burst can fill a small disk well within the
        once-a-second housekeeping). The free space is read here, off the event loop, which is woken
        for it only when the answer changed."""
        if self.server is None:
            return
        self.server.on_commit(batch)
        now = time.monotonic()
        if now - self._disk_checked_at >= DISK_CHECK_AFTER_COMMIT_S:
            self._disk_checked_at = now
            if self.disk_guard.low() != self.server.broker.disk_low:
                self._loop.call_soon_threadsafe(self._check_disk)

    def _housekeeping(self) -> None:
        """Once a second: the free-disk guard, and compaction when the journal has grown (after a
        compaction that failed, e.g. on a full disk, not before COMPACT_RETRY_S)."""
        self._check_disk()
        journal = self.journal
        now = time.monotonic()
        if journal.snapshot_error is not None and self._compact_failed_at is None:
            self._compact_failed_at = now
        if self._compact_failed_at is not None and now - self._compact_failed_at < COMPACT_RETRY_S:
            return
        if journal.bytes_since_snapshot > self.config.store.compact_after_bytes:
            log.info("compacting the store (%d bytes since the last snapshot)", journal.bytes_since_snapshot)
            self._compact_failed_at = None
            journal.snapshot(durable_records(self.server.broker))

    def _check_disk(self) -> None:
        low = self.disk_guard.low()
        broker = self.server.broker
        if low != broker.disk_low:
            if low:
                log.error("free disk below %d bytes (store.min_free_disk_bytes): refusing QoS 1/2 publishes "
                          "that need the store until there is room", self.disk_guard.min_free_bytes)
            else:
                log.info("free disk above store.min_free_disk_bytes again: accepting publishes")
            broker.disk_low = low

    async def stop(self) -> None:
        if self.metrics is not None:
            await self.metrics.stop()
        if self.bridge is not None:
            await self.bridge.stop()
        if self.server is not None:
            await self.server.stop()
        if self.journal is not None and self.journal.failed is None:
            log.info("stopped; store flushed")


async def _feed_watchdog(interval_s: float) -> None:
    while True:
        notify("WATCHDOG=1")
        await asyncio.sleep(interval_s)


async def _run(service: Service, config: GatewayConfig) -> int:
    """Serve until SIGTERM/SIGINT (exit 0) or until the store cannot write (exit 3).

    A store that cannot write (disk full, I/O error) can never make another
    message durable, so no acknowledgement that needs it would ever be sent:
    the gateway closes every connection and exits, and clients keep their
    unacknowledged messages until it is back.
    """
    gateway = Gateway(config, service.data_dir)
    try:
        bound = await gateway.start(service)
    except ConfigError as exc:
        print(f"ferry gateway: config error: {exc}", file=sys.stderr)
        await gateway.stop()
        return EXIT_CONFIG
    except StoreFormatError as exc:
        # Not retried by systemd either (RestartPreventExitStatus): a restart reads the same files.
        print(f"ferry gateway: store error: {exc}", file=sys.stderr)
        await gateway.stop()
        return EXIT_CONFIG
    notify("READY=1\nSTATUS=listening on " + ", ".join(f"{host}:{port}" for host, port in bound))
    interval_s = watchdog_interval_s()
    watchdog = None if interval_s is None else asyncio.get_running_loop().create_task(_feed_watchdog(interval_s))
    try:
        return await _serve(gateway)
    finally:
        if watchdog is not None:
            watchdog.cancel()


async def _serve(gateway: Gateway) -> int:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    loop.add_signal_handler(signal.SIGHUP, gateway.authenticator.reload)  # as Mosquitto rereads its files
    stopped = loop.create_task(stop.wait())
    failed = loop.create_task(gateway.store_failed.wait())
    await asyncio.wait([stopped, failed], return_when=asyncio.FIRST_COMPLETED)
    stopped.cancel()
    failed.cancel()
    if gateway.store_failed.is_set():
        log.critical("the store cannot write (%s): closing every connection and exiting",
                     gateway.journal.failed)
        notify("STOPPING=1\nSTATUS=the store cannot write")
        await gateway.stop()
        return EXIT_STORE_FAILED
    log.info("signal received, stopping")
    notify("STOPPING=1")
    await gateway.stop()
    return 0


def check_files(service: Service, config: GatewayConfig) -> int | None:
    """Load the password file and every listener's TLS files as the gateway would; the number of
    users (None without a password file), or ConfigError naming the key."""
    for key, _, listener in service.listeners:
        if listener is not None and listener.tls:
            server_context(key, listener)
    try:
        authenticator = Authenticator(config.auth)
    except PasswordFileError as exc:
        raise ConfigError(f"auth.password_file: {exc}") from None
    return authenticator.user_count


def _raise_open_files_limit() -> None:
    """Each client is a socket: allow as many as the hard limit permits (10,000 idle devices and more)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.sample_config or args.systemd_unit:
        sys.stdout.write((SAMPLE_CONFIG if args.sample_config else SYSTEMD_UNIT).read_text())
        return 0
    configure_logging(args.log_level)
    try:
        config = load_config(args.config, args.kafka, allow_anonymous=args.allow_anonymous,
                             password_file=args.password_file)
        service = resolve_service(args, config)
    except ConfigError as exc:
        print(f"ferry gateway: config error: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    if args.check_config:
        try:
            users = check_files(service, config)
        except ConfigError as exc:
            print(f"ferry gateway: config error: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        listeners = ", ".join(f"{host}:{port}{' TLS' if listener and listener.tls else ''}"
                              for _, (host, port), listener in service.listeners)
        print(f"{args.config or 'defaults'}: valid; listen {listeners}, "
              f"data dir {service.data_dir}, bridge {config.bridge.kafka or 'off'}, "
              f"durability {config.store.durability.value}, "
              f"{'no password file' if users is None else f'{users} users'}, "
              f"anonymous clients {'allowed' if config.auth.allow_anonymous else 'refused'}")
        return 0
    _raise_open_files_limit()
    tune_gc()
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(_run(service, config))
