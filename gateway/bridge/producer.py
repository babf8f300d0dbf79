"""The Kafka side of the bridge: one idempotent confluent-kafka producer and the thread that polls it.

confluent-kafka runs delivery, error, statistics and log callbacks inside
`poll()`. A dedicated thread polls; the callbacks only append to a deque, and
the thread hands what piled up to the event loop with one
`call_soon_threadsafe` per batch, so the bridge's state is only ever touched on
the loop.
"""

from __future__ import annotations

import asyncio
import json
import logging
import threading
from collections import deque
from collections.abc import Callable
from functools import partial

from confluent_kafka import KafkaError, KafkaException, Producer

from ferry.contract import KAFKA_PARTITIONER, KafkaRecord
from ferry.gateway.bridge.config import BridgeConfig

log = logging.getLogger(__name__)
librdkafka_log = logging.getLogger("ferry.gateway.bridge.librdkafka")

POLL_S = 0.2
STATS_INTERVAL_MS = 1000

DEFAULT_LIBRDKAFKA: dict[str, object] = {
    "message.timeout.ms": 0,
    # 0 = never: a record waits in librdkafka (and in the spool) through an outage of any length;
    # only errors Kafka reports (too large, not authorised, unknown topic, ...) come back as failures.
    "reconnect.backoff.max.ms": 2000,
    "client.id": "ferry-bridge",
}
"""Defaults that `bridge.librdkafka` may change."""


class ProducerSettingsError(ValueError):
    """librdkafka refused the producer's settings (a bad `bridge.librdkafka` key or value)."""


Delivered = tuple[int, KafkaError | None]
"""Kafka's answer for one record, (token, error): `error` None means acknowledged by all in-sync
replicas. A plain tuple: one is made per record in the poll thread, which holds the GIL meanwhile."""


def producer_settings(config: BridgeConfig) -> dict[str, object]:
    """The librdkafka settings: defaults, then `bridge.librdkafka`, then what the bridge owns."""
    return {
        **DEFAULT_LIBRDKAFKA,
        **config.librdkafka,
        "bootstrap.servers": config.kafka,
        "enable.idempotence": True,
        "acks": "all",
        "partitioner": KAFKA_PARTITIONER,
        "statistics.interval.ms": STATS_INTERVAL_MS,
    }


def brokers_up(stats_json: str) -> bool | None:
    """From librdkafka's statistics: is a connection to some broker up? None if unreadable."""
    try:
        brokers = json.loads(stats_json).get("brokers", {})
    except ValueError:
        return None
    return any(b.get("state") == "UP" for b in brokers.values())


class KafkaSide:
    """Produces records; reports each one's delivery, fatal errors and connectivity on the loop."""

    def __init__(self, config: BridgeConfig, loop: asyncio.AbstractEventLoop,
                 on_delivered: Callable[[list[Delivered]], None], on_fatal: Callable[[KafkaError], None]) -> None:
        self._settings = producer_settings(config)
        self._loop = loop
        self._on_delivered = on_delivered
        self._on_fatal = on_fatal
        self._events: deque[Delivered] = deque()
        self._handover_scheduled = False
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._producer: Producer | None = None
        self.connected: bool | None = None
        """Some broker connection is up (librdkafka statistics, every second); None before the first."""

    def start(self) -> None:
        """Create the producer (it connects in the background) and start polling it."""
        settings = dict(self._settings, error_cb=self._error, stats_cb=self._stats, logger=librdkafka_log)
        try:
            self._producer = Producer(settings)
        except KafkaException as exc:
            error = exc.args[0]
            raise ProducerSettingsError(error.str() if isinstance(error, KafkaError) else str(error)) from None
        except (ValueError, TypeError) as exc:
            raise ProducerSettingsError(str(exc)) from None
        self._thread = threading.Thread(target=self._poll_forever, name="kafka-poll", daemon=True)
        self._thread.start()

    def produce(self, record: KafkaRecord, token: int) -> None:
        """Hand one record to librdkafka; raises BufferError when its queue is full and
        KafkaException when it refuses the record outright (e.g. too large)."""
        self._producer.produce(record.topic, record.value, record.key, headers=list(record.headers),
                               timestamp=record.timestamp_ms, on_delivery=partial(self._delivered, token))

    def queued(self) -> int:
        """Records librdkafka holds (not yet acknowledged)."""
        return len(self._producer) if self._producer is not None else 0

    # ------------------------------------------------------------------ poll thread

    def _delivered(self, token: int, error: KafkaError | None, _message: object) -> None:
        self._events.append((token, error))

    def _error(self, error: KafkaError) -> None:
        if error.code() == KafkaError._ALL_BROKERS_DOWN:
            self.connected = False
        if error.fatal():
            self._loop.call_soon_threadsafe(self._on_fatal, error)
        else:
            log.debug("kafka: %s", error.str())

    def _stats(self, stats_json: str) -> None:
        up = brokers_up(stats_json)
        if up is not None:
            self.connected = up

    def _poll_forever(self) -> None:
        producer = self._producer
        while not self._stopping.is_set():
            producer.poll(POLL_S)
            self._hand_over()

    def _hand_over(self) -> None:
        if self._events and not self._handover_scheduled:
            self._handover_scheduled = True
            try:
                self._loop.call_soon_threadsafe(self._drain)
            except RuntimeError:  # the loop is closed: nothing is left to tell
                pass

    # ------------------------------------------------------------------ loop

    def _drain(self) -> None:
        self._handover_scheduled = False
        events = self._events
        batch = []
        while events:
            batch.append(events.popleft())
        if batch:
            self._on_delivered(batch)

    async def stop(self, flush_s: float) -> int:
        """Wait up to `flush_s` for Kafka to acknowledge what is in flight, report it, stop polling.
        Returns how many records were still unacknowledged (they stay in the spool)."""
        if self._producer is None:
            return 0
        self._stopping.set()
        await self._loop.run_in_executor(None, self._thread.join)
        left = await self._loop.run_in_executor(None, self._producer.flush, flush_s)
        self._drain()
        self._producer = None
        return left
