"""What the gateway tells operators: `$SYS/broker/...` topics and a Prometheus text endpoint.

Both read the same snapshot of counters (`collect`), so the two never disagree.
"""

from __future__ import annotations

import asyncio
import logging
import time

from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.stats import DropReason, Limit
from ferry.prometheus import Metric, prometheus_text

log = logging.getLogger(__name__)

SYS_INTERVAL_S = 10.0
_HTTP_TIMEOUT_S = 10.0


def collect(broker: Broker, server, journal, bridge=None, disk=None) -> list[Metric]:
    """Every metric, computed now from the broker, the network layer, the journal, the bridge and
    the free-disk guard."""
    sessions = broker.sessions.values()
    stats = broker.stats
    journal_stats = journal.stats
    qos = ("0", "1", "2")
    denied = broker.access.denied if broker.access is not None else {}

    single = Metric.single
    def per_qos(name: str, help_text: str, values: list[int]) -> Metric:
        return Metric(name, "counter", help_text, tuple(((("qos", q),), float(v)) for q, v in zip(qos, values)))

    metrics = [
        single("ferry_connections", "gauge", "Open client connections.", len(broker.connections)),
        single("ferry_client_connections", "gauge",
               "Open connections of clients (devices, operators): ferry_connections without the gateway's own "
               "(the Kafka bridge's).", sum(1 for conn in broker.connections.values() if not conn.internal)),
        single("ferry_connections_total", "counter", "Connections accepted since start.", stats.connections_total),
        single("ferry_sessions", "gauge", "Sessions, connected or not.", len(broker.sessions)),
        single("ferry_subscriptions", "gauge", "Subscriptions in the index.", broker.index.count),
        per_qos("ferry_messages_received_total", "PUBLISH packets received from clients.", stats.messages_received),
        per_qos("ferry_messages_sent_total", "PUBLISH packets sent to clients (resends included).",
                stats.messages_sent),
        single("ferry_messages_resent_total", "counter", "Deliveries resent with DUP after a reconnect.",
               stats.resent),
        single("ferry_qos2_duplicates_total", "counter", "QoS 2 publishes received again before PUBREL.",
               stats.duplicates_qos2),
        single("ferry_bytes_received_total", "counter", "Bytes read from client sockets.", server.bytes_received),
        single("ferry_bytes_sent_total", "counter", "Bytes written to client sockets.", server.bytes_sent),
        single("ferry_retained_messages", "gauge", "Retained messages.", len(broker.retained)),
        single("ferry_queued_messages", "gauge", "Messages waiting in session queues.",
               sum(len(s.queue) for s in sessions)),
        single("ferry_inflight_messages", "gauge", "Deliveries sent and not yet acknowledged.",
               sum(len(s.inflight) for s in sessions)),
        Metric("ferry_dropped_messages_total", "counter", "Messages not delivered to a session, by reason.",
               tuple(((("reason", r.value),), float(stats.dropped[r])) for r in DropReason)),
        single("ferry_protocol_errors_total", "counter", "Connections closed for a protocol violation.",
               stats.protocol_errors),
        Metric("ferry_publishes_refused_total", "counter",
               "QoS 1/2 publishes refused, not acknowledged: a persistent session's queue was full, or the "
               "free disk below store.min_free_disk_bytes.",
               (((("reason", "queue_full"),), float(stats.refused_queue_full)),
                ((("reason", "disk_low"),), float(stats.refused_disk_low)))),
        single("ferry_publishes_denied_total", "counter",
               "Publishes not routed: to a topic beginning with $, or one the ACL denies.", stats.publishes_denied),
        Metric("ferry_access_denied_total", "counter",
               "Access control refusals, by what was refused: connect (credentials, client id, session owner "
               "or will topic), publish, subscribe, read (a message a subscription may not get).",
               tuple(((("action", action),), float(denied.get(action, 0)))
                     for action in ("connect", "publish", "subscribe", "read"))),
        Metric("ferry_limit_hits_total", "counter",
               "Times a client ran into a [broker] limit, by limit (each is also logged, at most every 10 s).",
               tuple(((("limit", limit.value),), float(stats.limit_hits[limit])) for limit in Limit)),
        single("ferry_publishers_held_total", "counter",
               "Times a client was not read until an output its messages reach drained (flow control).",
               stats.publishers_held),
        single("ferry_connections_backed_up", "gauge",
               "Connections whose output is over broker.max_output_buffer_bytes.",
               len(server.flow.blocked)),
        single("ferry_wills_published_total", "counter", "Will messages published.", stats.wills_published),
        single("ferry_sessions_expired_total", "counter", "Sessions ended by their expiry interval.",
               stats.sessions_expired),
        single("ferry_store_commits_total", "counter", "Journal batches committed.", journal_stats.commits),
        single("ferry_store_records_total", "counter", "Journal records committed.", journal_stats.records),
        single("ferry_store_bytes_total", "counter", "Journal bytes written.", journal_stats.bytes_written),
        Metric("ferry_store_commit_latency_seconds", "gauge",
               "Time from handing a batch to the writer to its commit (write + fsync).",
               ((( ("stat", "last"),), journal_stats.latency_last_s),
                ((("stat", "avg"),), journal_stats.latency_avg_s),
                ((("stat", "max"),), journal_stats.latency_max_s))),
        Metric("ferry_store_batch_records", "gauge", "Records per committed journal batch.",
               ((( ("stat", "last"),), float(journal_stats.records_last)),
                ((("stat", "avg"),), journal_stats.records_avg),
                ((("stat", "max"),), float(journal_stats.records_max)))),
    ]
    if disk is not None:
        metrics += [
            single("ferry_store_free_bytes", "gauge", "Free bytes on the data dir's filesystem.", disk.free_bytes),
            single("ferry_store_min_free_bytes", "gauge", "store.min_free_disk_bytes in effect.",
                   disk.min_free_bytes),
            single("ferry_store_disk_low", "gauge", "1 while free disk is below the floor (publishes refused).",
                   1 if broker.disk_low else 0),
        ]
    if bridge is not None:
        metrics += bridge_metrics(bridge, broker)
    return metrics


def bridge_metrics(bridge, broker: Broker) -> list[Metric]:
    """The Kafka bridge's metrics (only when it runs)."""
    stats = bridge.stats

    single = Metric.single
    return [
        single("ferry_bridge_produced_total", "counter", "Records handed to the Kafka producer (retries included).",
               stats.produced),
        single("ferry_bridge_acked_total", "counter",
               "Records Kafka acknowledged (acks=all); each then leaves the spool.", stats.acked),
        single("ferry_bridge_deadlettered_total", "counter",
               "Acknowledged records on the dead-letter topic (contract breakers).", stats.deadlettered),
        single("ferry_bridge_commands_skipped_total", "counter",
               "QoS 0 operator commands seen on ferry/+/+/cmd: not produced (QoS 1/2 ones are never spooled).", stats.commands_skipped),
        single("ferry_bridge_produce_errors_total", "counter",
               "Produce attempts Kafka failed; each record is produced again or, failed for good, rejected.",
               stats.produce_errors),
        Metric("ferry_bridge_rejected_total", "counter",
               "Records Kafka refused for good, moved to the dead-letter file (fsynced, then acknowledged).",
               tuple(((("reason", r.value),), float(n)) for r, n in stats.rejected.items())),
        single("ferry_bridge_rejected_discarded_total", "counter",
               "Dead-letter file entries deleted with the oldest file (bridge.rejected_max_files).",
               bridge.rejected.discarded),
        single("ferry_bridge_producer_waiting", "gauge",
               "Records waiting, in order, for room in librdkafka's queue.", bridge.producer_waiting()),
        single("ferry_bridge_qos0_pending", "gauge", "QoS 0 records held for Kafka (not in the spool).",
               bridge.qos0_pending()),
        single("ferry_bridge_qos0_dropped_total", "counter",
               "QoS 0 messages dropped because bridge.qos0_max_pending(_bytes) were pending already.",
               stats.qos0_dropped),
        single("ferry_bridge_producer_restarts_total", "counter",
               "Kafka producers replaced after a fatal error.", stats.producer_restarts),
        single("ferry_bridge_spool_messages", "gauge",
               "Messages in the spool not yet acknowledged by Kafka, those in flight to it included.",
               bridge.spool_depth()),
        single("ferry_bridge_unacked_records", "gauge",
               "Records Kafka has not acknowledged yet, wherever they wait: the spool's (in flight to Kafka "
               "included), QoS 0 ones held in memory, QoS 1/2 deliveries over MQTT. The pipeline's figure of "
               "what the gateway holds for Kafka.", bridge.unacknowledged()),
        single("ferry_bridge_spool_bytes", "gauge", "Bytes of the spool's files on disk.", bridge.spool_bytes()),
        single("ferry_bridge_spool_oldest_age_seconds", "gauge",
               "Age of the oldest message Kafka has not acknowledged (0 when none is in flight).",
               bridge.oldest_spooled_age_s()),
        single("ferry_bridge_drain_rate", "gauge",
               "Records Kafka acknowledged per second, over the last 10 s.", bridge.drain_rate()),
        single("ferry_bridge_spool_refused_total", "counter",
               "Device publishes refused (not acknowledged) because the spool was full.",
               broker.stats.refused_full),
        single("ferry_bridge_spool_dropped_total", "counter",
               "Spooled messages given up to make room (bridge.overflow = drop_oldest).", bridge.spool.dropped),
        single("ferry_bridge_kafka_connected", "gauge", "1 while a connection to a Kafka broker is up.",
               1 if bridge.kafka_connected else 0),
    ]


class SysPublisher:
    """Publishes every metric as a retained `$SYS/broker/<name>` message every 10 s."""

    def __init__(self, broker: Broker, server, journal, bridge=None, disk=None,
                 interval_s: float = SYS_INTERVAL_S) -> None:
        self._broker = broker
        self._server = server
        self._journal = journal
        self._bridge = bridge
        self._disk = disk
        self._interval_s = interval_s
        self._next_at = 0.0
        self._started_at = time.monotonic()

    def tick(self, now: float) -> None:
        if now < self._next_at:
            return
        self._next_at = now + self._interval_s
        publish = self._broker.publish_internal
        publish("$SYS/broker/uptime", str(int(now - self._started_at)).encode(), now)
        for metric in collect(self._broker, self._server, self._journal, self._bridge, self._disk):
            base = "$SYS/broker/" + metric.name.removeprefix("ferry_").replace("_", "/")
            for labels, value in metric.samples:
                topic = base + "".join(f"/{v}" for _, v in labels)
                publish(topic, f"{value:g}".encode(), now)


class MetricsServer:
    """A minimal HTTP/1.1 server for GET /metrics; one short request per connection."""

    def __init__(self, broker: Broker, server, journal, bridge=None, disk=None) -> None:
        self._broker = broker
        self._server = server
        self._journal = journal
        self._bridge = bridge
        self._disk = disk
        self._listener: asyncio.base_events.Server | None = None

    async def start(self, host: str, port: int) -> tuple[str, int]:
        self._listener = await asyncio.start_server(self._handle, host, port)
        return self._listener.sockets[0].getsockname()[:2]

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            request = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), _HTTP_TIMEOUT_S)
            method, path = request.split(b" ", 2)[:2]
            if method != b"GET":
                status, body, kind = "405 Method Not Allowed", b"GET only\n", "text/plain"
            elif path.split(b"?")[0] != b"/metrics":
                status, body, kind = "404 Not Found", b"see /metrics\n", "text/plain"
            else:
                text = prometheus_text(collect(self._broker, self._server, self._journal, self._bridge, self._disk))
                status, body, kind = "200 OK", text.encode(), "text/plain; version=0.0.4; charset=utf-8"
            writer.write(f"HTTP/1.1 {status}\r\nContent-Type: {kind}\r\nContent-Length: {len(body)}\r\n"
                         f"Connection: close\r\n\r\n".encode() + body)
            await writer.drain()
        except (asyncio.TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError,
                ConnectionError, ValueError) as exc:
            log.debug("metrics request failed: %s", exc)
        finally:
            writer.close()

    async def stop(self) -> None:
        if self._listener is not None:
            self._listener.close()
            await self._listener.wait_closed()
