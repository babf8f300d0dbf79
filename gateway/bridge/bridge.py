"""The Kafka bridge: an MQTT client inside the gateway whose QoS 1/2 messages go to a spool on disk.

The bridge connects to the broker core in-process (an internal connection
registered with the network layer like a socket, speaking real MQTT 5 bytes
through the gateway's own codec) as `$ferry-bridge`, with a session that never
expires, and subscribes to `ferry/#` at QoS 1. The core does not queue that
session's QoS 1/2 messages in memory: it appends each to the spool
(`ferry.gateway.store.spool_queue`), which the journal's writer thread writes
and fsyncs before the device gets its PUBACK. The bridge takes entries from the
spool in order, at most `bridge.inflight` at a time, and acknowledges an entry
to the spool only from the Kafka delivery report of the record made of it
(idempotent producer, acks=all); only then may it leave the disk. QoS 0
messages still arrive over the MQTT connection, not spooled.

Nothing may hold a slot of that window for ever: a record Kafka refuses for
good goes to the dead-letter file (`ferry.gateway.bridge.rejected`) and is
PUBACKed once that is fsynced; a record librdkafka's full queue refuses
(BufferError) waits in order in a backlog and is produced as soon as there is
room. QoS 0 messages are not in the spool and are bounded in memory instead
(`bridge.qos0_max_pending`): beyond it they are dropped and counted.

Everything here runs on the event loop; `ferry.gateway.bridge.producer` brings Kafka's
answers over from its poll thread.
"""

from __future__ import annotations

import asyncio
import itertools
from collections import deque
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path

from confluent_kafka import KafkaError, KafkaException

from ferry.contract import Channel, ContractError, KafkaRecord, checked_telemetry_ts, kafka_record, parse_topic
from ferry.gateway.bridge.config import BridgeConfig, Overflow
from ferry.gateway.bridge.producer import Delivered, KafkaSide
from ferry.gateway.bridge.rejected import DIRECTORY, RejectedFile, RejectedRecord, RejectReason, rejection
from ferry.gateway.broker.config import NEVER_EXPIRES, SessionPolicy
from ferry.gateway.broker.session import Connection, Session
from ferry.gateway.store.spool import NOT_CHECKED, SpoolEntry
from ferry.gateway.store.spool_queue import SpoolQueue
from ferry.gateway.mqtt import (
    Connack, Connect, Decoder, Disconnect, Pingreq, Properties, ProtocolError, ProtocolVersion, Puback,
    Publish, Suback, Subscribe, Subscription,
)

log = logging.getLogger(__name__)

CLIENT_ID = "$ferry-bridge"
"""The bridge's MQTT client id; reserved: devices cannot connect with it."""
TOPIC_FILTER = "ferry/#"
"""Everything under ferry/: telemetry, status and reply go to their topics, anything off the
contract to the dead-letter topic (`ferry.contract.kafka_record` decides); operator commands
(`.../cmd`) flow to devices, not to Kafka, and are acknowledged without being produced."""
COMMAND_FILTERS = ("ferry/+/+/cmd", "ferry/+/+/ota")
"""Operator commands to devices: acknowledged by the bridge without being produced."""
RECONNECT_S = 1.0
RETRY_FIRST_S = 0.5
RETRY_MAX_S = 30.0
ERROR_LOG_INTERVAL_S = 10.0
REJECTED_WRITE_RETRY_S = 5.0
"""A dead-letter entry that could not be written (disk full, I/O error) is tried again this often;
its message stays in the spool meanwhile."""
STOP_FLUSH_S = 5.0
DRAIN_RATE_WINDOW_S = 10


def publisher_owns_topic(topic: str, publisher: str | None) -> bool:
    """Whether a message may become a Kafka record: an authenticated publisher only writes the topics
    of the device it is (`ferry/<site>/<its user name>/...`), whatever the ACL lets through; commands
    are not produced and anonymous publishers (only where `auth.allow_anonymous` lets them in) have
    no name to check."""
    if publisher is None:
        return True
    levels = topic.split("/", 3)
    if len(levels) == 4 and levels[3] in (Channel.CMD.value, Channel.OTA.value):
        return True
    return len(levels) >= 3 and levels[2] == publisher


@dataclass(slots=True)
class BridgeStats:
    """Running totals since start, for the metrics."""

    produced: int = 0
    """Records handed to the producer (retries included)."""
    acked: int = 0
    """Records Kafka acknowledged (and whose MQTT delivery was then PUBACKed)."""
    deadlettered: int = 0
    """Of those, records on the dead-letter topic."""
    commands_skipped: int = 0
    """Operator commands seen on `ferry/+/+/cmd`: acknowledged, not produced."""
    produce_errors: int = 0
    """Produce attempts Kafka (or librdkafka) failed: each record is produced again, or, when the
    error is for good, moved to the dead-letter file."""
    producer_restarts: int = 0
    """Producers replaced after a fatal error (e.g. the idempotent producer lost its sequence)."""
    rejected: dict[RejectReason, int] = field(default_factory=lambda: dict.fromkeys(RejectReason, 0))
    """Records moved to the dead-letter file (fsynced, then acknowledged), by reason."""
    qos0_dropped: int = 0
    """QoS 0 messages dropped because `bridge.qos0_max_pending(_bytes)` were already pending."""


@dataclass(slots=True)
class _Throttle:
    """A log line at most every ERROR_LOG_INTERVAL_S, saying how often it happened since the last."""

    count: int = 0
    said_at: float = float("-inf")

    def due(self, now: float) -> int:
        """Count one occurrence; the count to report if a line is due now, else 0."""
        self.count += 1
        if now - self.said_at < ERROR_LOG_INTERVAL_S:
            return 0
        count, self.count, self.said_at = self.count, 0, now
        return count


@dataclass(slots=True, eq=False)
class _Pending:
    """A record on its way to Kafka, and what waits for it: a spool entry or an MQTT delivery."""

    packet_id: int | None
    """The MQTT delivery to PUBACK; None for a spool entry and for QoS 0."""
    seq: int | None
    """The spool entry to acknowledge; None for what came over MQTT."""
    mqtt_topic: str
    payload: bytes
    received_ms: int
    record: KafkaRecord | None
    """None when `kafka_record` could not make one: it goes straight to the dead-letter file."""
    attempts: int = 0
    """Times Kafka or librdkafka failed it."""


class _InternalTransport:
    """What the network layer writes the bridge's connection to: bytes go straight to the bridge."""

    __slots__ = ("bridge", "conn", "closed")

    def __init__(self, bridge: "Bridge", conn: Connection) -> None:
        self.bridge = bridge
        self.conn = conn
        self.closed = False

    def write(self, data: bytes | bytearray) -> None:
        if not self.closed:
            self.bridge._received(self.conn, data)

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self.bridge._connection_closed(self.conn)


class Bridge:
    """Device data from the broker's `$ferry-bridge` session to Kafka; PUBACK once Kafka has it (or,
    refused for good, the dead-letter file)."""

    def __init__(self, config: BridgeConfig, server, data_dir: Path, spool: SpoolQueue) -> None:
        self.config = config
        self.naming = config.naming()
        self.server = server
        self.broker = server.broker
        self.stats = BridgeStats()
        self._loop = asyncio.get_running_loop()
        # Operator commands are not forwarded to Kafka: they are not spooled, so a full spool never
        # refuses them and an operator can reach devices (slow them down) during a long uplink outage.
        self.broker.set_session_policy(CLIENT_ID, SessionPolicy(
            config.spool_max_messages, config.spool_max_bytes,
            drop_oldest=config.overflow is Overflow.DROP_OLDEST, ignored=COMMAND_FILTERS,
            admits=publisher_owns_topic))
        self.spool = spool
        self.broker.attach_spool(CLIENT_ID, spool)
        spool.on_append = self._pump_soon
        spool.check = _checked_telemetry_ts
        self._pump_scheduled = False
        self._reading = False
        self._spool_inflight = 0
        self._acked_history: deque[tuple[float, int]] = deque(maxlen=DRAIN_RATE_WINDOW_S + 1)
        self.kafka = self._new_kafka()
        self.rejected = RejectedFile(data_dir / DIRECTORY, config.rejected_max_file_bytes,
                                     config.rejected_max_files, self._loop)
        self._conn: Connection | None = None
        self._decoder: Decoder | None = None
        self._pending: dict[int, _Pending] = {}
        """Records handed to librdkafka or waiting for it, by token (their delivery reports name it)."""
        self._backlog: list[int] = []
        """Tokens waiting, in order, for room in librdkafka's queue (or behind one that does)."""
        self._rejecting: dict[int, _Pending] = {}
        """Records being written to the dead-letter file; PUBACKed once it is fsynced."""
        self._qos0_pending = 0
        self._qos0_pending_bytes = 0
        self._tokens = itertools.count(1)
        self._stopping = False
        self._last_packet_at = 0.0
        self._was_connected: bool | None = None
        self._produce_errors_log = _Throttle()
        self._rejected_log = _Throttle()
        self._rejected_failed_log = _Throttle()
        self._queue_full_log = _Throttle()
        self._qos0_dropped_log = _Throttle()

    def _new_kafka(self) -> KafkaSide:
        return KafkaSide(self.config, self._loop, self._on_delivered, self._on_fatal)

    # ------------------------------------------------------------------ lifecycle

    def start(self) -> None:
        """Start the producer (raises ProducerSettingsError for bad librdkafka settings) and
        attach to the broker; call before the listener accepts devices."""
        self.kafka.start()
        self._connect()
        self.server.add_tick(self.tick)
        log.info("bridge to Kafka %s as gateway %r (spool limits %d messages, %d bytes; in flight %d)",
                 self.config.kafka, self.naming.gateway_id, self.config.spool_max_messages,
                 self.config.spool_max_bytes, self.config.inflight)

    def _connect(self) -> None:
        if self._stopping:
            return
        now = self.server.now()
        conn = self.broker.open_connection("internal:kafka-bridge", now, internal=True)
        self._conn = conn
        self._decoder = Decoder(server_side=False, protocol_version=ProtocolVersion.V5)
        # The session resends every unacknowledged delivery on reconnect, and the spool hands out
        # every unacknowledged entry again; reports and dead-letter writes from before are ignored.
        self._pending.clear()
        self._backlog.clear()
        self._rejecting.clear()
        self._qos0_pending = self._qos0_pending_bytes = 0
        self._spool_inflight = 0
        self.spool.rewind()
        self._pump_soon()
        self.server.transports[conn.conn_id] = _InternalTransport(self, conn)
        max_keepalive = self.broker.config.max_keepalive_s
        keepalive = 0 if max_keepalive >= 65_535 else max_keepalive
        props = Properties(session_expiry_interval=NEVER_EXPIRES, receive_maximum=self.config.inflight)
        self._send(Connect(CLIENT_ID, ProtocolVersion.V5, False, keepalive, properties=props), now)
        # retain_handling 1: retained messages only when the subscription is new (first start).
        self._send(Subscribe(1, (Subscription(TOPIC_FILTER, 1, retain_handling=1),)), now)

    def _send(self, packet: object, now: float) -> None:
        self._last_packet_at = now
        self.broker.handle_packet(self._conn, packet, now)
        self.server.schedule_flush()

    def _connection_closed(self, conn: Connection) -> None:
        self.server.transports.pop(conn.conn_id, None)
        self.broker.connection_lost(conn, self.server.now())
        self.server.schedule_flush()
        if conn is self._conn:
            self._conn = None
            if not self._stopping:
                log.warning("the bridge's connection to the broker closed (%s); reconnecting",
                            conn.close_reason.name if conn.close_reason is not None else "closed")
                self._loop.call_later(RECONNECT_S, self._connect)

    async def stop(self) -> None:
        """Give Kafka a few seconds for what is in flight, PUBACK what it acknowledged and what the
        dead-letter file holds, detach. Whatever is still unacknowledged stays in the spool for the
        next start."""
        self._stopping = True
        left = await self.kafka.stop(STOP_FLUSH_S)
        if left:
            log.info("bridge stopped with %d record(s) unacknowledged by Kafka; they stay spooled", left)
        await self.rejected.close()
        self.spool.record_head()
        conn = self._conn
        if conn is not None and not conn.closed:
            self._send(Disconnect(), self.server.now())

    def tick(self, now: float) -> None:
        """Once a second: keepalive, retry what librdkafka's queue refused, log Kafka going up/down."""
        conn = self._conn
        if conn is not None and conn.keepalive_s and now - self._last_packet_at >= conn.keepalive_s / 2:
            self._send(Pingreq(), now)
        if self._backlog:
            self._produce_backlog()
        self.spool.tick()
        self._pump()
        self._acked_history.append((now, self.stats.acked))
        connected = self.kafka.connected
        if connected is not None and connected != self._was_connected:
            if connected:
                log.info("Kafka %s reachable; spool holds %d message(s)", self.config.kafka, self.spool_depth())
            else:
                log.warning("Kafka %s unreachable; device messages spool on disk (%d now)", self.config.kafka,
                            self.spool_depth())
            self._was_connected = connected

    # ------------------------------------------------------------------ broker → Kafka

    def _received(self, conn: Connection, data: bytes | bytearray) -> None:
        if conn is not self._conn:
            return
        try:
            packets = self._decoder.feed(bytes(data))
        except ProtocolError as error:  # our own broker's output: a bug, never expected
            log.error("bridge cannot decode the broker's output: %s", error)
            self.server.transports[conn.conn_id].close()
            return
        for packet in packets:
            kind = type(packet)
            if kind is Publish:
                self._on_publish(packet)
            elif kind is Connack:
                if packet.reason_code >= 0x80:
                    log.error("broker refused the bridge's session: %s", packet.reason_code.name)
                else:
                    log.info("bridge attached to the broker (spool %s, %d message(s) waiting)",
                             "resumed" if packet.session_present else "new", self.spool_depth())
            elif kind is Suback:
                if any(code >= 0x80 for code in packet.reason_codes):
                    log.error("broker refused the bridge's subscription: %s", packet.reason_codes)
            elif kind is Disconnect:
                log.warning("broker disconnected the bridge: %s", packet.reason_code.name)

    def _on_publish(self, packet: Publish) -> None:
        if _is_command(packet.topic):
            self.stats.commands_skipped += 1
            if packet.packet_id:  # after this delivery is done: the broker is mid-call
                self._loop.call_soon(self._ack_now, packet.packet_id)
            return
        received_at = 0.0
        if packet.packet_id:
            session = self._session()
            item = session.inflight.get(packet.packet_id) if session is not None else None
            if item is not None:
                received_at = item.message.received_at
        elif not self._admit_qos0(len(packet.payload)):
            return
        # The broker's receive time; unknown for messages restored after a restart: then now.
        received_ms = int((received_at or time.time()) * 1000)
        token = next(self._tokens)
        try:
            record = kafka_record(self.naming, packet.topic, packet.payload, received_ms)
        except Exception as exc:  # a contract bug: this message must not stop the others
            pending = _Pending(packet.packet_id, None, packet.topic, packet.payload, received_ms, None)
            self._reject(token, pending, RejectReason.NOT_BUILT, f"{type(exc).__name__}: {exc}")
            return
        self._pending[token] = _Pending(packet.packet_id, None, packet.topic, packet.payload, received_ms, record)
        # Behind what waits already, to keep the order; it waits too if librdkafka's queue is full.
        if self._backlog or not self._produce(token):
            self._backlog.append(token)

    # ------------------------------------------------------------------ spool → Kafka

    def _pump_soon(self) -> None:
        if not self._pump_scheduled:
            self._pump_scheduled = True
            self._loop.call_soon(self._pump)

    def _pump(self) -> None:
        """Take spool entries up to the in-flight window and produce them; start reading the next
        file in a thread when the spool's backlog is on disk only or what is read ahead runs low."""
        self._pump_scheduled = False
        if self._stopping:
            return
        room = self.config.inflight - self._spool_inflight
        if room > 0:
            for entry in self.spool.take(room):
                self._start(entry)
        if not self._reading and self.spool.needs_read:
            self._reading = True
            self._loop.create_task(self._read_ahead())

    async def _read_ahead(self) -> None:
        try:
            await self.spool.read_ahead()
        except OSError as exc:
            log.error("cannot read the spool back (%s); trying again in a second", exc)
            await asyncio.sleep(1.0)
        finally:
            self._reading = False
        self._pump()

    def _start(self, entry: SpoolEntry) -> None:
        self._spool_inflight += 1
        token = next(self._tokens)
        checked = entry.checked_ts_ms
        try:
            record = kafka_record(self.naming, entry.topic, entry.payload, entry.received_ms,
                                  None if checked == NOT_CHECKED else checked)
        except Exception as exc:  # a contract bug: this message must not stop the others
            pending = _Pending(None, entry.seq, entry.topic, entry.payload, entry.received_ms, None)
            self._reject(token, pending, RejectReason.NOT_BUILT, f"{type(exc).__name__}: {exc}")
            return
        self._pending[token] = _Pending(None, entry.seq, entry.topic, entry.payload, entry.received_ms, record)
        # Behind what waits already, to keep the order; it waits too if librdkafka's queue is full.
        if self._backlog or not self._produce(token):
            self._backlog.append(token)

    def _admit_qos0(self, size: int) -> bool:
        """Whether a QoS 0 message fits within `bridge.qos0_max_pending(_bytes)`; counted if not."""
        if (self._qos0_pending < self.config.qos0_max_pending
                and self._qos0_pending_bytes + size <= self.config.qos0_max_pending_bytes):
            self._qos0_pending += 1
            self._qos0_pending_bytes += size
            return True
        self.stats.qos0_dropped += 1
        dropped = self._qos0_dropped_log.due(self.server.now())
        if dropped:
            log.warning("%d QoS 0 message(s) for Kafka dropped since the last report: %d (%d bytes) are "
                        "pending already (bridge.qos0_max_pending, bridge.qos0_max_pending_bytes)", dropped,
                        self._qos0_pending, self._qos0_pending_bytes)
        return False

    def _done_with(self, pending: _Pending) -> None:
        """A record left the bridge (acknowledged by Kafka or in the dead-letter file): acknowledge
        its spool entry, or count a QoS 0 one out."""
        if pending.seq is not None:
            self._spool_inflight -= 1
            self.spool.ack(pending.seq)
            self._pump_soon()
        elif pending.packet_id is None:
            self._qos0_pending -= 1
            self._qos0_pending_bytes -= len(pending.payload)

    def _ack_now(self, packet_id: int) -> None:
        if self._conn is not None:
            self.broker.handle_packet(self._conn, Puback(packet_id), self.server.now())
            self.server.schedule_flush()

    def _produce(self, token: int) -> bool:
        """Hand one pending record to librdkafka; False if it must wait in the backlog: librdkafka's
        queue is full (BufferError is backpressure, not a failure) or the bridge is stopping."""
        pending = self._pending.get(token)
        if pending is None:
            return True
        if self._stopping:
            return False
        try:
            self.kafka.produce(pending.record, token)
        except BufferError:
            if self._queue_full_log.due(self.server.now()):
                log.warning("librdkafka's queue is full (queue.buffering.max.messages/kbytes): %d record(s) "
                            "wait for room, in order", len(self._backlog) + 1)
            return False
        except KafkaException as exc:
            error = exc.args[0] if exc.args and isinstance(exc.args[0], KafkaError) \
                else KafkaError(KafkaError._FAIL, str(exc))
            self._failed(token, pending, error)
            return True
        self.stats.produced += 1
        return True

    def _produce_backlog(self) -> None:
        backlog, self._backlog = self._backlog, []
        for index, token in enumerate(backlog):
            if not self._produce(token):
                self._backlog = backlog[index:] + self._backlog
                return

    def _on_delivered(self, batch: list[Delivered]) -> None:
        conn = self._conn
        now = self.server.now()
        acked = False
        for token, error in batch:
            pending = self._pending.get(token)
            if pending is None:  # from before a reconnect: that delivery is resent anyway
                continue
            if error is not None:
                self._failed(token, pending, error)
                continue
            del self._pending[token]
            self._done_with(pending)
            self.stats.acked += 1
            if pending.record.topic == self.naming.deadletter_topic:
                self.stats.deadlettered += 1
            if pending.packet_id and conn is not None:
                self._last_packet_at = now
                self.broker.handle_packet(conn, Puback(pending.packet_id), now)
                acked = True
        if acked:
            self.server.schedule_flush()
        if self._backlog:
            self._produce_backlog()

    def _failed(self, token: int, pending: _Pending, error: KafkaError) -> None:
        """Kafka did not take a record: no PUBACK. If the error is for good (`rejection`) the record
        goes to the dead-letter file; otherwise it stays in the spool and is produced again."""
        self.stats.produce_errors += 1
        pending.attempts += 1
        reason = rejection(error, pending.attempts, self.config.rejected_after_attempts)
        if reason is not None:
            self._reject(token, pending, reason, f"{error.name()}: {error.str()}")
            return
        delay = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (pending.attempts - 1))
        failures = self._produce_errors_log.due(self.server.now())
        if failures:
            log.warning("Kafka did not take %d record(s) since the last report, now one for %s: %s; "
                        "kept in the spool, retrying in %.1f s", failures, pending.record.topic, error.str(), delay)
        self._loop.call_later(delay, self._retry, token)

    def _retry(self, token: int) -> None:
        if token in self._pending and not self._stopping:
            if self._backlog or not self._produce(token):
                self._backlog.append(token)

    # ------------------------------------------------------------------ the dead-letter file

    def _reject(self, token: int, pending: _Pending, reason: RejectReason, error: str) -> None:
        """Move a record Kafka refused for good to the dead-letter file; its slot is released (PUBACK)
        once the entry is fsynced. While stopping (or detached) it stays in the spool and is rejected
        again after the next start (or reconnect) instead."""
        self._pending.pop(token, None)
        if self._stopping or self._conn is None:
            return  # the session delivers it again after the reconnect
        self._rejecting[token] = pending
        record = RejectedRecord(int(time.time() * 1000), pending.mqtt_topic, pending.payload,
                                0 if pending.packet_id is None and pending.seq is None else 1,
                                pending.received_ms, reason, error,
                                pending.record.topic if pending.record is not None else None, pending.attempts)
        self._write_rejected(token, self._conn, record)

    def _write_rejected(self, token: int, conn: Connection, record: RejectedRecord) -> None:
        if self._stopping or conn is not self._conn or token not in self._rejecting:
            return  # stopping: stays spooled; reconnected: the session delivers it again
        self.rejected.append(record, lambda error: self._rejected_written(token, conn, record, error))

    def _rejected_written(self, token: int, conn: Connection, record: RejectedRecord,
                          error: OSError | None) -> None:
        if conn is not self._conn or token not in self._rejecting:
            return  # reconnected meanwhile: the session delivers it again
        now = self.server.now()
        if error is not None:
            failures = self._rejected_failed_log.due(now)
            if failures:
                log.error("cannot write %d entr%s to the dead-letter file in %s (%s); the messages stay in the "
                          "spool, trying again every %.0f s", failures, "y" if failures == 1 else "ies",
                          self.rejected.directory, error, REJECTED_WRITE_RETRY_S)
            self._loop.call_later(REJECTED_WRITE_RETRY_S, self._write_rejected, token, conn, record)
            return
        pending = self._rejecting.pop(token)
        self._done_with(pending)
        self.stats.rejected[record.reason] += 1
        rejected = self._rejected_log.due(now)
        if rejected:
            log.warning("%d record(s) Kafka refused for good moved to the dead-letter file in %s since the last "
                        "report, now %s (%d bytes) for %s: %s", rejected, self.rejected.directory,
                        record.mqtt_topic, len(record.payload), record.kafka_topic, record.error)
        if pending.packet_id:
            self._last_packet_at = now
            self.broker.handle_packet(conn, Puback(pending.packet_id), now)
            self.server.schedule_flush()

    def _on_fatal(self, error: KafkaError) -> None:
        """The idempotent producer cannot go on: replace it and produce everything in flight again."""
        if self._stopping:
            return
        log.error("Kafka producer failed fatally (%s): starting a new one and producing %d record(s) again",
                  error.str(), len(self._pending))
        self.stats.producer_restarts += 1
        old = self.kafka
        self._loop.create_task(old.stop(0))
        self.kafka = self._new_kafka()
        self.kafka.start()
        tokens = sorted(self._pending)
        self._pending = {next(self._tokens): self._pending[t] for t in tokens}  # old reports are ignored
        self._backlog = list(self._pending)
        self._produce_backlog()

    # ------------------------------------------------------------------ metrics

    def _session(self) -> Session | None:
        return self.broker.sessions.get(CLIENT_ID)

    def spool_depth(self) -> int:
        """Messages in the spool not acknowledged by Kafka, those in flight to it included."""
        return self.spool.depth

    def unacknowledged(self) -> int:
        """Every record Kafka has not acknowledged yet, wherever it waits: the spool's entries (on disk,
        read ahead, handed to librdkafka or waiting for room in its queue, being written to the
        dead-letter file), the QoS 0 messages held in memory (`qos0_pending`: never in the spool) and
        QoS 1/2 deliveries that came over the MQTT connection rather than from the spool. The spool
        depth alone misses the last two."""
        over_mqtt = sum(1 for pending in itertools.chain(self._pending.values(), self._rejecting.values())
                        if pending.seq is None and pending.packet_id is not None)
        return self.spool.depth + self._qos0_pending + over_mqtt

    def producer_waiting(self) -> int:
        """Records waiting, in order, for room in librdkafka's queue."""
        return len(self._backlog)

    def qos0_pending(self) -> int:
        """QoS 0 records held for Kafka (bounded by `bridge.qos0_max_pending`)."""
        return self._qos0_pending

    def spool_bytes(self) -> int:
        """Bytes of the spool on disk (and of entries about to be written)."""
        return self.spool.bytes

    def drain_rate(self) -> float:
        """Records Kafka acknowledged per second over the last DRAIN_RATE_WINDOW_S seconds."""
        if len(self._acked_history) < 2:
            return 0.0
        (first_at, first), (last_at, last) = self._acked_history[0], self._acked_history[-1]
        return (last - first) / (last_at - first_at) if last_at > first_at else 0.0

    def oldest_spooled_age_s(self) -> float:
        """Age of the oldest entry Kafka has not acknowledged (0 when none is in flight)."""
        received_ms = self.spool.oldest_received_ms()
        return 0.0 if received_ms is None else max(0.0, time.time() - received_ms / 1000)

    @property
    def kafka_connected(self) -> bool:
        return bool(self.kafka.connected)


def _checked_telemetry_ts(topic: str, payload: bytes, received_ms: int) -> int | None:
    """What the spool keeps of a message it appends: `ferry.contract.checked_telemetry_ts`, and None
    should that fail (a contract bug: the record is then made in full when produced, and a record
    that cannot be made goes to the dead-letter file; the device's publish is not disturbed)."""
    try:
        return checked_telemetry_ts(topic, payload, received_ms)
    except Exception:  # a contract bug: see above
        return None


def _is_command(topic: str) -> bool:
    """Operator → device (`cmd`, `ota`): acknowledged by the bridge, never produced."""
    try:
        return parse_topic(topic).channel.to_device
    except ContractError:
        return False
