"""The fuzzer's broker-core target: packet sequences from several connections, journal batches sealed
and committed, time, lost connections and restarts, with the invariants of `CoreRun.check` after
every step (bench/fuzz.py runs it)."""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.session import Connection, Delivery, DeliveryState
from ferry.gateway.mqtt import (
    Auth, Connack, Connect, Decoder, Disconnect, EMPTY_PROPERTIES, Pingreq, Properties, ProtocolError,
    ProtocolVersion, Puback, Pubcomp, Publish, Pubrec, Pubrel, ReasonCode, Suback, Subscribe, Subscription,
    Unsuback, Unsubscribe, Will, encode, encode_properties, encode_publish,
)
from ferry.bench.fuzz_input import FuzzFailure, Source
from ferry.bench.fuzz_codec import PRIME, make_frame

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5



class ModelJournal:
    """The journal as the core sees it, with batches sealed and committed when a step says so.

    Like the real one: appends go to ``pending_batch`` and return its number; ``seal`` hands that
    batch to the writer (a new pending batch starts), batches commit in order. Several may be sealed
    and not committed. ``arm`` models the writer thread sealing by itself (a flush asked for while it
    wrote): the next append's batch is sealed right after that append, in the middle of whatever
    the core is doing.
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, object]] = []
        self.pending_batch = 1
        self.committed_batch = 0
        self.sealed: deque[int] = deque()
        self.armed = False

    def append(self, record: object) -> int:
        batch = self.pending_batch
        self.records.append((batch, record))
        if self.armed:
            self.armed = False
            self.seal()
        return batch

    def seal(self) -> None:
        if self.records and self.records[-1][0] == self.pending_batch:
            self.sealed.append(self.pending_batch)
            self.pending_batch += 1

    def commit(self) -> int | None:
        """Commit the oldest sealed batch; its number, or None when none is sealed."""
        if not self.sealed:
            return None
        self.committed_batch = self.sealed.popleft()
        return self.committed_batch

    def committed_records(self) -> Iterator[object]:
        return (record for batch, record in self.records if batch <= self.committed_batch)


_DELIVERY_RECORDS = frozenset({"MessageAdded", "Enqueued", "InflightAssigned", "Dequeued"})
"""What deliveries append: a SUBACK goes out before the retained messages it brings are queued, a
CONNACK before the session's queue starts to flow, so neither waits for these."""


def _ack_wait(kind: type, appended: list[tuple[int, object]]) -> int:
    """The batch an acknowledgement of a `kind` packet must wait for, given the records (batch,
    record) that handling it appended: the last one it covers (0: none)."""
    if kind in (Subscribe, Connect):
        appended = [(batch, record) for batch, record in appended
                    if type(record).__name__ not in _DELIVERY_RECORDS]
    return appended[-1][0] if appended else 0


_ACK_FOR = {Publish: None, Pubrel: Pubcomp, Subscribe: Suback, Unsubscribe: Unsuback, Connect: Connack,
            Pubrec: Pubrel}


@dataclass
class Slot:
    """One simulated client connection (a slot is reused after its connection is gone)."""

    conn: Connection
    decoder: Decoder
    out_decoder: Decoder | None = None
    expect: list[tuple[type, int | None, int, str | None]] = field(default_factory=list)
    """Acknowledgements owed: (packet type, packet id, batch that must commit first, message tag)."""
    connected: bool = False
    version: ProtocolVersion = V311
    seen_ids: list[int] = field(default_factory=list)
    """Packet ids of QoS 1/2 PUBLISHes and PUBRELs the broker sent here (for realistic acks)."""
    seen_qos2: list[int] = field(default_factory=list)
    closing_flushed: bool = False
    """The core had marked the connection closing when its output was last taken: the network layer
    has written it and half-closed the socket (`write_eof`), so nothing more can be sent."""


KNOWN_CORE_DEFECTS: frozenset[str] = frozenset()
"""Failure kinds of the core target that are reported and not fixed yet: the in-suite run tolerates
them (counting them), ``ferry bench fuzz`` reports them. Each has an xfail test with its reproducer
in tests/bench/test_fuzz.py; remove the kind here when its fix lands."""


class CoreRun:
    """A broker core with a model journal, driven by steps; :meth:`check` holds after each step.

    Steps (tuples, printable and replayable): ``("open", slot)``, ``("send", slot, bytes)``,
    ``("seal",)``, ``("arm",)``, ``("commit",)``, ``("tick", seconds)``, ``("lost", slot)``,
    ``("blocked", slot, bool)``, ``("restart",)``.

    Invariants (the failure kinds): no exception from the core; ``ack-before-commit``: no PUBACK,
    PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK or CONNACK goes out before the batch holding the
    records its packet caused has committed; ``inflight-over-limit``: a session never has more
    deliveries in flight than its connection's limit (``resume-over-receive-maximum`` when the excess
    was already in flight when the client reconnected with a smaller Receive Maximum);
    ``closed-connection-output``: nothing is queued for, or handed to the network layer for, a
    connection after ``connection_lost``; ``output-after-close``: nor after the core marked it closing
    and its output was taken (the network layer half-closes it then); ``session-on-closed-connection``; ``undecodable-output``;
    ``publish-too-large`` (over the client's Maximum Packet Size); ``stuck-ack``: nothing held for a
    commit waits for a batch that holds no record (nothing would ever seal it); ``dangling-record``: every record
    the core appends refers to a session and message the store has; ``restart-lost-acked``: after a
    restart from the committed records, every QoS 1/2 message whose PUBACK/PUBREC was released and
    that a persistent session still held is still held.
    """

    SLOTS = 4

    def __init__(self, config: BrokerConfig | None = None, tolerate: frozenset[str] = frozenset()) -> None:
        from ferry.gateway.store.state import DurableState

        self.config = config or BrokerConfig(max_inflight_messages=3, max_queued_messages=6, receive_maximum=4,
                                             topic_alias_maximum=4, max_packet_size_bytes=400,
                                             max_keepalive_s=120)
        self.tolerate = tolerate
        self.tolerated: dict[str, int] = {}
        self.now = 1000.0
        self.journal = ModelJournal()
        self._ids = itertools.count(1)
        self.broker = self._new_broker()
        self.slots: list[Slot | None] = [None] * self.SLOTS
        self.steps: list[tuple] = []
        self.acked_tags: set[str] = set()
        """Payloads of QoS 1/2 publishes whose PUBACK/PUBREC the broker released to the publisher."""
        self.restarts = 0
        self._store = DurableState()
        """Every record appended so far (committed or not), to catch records that refer to nothing."""
        self._applied = 0
        self._routed: dict[str, set[Delivery]] = {}
        """Message tag -> the deliveries its PUBLISH made (what sessions held right after it was handled)."""
        self._resumed_inflight: dict[int, int] = {}
        """Connection id -> deliveries its session had in flight when the connection attached to it."""

    def _new_broker(self) -> Broker:
        return Broker(self.config, self.journal, now=self.now, wall=1_700_000_000.0,
                      new_client_id=lambda: f"auto-{next(self._ids)}")

    def fail(self, kind: str, message: str) -> None:
        """A violated invariant: raise, unless ``kind`` is tolerated (then count it)."""
        if kind in self.tolerate:
            self.tolerated[kind] = self.tolerated.get(kind, 0) + 1
            return
        raise FuzzFailure(message, kind)

    # ------------------------------------------------------------ steps

    def apply(self, step: tuple) -> None:
        self.steps.append(step)
        kind = step[0]
        if kind == "open":
            self._open(step[1])
        elif kind == "send":
            self._send(step[1], step[2])
        elif kind == "seal":
            self.journal.seal()
        elif kind == "arm":
            self.journal.armed = True
        elif kind == "commit":
            batch = self.journal.commit()
            if batch is not None:
                self.broker.commit_done(batch)
        elif kind == "tick":
            self.now += step[1]
            self.broker.tick(self.now)
        elif kind == "lost":
            slot = self.slots[step[1]]
            if slot is not None:
                self.broker.connection_lost(slot.conn, self.now)
        elif kind == "blocked":
            slot = self.slots[step[1]]
            if slot is not None:
                slot.conn.output_blocked = step[2]
        elif kind == "restart":
            self._restart()
        else:
            raise ValueError(f"unknown step {step!r}")
        self._drain()
        self.check()

    def _open(self, i: int) -> None:
        old = self.slots[i]
        if old is not None and not old.conn.closed:
            self.broker.connection_lost(old.conn, self.now)
        conn = self.broker.open_connection(f"127.0.0.1:{10000 + i}", self.now)
        self.slots[i] = Slot(conn, Decoder(server_side=True, max_packet_size=self.config.max_packet_size_bytes))

    def _send(self, i: int, data: bytes) -> None:
        """As the network layer's `data_received`: decode, hand packets to the core, or the error."""
        slot = self.slots[i]
        if slot is None or slot.conn.closed or slot.conn.close_reason is not None:
            return
        broker, journal = self.broker, self.journal
        try:
            packets = slot.decoder.feed(data)
            error = None
        except ProtocolError as exc:
            packets, error = list(exc.packets), exc
        for packet in packets:
            before = len(journal.records)
            broker.handle_packet(slot.conn, packet, self.now)
            if type(packet) is Connect:
                slot.version = packet.protocol_version
                session = slot.conn.session
                if session is not None:
                    self._resumed_inflight[slot.conn.conn_id] = len(session.inflight)
            ack = _ACK_FOR.get(type(packet))
            if type(packet) is Publish and packet.qos:
                ack = Puback if packet.qos == 1 else Pubrec
            elif type(packet) is Pubrec and packet.reason_code >= 0x80:
                ack = None  # a refused delivery ends without a PUBREL
            if ack is not None:
                wait = _ack_wait(type(packet), journal.records[before:])
                packet_id = getattr(packet, "packet_id", None)
                tag = None
                if type(packet) is Publish and packet.payload:
                    tag = packet.payload.decode("latin-1")
                    self._routed.setdefault(tag, set()).update(self._holders(tag))
                slot.expect.append((ack, packet_id, wait, tag))
        if error is not None:
            broker.protocol_error(slot.conn, error, slot.decoder.protocol_version)

    def _holders(self, tag: str) -> Iterator[Delivery]:
        """The deliveries of the message with this payload that sessions hold now."""
        payload = tag.encode("latin-1")
        for session in self.broker.sessions.values():
            for item in (*session.inflight.values(), *session.queue):
                if item.qos and item.message.payload == payload:
                    yield item

    def _restart(self) -> None:
        """A crash: uncommitted batches are lost; a new core restores from the committed records."""
        from ferry.gateway.broker.recovery import restore
        from ferry.gateway.store.state import DurableState

        old = self.broker
        must_keep: dict[str, set[str]] = {}
        for session in old.sessions.values():
            if not session.persistent:
                continue
            # Only deliveries that the acknowledged PUBLISH itself made: the same retained message
            # delivered again later, for a subscription whose SUBACK never went out, may be lost with it.
            must_keep[session.client_id] = {
                tag for item in (*session.inflight.values(), *session.queue)
                if item.qos and item.state is not DeliveryState.PUBREL_SENT and item.message.expiry_at is None
                and (tag := item.message.payload.decode("latin-1")) in self.acked_tags
                and item in self._routed.get(tag, ())}
        state = DurableState()
        for record in self.journal.committed_records():
            state.apply(record)
        state.collect_garbage()
        self.journal.records = [(b, r) for b, r in self.journal.records if b <= self.journal.committed_batch]
        self.journal.sealed.clear()
        self.journal.armed = False
        self.journal.pending_batch = self.journal.committed_batch + 1
        self._store, self._applied = DurableState(), 0
        for _, record in self.journal.records:
            self._store.apply(record)
        self._store.dangling_references = 0  # counted when they were appended
        self._applied = len(self.journal.records)
        self.broker = self._new_broker()
        restore(self.broker, state, self.now)
        self.slots = [None] * self.SLOTS
        self.restarts += 1
        for client_id, tags in must_keep.items():
            session = self.broker.sessions.get(client_id)
            kept = set() if session is None else {
                item.message.payload.decode("latin-1") for item in (*session.inflight.values(), *session.queue)}
            lost = tags - kept
            if lost:
                self.fail("restart-lost-acked",
                          f"restart lost acknowledged messages {sorted(lost)} of session {client_id!r}")

    # ------------------------------------------------------------ output and invariants

    def _drain(self) -> None:
        ready = self.broker.take_ready()
        for i, slot in enumerate(self.slots):
            if slot is None:
                continue
            conn = slot.conn
            if conn.closed:
                if conn in ready:
                    self.fail("closed-connection-output",
                              f"slot {i}: a closed connection was handed to the network layer to write")
                if conn.out:
                    self.fail("closed-connection-output",
                              f"slot {i}: {len(conn.out)} bytes queued for a closed connection")
                    conn.out.clear()
                continue
            if not conn.out:
                slot.closing_flushed = conn.close_reason is not None and not conn.held
                continue
            if slot.closing_flushed:
                self.fail("output-after-close", f"slot {i}: {len(conn.out)} bytes queued after the connection was "
                          f"closed with {conn.close_reason!r} and its last output written (the network layer has "
                          "called write_eof(): writing more raises RuntimeError in its flush)")
            slot.closing_flushed = conn.close_reason is not None and not conn.held
            data = bytes(conn.out)
            conn.out.clear()
            if slot.out_decoder is None:
                slot.out_decoder = Decoder(server_side=False, protocol_version=conn.protocol_version)
            try:
                packets = slot.out_decoder.feed(data)
            except ProtocolError as exc:
                raise FuzzFailure(f"slot {i}: the broker sent bytes its peer cannot decode: {exc}; "
                                  f"{data.hex()}", "undecodable-output") from None
            for packet in packets:
                self._check_output(i, slot, packet)

    def _check_output(self, i: int, slot: Slot, packet) -> None:
        conn = slot.conn
        kind = type(packet)
        if kind is Publish:
            size = len(encode(packet, conn.protocol_version))
            if size > conn.max_packet_size:
                self.fail("publish-too-large", f"slot {i}: {size}-byte PUBLISH to a client whose maximum "
                                               f"packet size is {conn.max_packet_size} [MQTT-3.1.2-24]")
            if packet.qos:
                slot.seen_ids.append(packet.packet_id)
                if packet.qos == 2:
                    slot.seen_qos2.append(packet.packet_id)
        elif kind is Pubrel:
            slot.seen_qos2.append(packet.packet_id)
        if kind not in (Puback, Pubrec, Pubcomp, Suback, Unsuback, Connack, Pubrel):
            return
        packet_id = getattr(packet, "packet_id", None)
        for n, (ack, expected_id, wait, tag) in enumerate(slot.expect):
            if ack is kind and expected_id == packet_id:
                del slot.expect[n]
                if wait > self.journal.committed_batch:
                    self.fail("ack-before-commit",
                              f"slot {i}: {packet!r} sent before batch {wait} committed (committed: "
                              f"{self.journal.committed_batch}): acknowledged before it is durable")
                if tag is not None and packet.reason_code < 0x80:
                    self.acked_tags.add(tag)
                return

    def check(self) -> None:
        broker = self.broker
        records = self.journal.records
        store = self._store
        while self._applied < len(records):
            record = records[self._applied][1]
            self._applied += 1
            dangling = store.dangling_references
            store.apply(record)
            if store.dangling_references != dangling:
                self.fail("dangling-record", f"the core appended {record!r}, which refers to a session, message "
                                             "or packet id the store does not have")
        for conn in broker.connections.values():
            if conn.closed:
                self.fail("closed-connection-output", f"closed connection {conn.conn_id} is still in "
                                                      "broker.connections")
            pending = self.journal.pending_batch
            if conn.held and conn.held[-1][0] >= pending and not (records and records[-1][0] == pending):
                self.fail("stuck-ack", f"connection {conn.conn_id} holds output for batch {conn.held[-1][0]}, "
                          f"which has no record: nothing will seal it (pending batch {pending})")
        for session in broker.sessions.values():
            conn = session.connection
            if conn is None:
                continue
            if conn.closed:
                self.fail("session-on-closed-connection", f"session {session.client_id!r} is attached to a "
                          f"closed connection {conn.conn_id}: its deliveries would vanish")
            if conn.session is not session:
                self.fail("session-on-closed-connection",
                          f"session {session.client_id!r} and its connection disagree")
            inflight = len(session.inflight) - len(session.unsent)  # sent on this connection
            if inflight > conn.inflight_limit:
                if inflight <= self._resumed_inflight.get(conn.conn_id, 0):
                    self.fail("resume-over-receive-maximum",
                              f"session {session.client_id!r} resumed with {inflight} deliveries in flight and "
                              f"resent them all to a client whose Receive Maximum is {conn.inflight_limit} "
                              "[MQTT-3.3.4-9]")
                else:
                    self.fail("inflight-over-limit",
                              f"session {session.client_id!r} has {inflight} deliveries in flight, over the "
                              f"connection's limit {conn.inflight_limit}")

    # ------------------------------------------------------------ reproducer

    def reproducer(self) -> str:
        lines = ["from ferry.bench.fuzz_core import CoreRun", "run = CoreRun()", "for step in ["]
        versions: dict[int, ProtocolVersion | None] = {}
        for step in self.steps:
            comment = ""
            if step[0] == "open":
                versions[step[1]] = None
            elif step[0] == "send":
                comment = _describe_bytes(step[2], versions, step[1])
            lines.append(f"    {step!r},{'  # ' + comment if comment else ''}")
        lines.append("]:\n    run.apply(step)")
        return "\n".join(lines) + "\n"


def _describe_bytes(data: bytes, versions: dict[int, ProtocolVersion | None], i: int) -> str:
    version = versions.get(i)
    decoder = Decoder(server_side=True)
    try:
        if version is not None:
            decoder.feed(PRIME[version])
        packets = decoder.feed(data)
        if packets and type(packets[0]) is Connect:
            versions[i] = packets[0].protocol_version
        return ", ".join(repr(p) for p in packets)
    except ProtocolError as exc:
        return f"ProtocolError: {exc}"


# ------------------------------------------------------------ core step generator

_CLIENT_IDS = ("a", "b", "c", "")
_TOPICS = ("a", "a/b", "a/b/c", "b", "$SYS/x", "x/y/z", "/", "a//b", "é/ü", "$share/g/a")
_BAD_TOPICS = ("", "a/+", "#", "a/\x00")
_FILTERS = ("a", "a/#", "+/b", "#", "+", "$SYS/#", "$share/g/a", "$share/g/#", "a/+/c", "a/b", "x/#",
            "+/+/+", "$SYS/x", "/")
_BAD_FILTERS = ("", "a/#/b", "$share//a", "a+", "$share/g")


def _topic(src: Source) -> str:
    return src.choice(_BAD_TOPICS) if src.chance(0.02) else src.choice(_TOPICS)


def _filter(src: Source) -> str:
    return src.choice(_BAD_FILTERS) if src.chance(0.02) else src.choice(_FILTERS)


def _v5_publish_props(src: Source) -> Properties:
    if not src.chance(0.4):
        return EMPTY_PROPERTIES
    values: dict = {}
    if src.chance(0.4):
        values["topic_alias"] = src.choice((1, 2, 4, 5, 100))
    if src.chance(0.3):
        values["message_expiry_interval"] = src.choice((0, 1, 5, 3600))
    if src.chance(0.2):
        values["payload_format_indicator"] = src.int(0, 1)
    if src.chance(0.2):
        values["response_topic"] = "r/t"
        values["correlation_data"] = b"c"
    if src.chance(0.2):
        values["user_properties"] = (("k", "v"),)
    if src.chance(0.01):
        values["subscription_identifiers"] = (1,)  # a client may not send one [MQTT-3.3.4-6]
    return Properties(**values)


def _connect_packet(src: Source) -> tuple[Connect, ProtocolVersion]:
    version = V5 if src.chance(0.5) else V311
    v5 = version is V5
    will = None
    if src.chance(0.3):
        will_props = Properties(will_delay_interval=src.choice((1, 3, 30))) if v5 and src.chance(0.5) \
            else EMPTY_PROPERTIES
        will = Will(src.choice(("a", "a/b", "w")), b"will", src.int(0, 2), src.chance(0.3), will_props)
    props = EMPTY_PROPERTIES
    if v5:
        values: dict = {}
        if src.chance(0.6):
            values["session_expiry_interval"] = src.choice((0, 2, 30, 0xFFFF_FFFF))
        if src.chance(0.4):
            values["receive_maximum"] = src.int(1, 5)
        if src.chance(0.3):
            values["maximum_packet_size"] = src.choice((20, 40, 80, 200, 100_000))
        if src.chance(0.2):
            values["topic_alias_maximum"] = src.int(0, 3)
        if src.chance(0.03):
            values["authentication_method"] = "SCRAM"
        props = Properties(**values)
    keepalive = src.choice((0, 1, 5, 60, 65535))
    return Connect(src.choice(_CLIENT_IDS), version, src.chance(0.5), keepalive, will=will,
                   properties=props), version


def _packet_id(src: Source, seen: list[int]) -> int:
    if seen and src.chance(0.7):
        return src.choice(seen[-8:])
    return src.choice((1, 2, 3, 7, 65535, 0)) if src.chance(0.95) else src.int(0, 65535)


def _client_bytes(src: Source, slot: Slot, tag: Callable[[], str]) -> bytes:
    """Bytes a (possibly misbehaving) client sends next."""
    version = slot.version
    v5 = version is V5
    if not slot.connected or src.chance(0.01):
        if src.chance(0.97) or slot.connected:
            packet, version = _connect_packet(src)
            if not slot.connected:
                slot.version, slot.connected = version, True
            try:
                return encode(packet, version)
            except ValueError:
                return encode(Connect("a", version, True, 60), version)
    if src.chance(0.005):
        return src.bytes(src.int(1, 12))
    kind = src.int(0, 99)
    if kind < 35:
        qos = src.int(0, 2)
        packet_id = _packet_id(src, []) if qos else None
        if packet_id == 0 and not src.chance(0.1):
            packet_id = 1
        props = _v5_publish_props(src) if v5 else EMPTY_PROPERTIES
        topic = _topic(src) if src.chance(0.5) else src.choice(_TOPICS[:4])
        payload = b"" if src.chance(0.05) else tag().encode("latin-1")
        retain = src.chance(0.15)
        dup = bool(qos) and src.chance(0.1)
        try:
            props_bytes = encode_properties(props) if v5 else b""
        except ValueError:
            props_bytes = b"\x00"
        return encode_publish(topic.encode(), payload, qos, retain, dup, packet_id or (None if not qos else 0),
                              props_bytes, version) if qos == 0 or packet_id else \
            bytes((0x30 | qos << 1, 5)) + b"\x00\x01a\x00\x00"  # QoS 1/2 with packet id 0
    if kind < 50:
        subs = []
        for _ in range(src.int(1, 3)):
            if v5:
                subs.append(Subscription(_filter(src), src.int(0, 2), src.chance(0.05), src.chance(0.2),
                                         src.int(0, 2)))
            else:
                subs.append(Subscription(_filter(src), src.int(0, 2)))
        props = Properties(subscription_identifiers=(src.int(1, 5),)) if v5 and src.chance(0.3) \
            else EMPTY_PROPERTIES
        return _encode_loose(Subscribe(_packet_id(src, []) or 1, tuple(subs), props), version)
    if kind < 56:
        filters = tuple(_filter(src) for _ in range(src.int(1, 2)))
        return _encode_loose(Unsubscribe(_packet_id(src, []) or 1, filters), version)
    if kind < 72:
        return encode(Puback(_packet_id(src, slot.seen_ids) or 1), version)
    if kind < 80:
        code = ReasonCode.UNSPECIFIED_ERROR if v5 and src.chance(0.15) else ReasonCode.SUCCESS
        return encode(Pubrec(_packet_id(src, slot.seen_qos2) or 1, code), version)
    if kind < 86:
        return encode(Pubcomp(_packet_id(src, slot.seen_qos2) or 1), version)
    if kind < 91:
        return encode(Pubrel(_packet_id(src, []) or 1), version)
    if kind < 95:
        return encode(Pingreq(), version)
    if kind < 99:
        if not v5:
            return encode(Disconnect(), version)
        code = ReasonCode.DISCONNECT_WITH_WILL_MESSAGE if src.chance(0.3) else ReasonCode.NORMAL_DISCONNECTION
        props = Properties(session_expiry_interval=src.choice((0, 5, 100))) if src.chance(0.4) \
            else EMPTY_PROPERTIES
        return encode(Disconnect(code, props), version)
    return encode(Auth(), V5) if v5 else b"\xf0\x00"


def _encode_loose(packet, version: ProtocolVersion) -> bytes:
    """Encode, or for a filter the encoder refuses (empty, misplaced '#'), build the bytes by hand."""
    try:
        return encode(packet, version)
    except ValueError:
        pass
    body = bytearray(packet.packet_id.to_bytes(2, "big"))
    if version is V5:
        body += b"\x00"
    if type(packet) is Subscribe:
        for sub in packet.subscriptions:
            raw = sub.topic_filter.encode()
            body += len(raw).to_bytes(2, "big") + raw + bytes((sub.qos,))
        return make_frame(0x82, bytes(body))
    for topic_filter in packet.topic_filters:
        raw = topic_filter.encode()
        body += len(raw).to_bytes(2, "big") + raw
    return make_frame(0xA2, bytes(body))


def generate_core_steps(src: Source, run: CoreRun, n_steps: int) -> Iterator[tuple]:
    """Steps chosen from ``src``, looking at the run's state (connections, packet ids seen)."""
    counter = itertools.count()

    def tag() -> str:
        return f"m{next(counter)}"

    for _ in range(n_steps):
        r = src.int(0, 99)
        i = src.int(0, CoreRun.SLOTS - 1)
        slot = run.slots[i]
        if slot is None or (slot.conn.closed and src.chance(0.8)):
            yield ("open", i)
        elif r < 55:
            yield ("send", i, _client_bytes(src, slot, tag))
        elif r < 66:
            yield ("seal",)
        elif r < 70:
            yield ("arm",)
        elif r < 84:
            yield ("commit",)
        elif r < 89:
            yield ("tick", src.choice((0.5, 1.0, 3.0, 10.0, 100.0)))
        elif r < 95 or slot.conn.close_reason is not None:
            yield ("lost", i)
        elif r < 98:
            yield ("blocked", i, not slot.conn.output_blocked)
        else:
            yield ("restart",)


def fuzz_core_once(src: Source, n_steps: int | None = None, tolerate: frozenset[str] = frozenset()) -> CoreRun:
    """Run one generated sequence; raises on a violated invariant (the run is on ``exc.run``)."""
    run = CoreRun(tolerate=tolerate)
    if n_steps is None:
        n_steps = src.int(5, 80)
    try:
        for step in generate_core_steps(src, run, n_steps):
            run.apply(step)
    except Exception as exc:
        exc.run = run  # type: ignore[attr-defined]
        raise
    return run


