"""The broker core: MQTT 3.1.1/5.0 semantics with the time passed in and no I/O.

The network layer feeds it decoded packets and the clock; the core writes
output into each `Connection` and appends durable records to the journal. An
acknowledgement that depends on a record (PUBACK, PUBREC, SUBACK, CONNACK of a
persistent session) is held in the connection's ordered output until the
journal reports that record's batch committed, so nothing is acknowledged
before it is on disk. A QoS 1 publish that reaches no persistent session and is
not retained has nothing to make durable and is acknowledged at once.
"""

from __future__ import annotations

import itertools
import logging
import secrets
from collections.abc import Callable
from typing import Protocol

from ferry.gateway.auth.access import AccessControl
from ferry.gateway.broker import delivery, routing
from ferry.gateway.broker.connect import ConnectHandling
from ferry.gateway.broker.config import NEVER_EXPIRES, BrokerConfig, SessionPolicy
from ferry.gateway.broker.policies import SessionPolicies
from ferry.gateway.broker.index import SubscriptionIndex
from ferry.gateway.broker.limits import BrokerLimits
from ferry.gateway.broker.session import Connection, Delivery, DeliveryState, Message, Session
from ferry.gateway.broker.subscribe import SubscribeHandling
from ferry.gateway.broker.stats import BrokerStats, DropReason
from ferry.gateway.mqtt import (
    Connack, Connect, Disconnect, Pingreq, ProtocolError, ProtocolVersion, Puback, Pubcomp, Publish,
    Pubrec, Pubrel, ReasonCode, Subscribe, Unsubscribe, encode, encode_publish_ack,
)
from ferry.gateway.mqtt.reason_codes import CONNACK_CODES
from ferry.gateway.store import records as rec

log = logging.getLogger(__name__)

V5 = ProtocolVersion.V5


class RecordSink(Protocol):
    """The journal as the core sees it: appends are buffered, batches commit in order."""

    @property
    def committed_batch(self) -> int: ...

    def append(self, record: rec.Record) -> int:
        """Buffer `record`; the number of the batch it lands in."""


def random_client_id() -> str:
    """A client id for a client that sent none: 128 random bits, so it never repeats, not even
    across restarts, and never names a session another client left behind [MQTT-3.1.3-6]."""
    return "ferry-auto-" + secrets.token_hex(16)


class SpoolSink(Protocol):
    """A session's queue kept on disk (`ferry.gateway.store.spool_queue.SpoolQueue`)."""

    head: int
    depth: int
    bytes: int

    def append(self, topic: str, payload: bytes, qos: int, received_ms: int) -> int:
        """Spool one message; the number of the journal batch it is durable with."""

    def has_room(self, size: int) -> bool: ...

    def drop_oldest(self) -> int: ...

    def committed(self, batch: int) -> None: ...


class Broker(ConnectHandling, SubscribeHandling):
    """All sessions, subscriptions and retained messages of one gateway."""

    def __init__(self, config: BrokerConfig, journal: RecordSink, *, now: float, wall: float,
                 new_client_id: Callable[[], str] = random_client_id,
                 access: AccessControl | None = None) -> None:
        self.config = config
        self.access = access
        """Authorisation of client connections; None: every client may do everything (core tests)."""
        self.journal = journal
        self.stats = BrokerStats()
        self.limits = BrokerLimits(config, self.stats)
        self.backed_up: Connection | None = None
        """Set when a QoS 0 delivery found a connection's output over `max_output_buffer_bytes`: the
        network layer stops reading the client whose packet it handles until that output drains."""
        self.sessions: dict[str, Session] = {}
        self.connections: dict[int, Connection] = {}
        self.index = SubscriptionIndex()
        self.retained: dict[str, Message] = {}
        self._wall_offset = wall - now
        self._conn_ids = itertools.count(1)
        self._new_client_id = new_client_id
        self._next_msg_id = 1
        self._appends = 0
        self._last_batch = 0
        """The journal batch of the latest append: what an acknowledgement of it waits for."""
        self._ready: set[Connection] = set()
        self._holding: set[Connection] = set()
        self._pending_wills: dict[str, tuple[float, Connection]] = {}
        self._policies = SessionPolicies()
        self._spools: dict[str, SpoolSink] = {}
        self.disk_low = False
        """Set by the gateway's free-disk guard: refuse QoS 1/2 publishes that need the store."""
        self._handlers = {
            Publish: self._on_publish, Puback: self._on_puback, Pubrec: self._on_pubrec,
            Pubrel: self._on_pubrel, Pubcomp: self._on_pubcomp, Pingreq: self._on_pingreq,
            Subscribe: self._on_subscribe, Unsubscribe: self._on_unsubscribe,
            Disconnect: self._on_disconnect,
        }

    # ------------------------------------------------------------------ journal

    def _record(self, record: rec.Record) -> None:
        self._last_batch = self.journal.append(record)
        self._appends += 1

    def _make_durable(self, message: Message) -> None:
        """Write the message to the store unless a durable reference already holds it there.

        The store forgets a message when its last reference goes, so one that
        is referenced again after that is written again (same id).
        """
        if message.refs == 0:
            if message.msg_id == 0:
                message.msg_id = self._next_msg_id
                self._next_msg_id += 1
            expiry_ms = None if message.expiry_at is None else int(message.expiry_at * 1000)
            self._record(rec.MessageAdded(
                message.msg_id, message.topic, message.payload, message.qos, message.retain,
                delivery.stored_properties(message.properties), expiry_ms, message.origin))

    @property
    def next_msg_id(self) -> int:
        return self._next_msg_id

    def set_next_msg_id(self, msg_id: int) -> None:
        """After a restore: ids continue above every id the store has seen."""
        self._next_msg_id = max(self._next_msg_id, msg_id)

    def wall(self, now: float) -> float:
        return now + self._wall_offset

    # ------------------------------------------------------------------ output

    def _send(self, conn: Connection, data: bytes, wait_batch: int = 0, is_ack: bool = False) -> None:
        """Queue `data` for `conn`, behind anything still waiting for a commit.

        `is_ack` marks a held PUBACK/PUBREC: until it is released it counts
        against the client's unacknowledged publishes (our Receive Maximum).
        """
        if conn.closed or conn.close_reason is not None:
            return  # closing: only what was queued before (and is held for a commit) still goes out
        if conn.held or wait_batch > self.journal.committed_batch:
            conn.held.append((wait_batch, data, is_ack))
            conn.incoming_unacked += is_ack
            self._holding.add(conn)
        else:
            conn.out += data
            self._ready.add(conn)

    def _send_packet(self, conn: Connection, packet: object, wait_batch: int = 0) -> None:
        self._send(conn, encode(packet, conn.protocol_version), wait_batch)

    def _wait_batch(self, appends_before: int) -> int:
        """The batch to wait for if this operation appended records, else 0."""
        return self._last_batch if self._appends != appends_before else 0

    def commit_done(self, batch: int) -> None:
        """The journal committed every batch up to `batch`: release what waited for it."""
        for spool in self._spools.values():
            spool.committed(batch)
        released = []
        for conn in self._holding:
            held = conn.held
            while held and held[0][0] <= batch:
                _, data, is_ack = held.popleft()
                conn.out += data
                conn.incoming_unacked -= is_ack
                self._ready.add(conn)
            if not held:
                released.append(conn)
        self._holding.difference_update(released)

    def take_ready(self) -> set[Connection]:
        """Connections with bytes to write or a close to carry out; the caller clears `out`."""
        ready, self._ready = self._ready, set()
        return ready

    def _close(self, conn: Connection, reason: ReasonCode, send_disconnect: bool = True) -> None:
        if conn.close_reason is not None or conn.closed:
            return
        if send_disconnect and conn.protocol_version is V5 and conn.session is not None:
            self._send_packet(conn, Disconnect(reason))
        conn.close_reason = reason
        self._ready.add(conn)

    # ------------------------------------------------------------------ connections

    def attach_spool(self, client_id: str, spool: SpoolSink) -> None:
        """Spool this internal client's QoS 1/2 messages on disk instead of queueing them in its
        session (memory that grows with the depth); it reads them from `spool` itself."""
        self._spools[client_id] = spool

    @property
    def spools(self) -> dict[str, SpoolSink]:
        return self._spools

    def set_session_policy(self, client_id: str, policy: SessionPolicy) -> None:
        """Give one internal client id its own queue limits and full-queue policy; the id is then
        reserved for connections opened with `internal=True`."""
        self._policies.set(client_id, policy)

    def open_connection(self, peer: str, now: float, internal: bool = False) -> Connection:
        conn = Connection(next(self._conn_ids), peer=peer, last_packet_at=now,
                          inflight_limit=self.config.max_inflight_messages, internal=internal)
        self.connections[conn.conn_id] = conn
        self.stats.connections_total += 1
        return conn

    def protocol_error(self, conn: Connection, error: ProtocolError,
                       version: ProtocolVersion | None = None) -> None:
        """A malformed or forbidden packet: close this connection with the error's reason code.

        `version` is the protocol the connection's decoder learnt from the CONNECT, if it got that
        far: a CONNECT refused for an error is answered with a CONNACK the client can read.
        """
        self.stats.protocol_errors += 1
        log.warning("closing %s (%s): %s", conn.peer, conn.client_id or "-", error)
        if conn.session is None:
            self._refuse_connect(conn, error.reason_code, version)
        self._close(conn, error.reason_code)

    def _refuse_connect(self, conn: Connection, reason: ReasonCode, version: ProtocolVersion | None) -> None:
        if version is None and reason is ReasonCode.UNSUPPORTED_PROTOCOL_VERSION:
            # A level we do not speak: CONNACK return code 0x01 in the format every MQTT 3.x
            # client reads [MQTT-3.1.2-2].
            conn.protocol_version = ProtocolVersion.V311
        elif version is V5 and reason in CONNACK_CODES:
            conn.protocol_version = V5  # the reason code, as MQTT 5 allows before closing (4.13)
        else:
            return  # a 3.1.1 CONNECT that is malformed gets no CONNACK [MQTT-3.1.4-1]
        self._send_packet(conn, Connack(False, reason))

    def _violation(self, conn: Connection, reason: ReasonCode, rule: str, message: str,
                   section: str = "") -> None:
        self.protocol_error(conn, ProtocolError(reason, rule, message, section=section))

    def handle_packet(self, conn: Connection, packet: object, now: float) -> None:
        if conn.close_reason is not None or conn.closed:
            return
        conn.last_packet_at = now
        kind = type(packet)
        if kind is Connect:
            self._on_connect(conn, packet, now)
            return
        if conn.session is None:
            self._violation(conn, ReasonCode.PROTOCOL_ERROR, "MQTT-3.1.0-1",
                            f"{kind.__name__} before CONNECT")
            return
        handler = self._handlers.get(kind)
        if handler is None:
            self._violation(conn, ReasonCode.PROTOCOL_ERROR, "",
                            f"a client may not send {kind.__name__}", section="2.1.2")
            return
        handler(conn, conn.session, packet, now)

    def connection_lost(self, conn: Connection, now: float) -> None:
        """The socket is gone: publish or schedule the will, end or park the session."""
        if conn.closed:
            return
        conn.closed = True
        self.connections.pop(conn.conn_id, None)
        self._ready.discard(conn)
        self._holding.discard(conn)
        self._detach(conn, now)

    def _detach(self, conn: Connection, now: float) -> None:
        """Separate a connection from its session; in-flight deliveries stay for a resend
        with the same packet ids when the client comes back [MQTT-4.4.0-1]."""
        session = conn.session
        if session is None or session.connection is not conn:
            return
        session.connection = None
        if conn.will is not None and not conn.clean_disconnect:
            delay = conn.will.properties.will_delay_interval or 0
            if delay and session.persistent:
                self._pending_wills[session.client_id] = (now + delay, conn)
            else:
                self._publish_will(conn, now)
        if not session.persistent:
            self._end_session(session, now)
        elif session.expiry_interval_s != NEVER_EXPIRES:
            session.expires_at = now + session.expiry_interval_s

    def tick(self, now: float) -> None:
        """Keepalive timeouts, delayed wills and session expiry; call about once a second."""
        for conn in list(self.connections.values()):
            if conn.keepalive_s and conn.session is not None and \
                    now - conn.last_packet_at > conn.keepalive_s * 1.5:
                log.info("keepalive timeout for %s (%s)", conn.client_id, conn.peer)
                self._close(conn, ReasonCode.KEEP_ALIVE_TIMEOUT)
        for client_id, (deadline, conn) in list(self._pending_wills.items()):
            if deadline <= now:
                del self._pending_wills[client_id]
                self._publish_will(conn, now)
        for session in list(self.sessions.values()):
            if session.expires_at is not None and session.expires_at <= now:
                self.stats.sessions_expired += 1
                pending = self._pending_wills.pop(session.client_id, None)
                if pending is not None:
                    self._publish_will(pending[1], now)
                self._end_session(session, now)

    def publish_internal(self, topic: str, payload: bytes, now: float) -> None:
        """Publish a broker-generated message (`$SYS`): QoS 0, retained in memory, never stored."""
        message = Message(0, topic, payload, 0, True, "")
        self.retained[topic] = message
        self._route(message, now)

    # ------------------------------------------------------------------ PUBLISH in

    def _on_publish(self, conn: Connection, session: Session, packet: Publish, now: float) -> None:
        topic = packet.topic
        props = packet.properties
        if conn.protocol_version is V5 and props.topic_alias is not None:
            alias = props.topic_alias
            if alias > self.config.topic_alias_maximum:
                self._violation(conn, ReasonCode.TOPIC_ALIAS_INVALID, "MQTT-3.3.2-9",
                                f"topic alias {alias} above our maximum {self.config.topic_alias_maximum}")
                return
            if topic:
                conn.topic_aliases[alias] = topic
            else:
                topic = conn.topic_aliases.get(alias, "")
                if not topic:
                    self._violation(conn, ReasonCode.PROTOCOL_ERROR, "",
                                    f"topic alias {alias} was never set", section="3.3.2.3.4")
                    return
        qos = packet.qos
        if qos == 2 and packet.packet_id in session.incoming_qos2:
            self.stats.duplicates_qos2 += 1
            self._send_packet(conn, Pubrec(packet.packet_id))
            return
        if qos and conn.protocol_version is V5 and \
                conn.incoming_unacked + len(session.incoming_qos2) >= self.config.receive_maximum:
            self._violation(conn, ReasonCode.RECEIVE_MAXIMUM_EXCEEDED, "MQTT-3.3.4-7",
                            "more unacknowledged QoS 1/2 publishes than our Receive Maximum")
            return
        wall = self.wall(now)
        v5 = conn.protocol_version is V5
        before = self._appends
        refused = self.limits.publish_refusal(conn, topic, now)
        if refused is not None:  # over max_topic_length/levels: not routed, not retained (counted)
            reason = refused if v5 else ReasonCode.SUCCESS
        elif topic.startswith("$") or not self._may_publish(conn, session, topic, now):
            # Topics beginning with $ belong to the server ($SYS) [MQTT-4.7.2-1], others the ACL
            # denies: not routed, not retained; MQTT 5 publishers are told, 3.1.1 ones
            # acknowledged as the spec allows for a publish they may not make [MQTT-3.3.5-2].
            self.stats.publishes_denied += 1
            reason = ReasonCode.NOT_AUTHORIZED if v5 else ReasonCode.SUCCESS
        else:
            message = Message(0, topic, packet.payload, qos, packet.retain, session.client_id,
                              delivery.forwarded_properties(props), delivery.expiry_at(props, wall),
                              received_at=wall, publisher=conn.identity.username if conn.identity else None)
            targets = routing.targets(self.index, self.sessions, message)
            full = self._policies.full_target(self.sessions, targets, topic, len(packet.payload), self.config,
                                              self._spools) if qos else None
            if full is not None:
                self._refuse_publish(conn, packet, full, now)
                return
            if qos and self.disk_low and self._needs_store(packet.retain, targets):
                self._refuse_publish(conn, packet, None, now)
                return
            self.stats.messages_received[qos] += 1
            if packet.retain and self.limits.may_retain(conn, message, self.retained, now):
                self._retain(message)
            self._deliver_all(message, targets, now)
            reason = ReasonCode.SUCCESS if targets or not v5 else ReasonCode.NO_MATCHING_SUBSCRIBERS
        if qos == 0:
            return
        if qos == 2 and reason < 0x80:
            session.incoming_qos2.add(packet.packet_id)
            if session.persistent:
                self._record(rec.IncomingQos2(session.client_id, packet.packet_id))
        self._send(conn, encode_publish_ack(qos, packet.packet_id, reason, conn.protocol_version),
                   self._wait_batch(before), is_ack=qos == 1)

    def _may_publish(self, conn: Connection, session: Session, topic: str, now: float) -> bool:
        access = self.access
        if access is None or conn.internal or access.may_publish(conn.identity, session.client_id, topic):
            return True
        access.deny("publish", conn.identity, session.client_id, f"topic {topic!r}", now)
        return False

    def _needs_store(self, retain: bool, targets: dict[str, routing.Target]) -> bool:
        """Whether a QoS 1/2 publish would write to the store (retained, or for a session that keeps it)."""
        if retain:
            return True
        for client_id, target in targets.items():
            session = self.sessions.get(client_id)
            if target.qos and session is not None and (session.persistent or client_id in self._spools):
                return True
        return False

    def _refuse_publish(self, conn: Connection, packet: Publish, full: Session | None, now: float) -> None:
        """Refuse a QoS 1/2 publish as a whole: nothing routed or acknowledged. MQTT 5 publishers get
        PUBACK/PUBREC 0x97 and may try again; 3.1.1 has no negative acknowledgement, so the
        connection closes and the client resends after reconnecting [MQTT-3.3.5-2]. `full` is the
        session whose queue is full; None: the disk is below the free-space floor."""
        spool = None if full is None else self._spools.get(full.client_id)
        if full is None:
            self.stats.refused_disk_low += 1
            why = "free disk is below store.min_free_disk_bytes"
        elif self._policies.get(full.client_id) is not None:
            self.stats.refused_full += 1
            why = f"spool of {full.client_id} is full ({spool.depth} messages, {spool.bytes} bytes)" \
                if spool is not None else f"queue of {full.client_id} is full ({len(full.queue)} messages)"
        else:
            self.stats.refused_queue_full += 1
            why = f"queue of {full.client_id} is full ({len(full.queue)} messages, {full.queued_bytes} bytes)"
        self._policies.log_refusal(why, conn.client_id, conn.peer, now)
        if conn.protocol_version is V5:
            ack = Puback if packet.qos == 1 else Pubrec
            self._send_packet(conn, ack(packet.packet_id, ReasonCode.QUOTA_EXCEEDED))
        else:
            self._close(conn, ReasonCode.QUOTA_EXCEEDED)

    def _retain(self, message: Message) -> None:
        """Set or clear the retained message of its topic (an empty payload clears) [MQTT-3.3.1-10]."""
        old = self.retained.pop(message.topic, None)
        if old is not None:
            self._release_message(old)
        if not message.payload:
            if old is not None:
                self._record(rec.RetainCleared(message.topic))
            return
        self._make_durable(message)
        message.refs += 1
        self.retained[message.topic] = message
        self._record(rec.RetainSet(message.topic, message.msg_id))

    def _release_message(self, message: Message) -> None:
        if message.refs:
            message.refs -= 1

    def _route(self, message: Message, now: float) -> None:
        """Deliver or queue `message` for every matching session."""
        self._deliver_all(message, routing.targets(self.index, self.sessions, message), now)

    def _deliver_all(self, message: Message, targets: dict[str, routing.Target], now: float) -> None:
        for client_id, target in targets.items():
            session = self.sessions.get(client_id)
            if session is not None:
                self._deliver(session, Delivery(message, target.qos, target.retain,
                                                tuple(target.subscription_ids)), now)

    def _deliver(self, session: Session, item: Delivery, now: float) -> None:
        publisher = item.message.publisher  # None (anonymous, the gateway, restored): nothing to check
        if publisher is not None and not self._policies.admits(session.client_id, item.message.topic, publisher, now):
            self.stats.dropped[DropReason.NOT_ADMITTED] += 1
            return
        if session.read_checked and not self._may_read(session, item.message.topic, now):
            return
        if item.qos and self._policies.ignores(session.client_id, item.message.topic):
            return
        if item.qos and self._spools:
            spool = self._spools.get(session.client_id)
            if spool is not None:
                self._spool(session, spool, item.message, item.qos, now)
                return
        conn = session.connection
        if item.qos == 0:
            if conn is None:
                if not (session.persistent and self.config.queue_qos0_offline):
                    return
            elif conn.output_blocked:
                self.stats.dropped[DropReason.SLOW_SUBSCRIBER] += 1
                self.backed_up = conn
                return
            else:
                self._transmit(conn, item, dup=False, now=now)
                if len(conn.out) > self.config.max_output_buffer_bytes:
                    self.backed_up = conn
                return
        if conn is not None and not session.queue and len(session.inflight) < conn.inflight_limit:
            self._persist_delivery(session, item)
            self._start_flow(session, conn, item, now)
            return
        self._enqueue(session, item)

    def _spool(self, session: Session, spool: SpoolSink, message: Message, qos: int, now: float) -> None:
        """A QoS 1/2 message for a session whose queue is a spool on disk (the Kafka bridge's)."""
        size = len(message.topic_bytes) + len(message.payload)
        if not spool.has_room(size) and not self._policies.make_room(session.client_id, spool, size):
            # Only what no publisher can send again gets here (wills): a full spool refuses the rest.
            self.stats.dropped[DropReason.QUEUE_FULL] += 1
            return
        self._last_batch = spool.append(message.topic, message.payload, qos,
                                        int((message.received_at or self.wall(now)) * 1000))
        self._appends += 1

    def _start_flow(self, session: Session, conn: Connection, item: Delivery, now: float) -> None:
        """Give a QoS 1/2 delivery a packet id and send it."""
        item.packet_id = session.allocate_packet_id()
        item.state = DeliveryState.PUBLISH_SENT
        session.inflight[item.packet_id] = item
        # The packet id goes to the store so that a resend after a restart carries it [MQTT-4.4.0-1]
        # (QoS 2 waits for it, see _transmit; a QoS 1 resend under a new id, if the gateway died
        # before the record was written, is a duplicate QoS 1 allows). The gateway's own clients
        # restart with it and need no ids kept.
        if item.durable and (item.qos == 2 or not conn.internal):
            self._record(rec.InflightAssigned(session.client_id, item.message.msg_id, item.packet_id))
            item.id_batch = self._last_batch
        if not self._transmit(conn, item, dup=False, now=now):
            del session.inflight[item.packet_id]
            self._finish(session, item)

    def _persist_delivery(self, session: Session, item: Delivery) -> None:
        if session.persistent and item.qos > 0:
            message = item.message
            self._make_durable(message)
            message.refs += 1
            item.durable = True
            self._record(rec.Enqueued(session.client_id, message.msg_id, item.qos, item.subscription_ids))

    def _enqueue(self, session: Session, item: Delivery) -> None:
        size = len(item.message.payload)
        max_messages, max_bytes, warn = self._policies.limits(session.client_id, self.config)
        reason = (DropReason.QUEUE_FULL if len(session.queue) >= max_messages
                  else DropReason.QUEUE_BYTES if session.queued_bytes + size > max_bytes else None)
        if reason is not None:
            if warn:
                log.warning("queue of %s is full: dropped a message for it (%s)", session.client_id,
                            item.message.topic)
            self.stats.dropped[reason] += 1
            return
        self._persist_delivery(session, item)
        session.queue.append(item)
        session.queued_bytes += size

    def _fill_window(self, session: Session, now: float) -> None:
        conn = session.connection
        if conn is None:
            return
        unsent = session.unsent
        while unsent and len(session.inflight) - len(unsent) < conn.inflight_limit:
            self.stats.resent += 1
            self._transmit(conn, session.inflight[unsent.popleft()], dup=True, now=now)
        wall = self.wall(now)
        while session.queue and len(session.inflight) < conn.inflight_limit:
            item = session.queue.popleft()
            session.queued_bytes -= len(item.message.payload)
            if item.message.expiry_at is not None and item.message.expiry_at <= wall:
                self.stats.dropped[DropReason.EXPIRED] += 1
                self._finish(session, item)
                continue
            if item.qos == 0:
                self._transmit(conn, item, dup=False, now=now)
            else:
                self._start_flow(session, conn, item, now)

    def _transmit(self, conn: Connection, item: Delivery, *, dup: bool, now: float) -> bool:
        """Send one PUBLISH; False when it is larger than the client accepts [MQTT-3.1.2-25]."""
        data = delivery.publish_bytes(item, conn.protocol_version, dup, self.wall(now))
        if len(data) > conn.max_packet_size:
            self.stats.dropped[DropReason.PACKET_TOO_LARGE] += 1
            return False
        self.stats.messages_sent[item.qos] += 1
        # A QoS 2 delivery waits for its packet id to be durable, so a resend after a
        # crash carries the same id [MQTT-4.4.0-1].
        self._send(conn, data, item.id_batch if item.qos == 2 else 0)
        return True

    def _finish(self, session: Session, item: Delivery) -> None:
        """A delivery is complete (acknowledged, expired or dropped)."""
        if item.durable:
            self._record(rec.Dequeued(session.client_id, item.message.msg_id))
            self._release_message(item.message)

    # ------------------------------------------------------------------ acks

    def _on_puback(self, conn: Connection, session: Session, packet: Puback, now: float) -> None:
        item = session.inflight.get(packet.packet_id)
        if item is None or item.qos != 1:
            return
        self._take_inflight(session, packet.packet_id)
        self._finish(session, item)
        if session.queue or session.unsent:
            self._fill_window(session, now)

    def _on_pubrec(self, conn: Connection, session: Session, packet: Pubrec, now: float) -> None:
        item = session.inflight.get(packet.packet_id)
        if item is None or item.qos != 2:
            self._send_packet(conn, Pubrel(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
                                           if conn.protocol_version is V5 else ReasonCode.SUCCESS))
            return
        if packet.reason_code >= 0x80:
            self._take_inflight(session, packet.packet_id)
            self._finish(session, item)
            self._fill_window(session, now)
            return
        before = self._appends
        if item.state is DeliveryState.PUBLISH_SENT:
            if session.unsent and packet.packet_id in session.unsent:
                session.unsent.remove(packet.packet_id)  # received before the disconnect after all
            item.state = DeliveryState.PUBREL_SENT
            if item.durable:
                # The store ends the queue entry here; only the packet id stays until PUBCOMP.
                self._record(rec.PubrecReceived(session.client_id, packet.packet_id))
                self._release_message(item.message)
        # PUBREL only once PubrecReceived is durable: a PUBREL that overtook it, then a crash,
        # would restore the delivery as unsent and resend the message the client already has.
        self._send_packet(conn, Pubrel(packet.packet_id), self._wait_batch(before))

    def _take_inflight(self, session: Session, packet_id: int) -> None:
        del session.inflight[packet_id]
        if session.unsent and packet_id in session.unsent:
            session.unsent.remove(packet_id)  # acknowledged before this connection resent it

    def _on_pubcomp(self, conn: Connection, session: Session, packet: Pubcomp, now: float) -> None:
        item = session.inflight.get(packet.packet_id)
        if item is None or item.state is not DeliveryState.PUBREL_SENT:
            return
        del session.inflight[packet.packet_id]
        if item.durable:
            self._record(rec.PubcompReceived(session.client_id, packet.packet_id))
        self._fill_window(session, now)

    def _on_pubrel(self, conn: Connection, session: Session, packet: Pubrel, now: float) -> None:
        if packet.packet_id in session.incoming_qos2:
            before = self._appends
            session.incoming_qos2.discard(packet.packet_id)
            if session.persistent:
                self._record(rec.IncomingReleased(session.client_id, packet.packet_id))
            # PUBCOMP only once IncomingReleased is durable: the client reuses the packet id
            # after PUBCOMP, and a restored id would make its next message look like a duplicate.
            self._send_packet(conn, Pubcomp(packet.packet_id), self._wait_batch(before))
        else:
            self._send_packet(conn, Pubcomp(packet.packet_id, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND
                                            if conn.protocol_version is V5 else ReasonCode.SUCCESS))
