"""Hostile input against a real `ferry gateway` process: one test per class of bad bytes.

Every class is checked the same three ways (the `attack` helper does (b) and (c)):

(a) only the offending connection ends: an MQTT 5 peer reads a DISCONNECT (or, for a bad CONNECT,
    a CONNACK) naming the right reason code before EOF; an MQTT 3.1.1 peer sees its socket close;
(b) a bystander paho client connected before the attack is still connected afterwards and still
    gets a QoS 1 round trip through the gateway;
(c) nothing already acknowledged is lost: a persistent subscriber session had QoS 1 messages
    queued (and PUBACKed to their publisher) before the attack; afterwards, and for the worst
    classes after a gateway restart too, it receives every one of them.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import pytest

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES, Connack, Connect, Decoder, Disconnect, Properties, ProtocolVersion, ReasonCode, Suback,
    Subscribe, Subscription, encode, encode_publish,
)
from ferry.gateway.mqtt._wire import encode_vbi
from ferry.gateway.process import GatewayProcess
from tests.gateway.paho_client import TestClient

pytestmark = pytest.mark.integration

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
MAX_PACKET_SIZE = 65_536
QUEUED = 5
RC = ReasonCode


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    data_dir = tmp_path_factory.mktemp("hostile")
    config = f"[broker]\nmax_packet_size_bytes = {MAX_PACKET_SIZE}\n"
    with GatewayProcess(data_dir, config_text=config) as gw:
        yield gw


# ------------------------------------------------------------------ (b) and (c): the witnesses


@dataclass
class Witnesses:
    """A bystander connected through the attack and a persistent session with QoS 1 messages queued."""

    gateway: GatewayProcess
    name: str
    bystander: TestClient | None = None
    queued: list[bytes] = field(default_factory=list)
    log_offset: int = 0

    @property
    def keeper_id(self) -> str:
        return f"keeper-{self.name}"

    @property
    def keeper_topic(self) -> str:
        return f"hostile/{self.name}/queued"

    def setup(self) -> None:
        self.log_offset = len(self.gateway.log_text())
        port = self.gateway.port
        with TestClient(port, self.keeper_id, clean=False) as keeper:
            keeper.subscribe(self.keeper_topic, qos=1)
        self.bystander = TestClient(port, f"bystander-{self.name}", v5=True)
        self.bystander.subscribe(f"hostile/{self.name}/echo", qos=1)
        self.queued = [f"{self.name}-{i}".encode() for i in range(QUEUED)]
        for payload in self.queued:  # acknowledged: on disk for the offline keeper session
            self.bystander.publish(self.keeper_topic, payload, qos=1)

    def round_trip(self, payload: bytes = b"ping", timeout_s: float = 10.0) -> float:
        """(b) A QoS 1 publish from the bystander comes back to it; returns the seconds it took."""
        assert self.bystander is not None
        assert self.bystander.disconnects.empty(), "the bystander was disconnected by the attack"
        started = time.monotonic()
        self.bystander.publish(f"hostile/{self.name}/echo", payload, qos=1)
        message = self.bystander.expect(1, timeout_s=timeout_s)[0]
        assert (message.payload, message.qos) == (payload, 1)
        return time.monotonic() - started

    def verify(self, restart: bool) -> None:
        self.round_trip(b"after the attack")
        if restart:
            self.close()
            self.gateway.stop()
            self.gateway.start()
        # (c) every acknowledged message still reaches the persistent session, in order.
        with TestClient(self.gateway.port, self.keeper_id, clean=False) as keeper:
            assert keeper.session_present
            got = [m.payload for m in keeper.expect(QUEUED)]
        assert got == self.queued
        # Nothing the attack did may raise inside the gateway (an error in the event loop's flush
        # also skips every other connection's output of that turn).
        errors = [line for line in self.gateway.log_text()[self.log_offset:].splitlines()
                  if "Traceback" in line or "Exception in callback" in line]
        assert not errors, f"the gateway logged {len(errors)} errors during the attack, first: {errors[:2]}"

    def close(self) -> None:
        if self.bystander is not None:
            self.bystander.close()
            self.bystander = None


@contextmanager
def attack(gateway: GatewayProcess, name: str, *, restart: bool = False) -> Iterator[Witnesses]:
    """Set up the witnesses, run the attack (the with-body), then check (b) and (c)."""
    witnesses = Witnesses(gateway, name)
    try:
        witnesses.setup()
        yield witnesses
        witnesses.verify(restart)
    finally:
        witnesses.close()


# ------------------------------------------------------------------ raw peers and (a)


def frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_vbi(len(body)) + body


def u16(n: int) -> bytes:
    return n.to_bytes(2, "big")


def string(raw: bytes) -> bytes:
    return u16(len(raw)) + raw


def connect_bytes(version: ProtocolVersion, client_id: bytes = b"hostile", *, flags: int = 0x02,
                  properties: bytes = b"\x00") -> bytes:
    """A CONNECT built by hand, so it can carry what the encoder refuses to produce."""
    body = string(b"MQTT") + bytes((int(version), flags)) + u16(60)
    if version is V5:
        body += properties
    return frame(0x10, body + string(client_id))


class RawPeer:
    """A socket speaking MQTT bytes, with a client-side decoder for what the gateway answers."""

    def __init__(self, port: int, version: ProtocolVersion, *, rcvbuf: int | None = None) -> None:
        self.version = version
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(10)
        self.decoder = Decoder(server_side=False, protocol_version=version)

    def connect(self, client_id: str, *, clean: bool = True, properties: Properties = EMPTY_PROPERTIES) -> "RawPeer":
        self.sock.sendall(encode(Connect(client_id, self.version, clean, 60, properties=properties), self.version))
        connack = self.next_packet()
        assert isinstance(connack, Connack) and connack.reason_code == RC.SUCCESS, connack
        return self

    def next_packet(self) -> object:
        while True:
            packets = self.decoder.feed(self.sock.recv(1))
            if packets:
                return packets[0]

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def read_until_closed(self, timeout_s: float = 10.0) -> tuple[list[object], bool]:
        """Everything the gateway sends until it closes: (packets, True for a FIN, False for a reset)."""
        self.sock.settimeout(timeout_s)
        data = b""
        try:
            while chunk := self.sock.recv(65536):
                data += chunk
        except ConnectionResetError:
            return self.decoder.feed(data), False
        except TimeoutError:
            raise AssertionError(f"the gateway did not close the connection within {timeout_s} s") from None
        return self.decoder.feed(data), True

    def close(self) -> None:
        self.sock.close()


def expect_closed_with(peer: RawPeer, answer: object | None) -> None:
    """(a) The gateway ends this connection: with `answer` as the last packet before EOF (MQTT 5), or
    without a word (MQTT 3.1.1, or a CONNECT whose version it never learnt)."""
    packets, graceful = peer.read_until_closed()
    if answer is None:
        assert not any(isinstance(p, (Disconnect, Connack)) for p in packets), packets
        return
    assert graceful, f"connection reset: the {answer!r} may not have been read"
    assert packets and packets[-1] == answer, f"expected {answer!r} last, got {packets!r}"


def disconnect(code: ReasonCode) -> Disconnect:
    return Disconnect(code)


def refused(code: ReasonCode) -> Connack:
    return Connack(False, code)


# ------------------------------------------------------------------ classes sent after a good CONNECT


def publish_raw(topic: bytes, *, qos: int = 0, packet_id: int = 1, props: bytes = b"\x00",
                version: ProtocolVersion = V5) -> bytes:
    body = string(topic) + (u16(packet_id) if qos else b"") + (props if version is V5 else b"") + b"payload"
    return frame(0x30 | qos << 1, body)


def subscribe_raw(packet_id: int, topic_filter: bytes, *, first: int = 0x82,
                  version: ProtocolVersion = V5) -> bytes:
    return frame(first, u16(packet_id) + (b"\x00" if version is V5 else b"") + string(topic_filter) + b"\x01")


@dataclass(frozen=True)
class Case:
    name: str
    version: ProtocolVersion
    data: bytes
    answer: object | None
    """The last packet an MQTT 5 peer must read before EOF; None: the socket just closes."""
    connect_first: bool = True


CASES = [
    # Bad remaining length: five bytes, and a length beyond the maximum packet size.
    Case("remaining-length-5-bytes", V5, bytes.fromhex("30 ff ff ff ff 01"), disconnect(RC.MALFORMED_PACKET)),
    Case("remaining-length-5-bytes-v311", V311, bytes.fromhex("30 ff ff ff ff 01"), None),
    Case("remaining-length-beyond-max", V5, bytes.fromhex("30 ff ff ff 7f"), disconnect(RC.PACKET_TOO_LARGE)),
    Case("remaining-length-beyond-max-v311", V311, b"\x30" + encode_vbi(MAX_PACKET_SIZE), None),
    Case("connect-length-beyond-max", V5, bytes.fromhex("10 ff ff ff 7f"), None, connect_first=False),
    # Reserved flags.
    Case("pubrel-flags-0000", V5, bytes.fromhex("60 02 00 01"), disconnect(RC.MALFORMED_PACKET)),
    Case("subscribe-flags-0000", V5, subscribe_raw(1, b"a", first=0x80), disconnect(RC.MALFORMED_PACKET)),
    Case("subscribe-flags-0000-v311", V311, subscribe_raw(1, b"a", first=0x80, version=V311), None),
    Case("publish-qos-3", V5, bytes.fromhex("36 05 00 01 74 00 01"), disconnect(RC.MALFORMED_PACKET)),
    Case("publish-qos-3-v311", V311, bytes.fromhex("36 05 00 01 74 00 01"), None),
    Case("connect-reserved-bit", V5, connect_bytes(V5, flags=0x03), refused(RC.MALFORMED_PACKET),
         connect_first=False),
    Case("connect-reserved-bit-v311", V311, connect_bytes(V311, flags=0x03), None, connect_first=False),
    # Invalid UTF-8 and U+0000 in a topic name and in a client id.
    Case("topic-invalid-utf8", V5, publish_raw(b"a/\xc3\x28"), disconnect(RC.MALFORMED_PACKET)),
    Case("topic-surrogate-utf8", V5, publish_raw(b"a/\xed\xa0\x80"), disconnect(RC.MALFORMED_PACKET)),
    Case("topic-nul", V5, publish_raw(b"a/\x00b"), disconnect(RC.MALFORMED_PACKET)),
    Case("topic-nul-v311", V311, publish_raw(b"a/\x00b", version=V311), None),
    Case("client-id-invalid-utf8", V5, connect_bytes(V5, b"dev\xff"), refused(RC.MALFORMED_PACKET),
         connect_first=False),
    Case("client-id-nul", V5, connect_bytes(V5, b"dev\x00x"), refused(RC.MALFORMED_PACKET), connect_first=False),
    Case("client-id-nul-v311", V311, connect_bytes(V311, b"dev\x00x"), None, connect_first=False),
    # Wildcards in a PUBLISH topic.
    Case("topic-wildcard-plus", V5, publish_raw(b"a/+/c"), disconnect(RC.TOPIC_NAME_INVALID)),
    Case("topic-wildcard-hash", V5, publish_raw(b"a/#", qos=1), disconnect(RC.TOPIC_NAME_INVALID)),
    Case("topic-wildcard-v311", V311, publish_raw(b"#", version=V311), None),
    # A second CONNECT.
    Case("second-connect", V5, encode(Connect("again", V5, True, 60), V5), disconnect(RC.PROTOCOL_ERROR)),
    Case("second-connect-v311", V311, encode(Connect("again", V311, True, 60), V311), None),
    # Packet id 0 on a QoS 1 PUBLISH and on a SUBSCRIBE.
    Case("publish-qos1-packet-id-0", V5, publish_raw(b"a", qos=1, packet_id=0), disconnect(RC.PROTOCOL_ERROR)),
    Case("subscribe-packet-id-0", V5, subscribe_raw(0, b"a"), disconnect(RC.PROTOCOL_ERROR)),
    Case("subscribe-packet-id-0-v311", V311, subscribe_raw(0, b"a", version=V311), None),
    # Duplicate MQTT 5 properties (section 2.2.2.2: a Protocol Error).
    Case("publish-duplicate-property", V5, publish_raw(b"a", props=bytes.fromhex("04 01 00 01 01")),
         disconnect(RC.PROTOCOL_ERROR)),
    Case("connect-duplicate-property", V5,
         connect_bytes(V5, properties=bytes.fromhex("0a 11 00 00 00 0a 11 00 00 00 14")),
         refused(RC.PROTOCOL_ERROR), connect_first=False),
]


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_hostile_packet_closes_only_that_connection(gateway: GatewayProcess, case: Case) -> None:
    with attack(gateway, case.name, restart=case.name == "remaining-length-5-bytes"):
        peer = RawPeer(gateway.port, case.version)
        try:
            if case.connect_first:
                peer.connect(f"attacker-{case.name}")
            peer.send(case.data)
            expect_closed_with(peer, case.answer if case.version is V5 else None)
        finally:
            peer.close()


def test_empty_client_id_with_clean_session_0_is_refused_with_0x02(gateway: GatewayProcess) -> None:
    """MQTT 3.1.1 [MQTT-3.1.3-8]: CONNACK return code 0x02 (Identifier rejected), then close."""
    with attack(gateway, "empty-client-id"):
        peer = RawPeer(gateway.port, V311)
        try:
            peer.send(connect_bytes(V311, b"", flags=0x00))
            packets, _ = peer.read_until_closed()
            assert packets == [Connack(False, RC.CLIENT_IDENTIFIER_NOT_VALID)]
            assert encode(packets[0], V311) == bytes.fromhex("20 02 00 02")
        finally:
            peer.close()


def test_oversize_packet_is_refused_before_it_is_buffered(gateway: GatewayProcess) -> None:
    """A PUBLISH larger than broker.max_packet_size_bytes: DISCONNECT 0x95 as soon as its header
    arrives; the rest of it is read and dropped, not buffered."""
    with attack(gateway, "oversize", restart=True):
        peer = RawPeer(gateway.port, V5)
        try:
            peer.connect("attacker-oversize")
            data = encode_publish(b"big", b"x" * (MAX_PACKET_SIZE + 1000), 1, packet_id=1, version=V5)
            assert len(data) > MAX_PACKET_SIZE
            try:
                peer.send(data)
            except (BrokenPipeError, ConnectionResetError):
                pass  # the gateway closed before all of it was sent; its answer is still readable
            expect_closed_with(peer, disconnect(RC.PACKET_TOO_LARGE))
        finally:
            peer.close()


# ------------------------------------------------------------------ floods


def gateway_rss_kb(gateway: GatewayProcess) -> int:
    with open(f"/proc/{gateway.process.pid}/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise AssertionError("no VmRSS")


FLOOD_FILTERS = 5_000


def test_subscribe_flood_leaves_the_gateway_serving_others(gateway: GatewayProcess) -> None:
    """5,000 SUBSCRIBEs from one persistent MQTT 5 session, as fast as the socket takes them."""
    with attack(gateway, "subscribe-flood", restart=True) as witnesses:
        rss_before = gateway_rss_kb(gateway)
        peer = RawPeer(gateway.port, V5)
        try:
            peer.connect("attacker-flood", clean=False, properties=Properties(session_expiry_interval=300))
            stream = b"".join(encode(Subscribe(i, (Subscription(f"flood/{i}/#", 1),)), V5)
                              for i in range(1, FLOOD_FILTERS + 1))
            sender = threading.Thread(target=peer.send, args=(stream,))
            sender.start()
            witnesses.round_trip(b"during the flood")  # served while the flood is being processed
            sender.join(30)
            subacks = [peer.next_packet() for _ in range(FLOOD_FILTERS)]
            assert all(isinstance(p, Suback) for p in subacks)
            assert [p.packet_id for p in subacks] == list(range(1, FLOOD_FILTERS + 1))
            codes = [p.reason_codes for p in subacks]
            # The gateway runs its default broker.max_subscriptions_per_client: the filters beyond it
            # are refused with SUBACK 0x97 Quota exceeded.
            granted = BrokerConfig().max_subscriptions_per_client
            assert granted < FLOOD_FILTERS
            assert codes[:granted] == [(RC.GRANTED_QOS_1,)] * granted
            assert codes[granted:] == [(RC.QUOTA_EXCEEDED,)] * (FLOOD_FILTERS - granted)
            witnesses.round_trip(b"after the flood")
            grown_mb = (gateway_rss_kb(gateway) - rss_before) / 1024
            print(f"subscribe flood: gateway RSS grew {grown_mb:.1f} MB")
            assert grown_mb < 100, f"gateway RSS grew {grown_mb:.0f} MB for {FLOOD_FILTERS} subscriptions"
        finally:
            peer.close()


def test_never_reading_peer_does_not_starve_others_or_grow_memory(gateway: GatewayProcess) -> None:
    """A peer publishes QoS 1 continuously (1 KB payloads, to a topic it also subscribes to at QoS 0)
    and never reads: neither its PUBACKs nor the deliveries. The gateway keeps serving a bystander
    and its RSS stays bounded (QoS 0 deliveries to a blocked connection are dropped).

    Its publish rate is bounded by `broker.max_publish_rate`, and its unread PUBACKs by the abort
    bounds (`tests/gateway/test_limits.py` shows the abort)."""
    with attack(gateway, "never-reading", restart=True) as witnesses:
        rss_before = gateway_rss_kb(gateway)
        peer = RawPeer(gateway.port, V5, rcvbuf=4096)
        stop = threading.Event()
        sent = [0]
        ended: list[BaseException] = []
        try:
            peer.connect("attacker-never-reads")
            peer.send(encode(Subscribe(1, (Subscription("hostile/never-reading/flood", 0),)), V5))
            batch = b"".join(encode_publish(b"hostile/never-reading/flood", b"x" * 1024, 1, packet_id=i,
                                            version=V5) for i in range(1, 101))
            peer.sock.settimeout(0.5)

            def flood() -> None:
                while not stop.is_set():
                    try:
                        peer.sock.sendall(batch)
                    except TimeoutError:
                        continue  # backpressure (broker.max_publish_rate): the gateway stopped reading
                    except OSError as exc:  # the gateway aborted the peer
                        ended.append(exc)
                        return
                    sent[0] += 100

            flooder = threading.Thread(target=flood)
            flooder.start()
            time.sleep(0.5)
            waits = [witnesses.round_trip(f"during {i}".encode()) for i in range(3)]
            time.sleep(2.0)
            stop.set()
            flooder.join(10)
            assert sent[0] >= 1_000, f"the flood sent only {sent[0]} publishes"
            assert max(waits) < 5.0, f"bystander round trips took {waits} s during the flood"
            grown_mb = (gateway_rss_kb(gateway) - rss_before) / 1024
            sent_mb = sent[0] * 1.05 / 1024
            print(f"never-reading peer: sent {sent[0]:,} publishes ({sent_mb:.0f} MB), gateway RSS "
                  f"{rss_before / 1024:.0f} -> {rss_before / 1024 + grown_mb:.0f} MB, bystander waits {waits}, "
                  f"peer {'aborted: ' + repr(ended[0]) if ended else 'still connected'}")
            assert grown_mb < 64, f"gateway RSS grew {grown_mb:.0f} MB while a peer that never reads sent " \
                                  f"{sent_mb:.0f} MB"
        finally:
            stop.set()
            peer.close()


def test_protocol_error_from_a_subscriber_that_is_being_delivered_to(gateway: GatewayProcess) -> None:
    """A subscriber receiving a stream of messages sends a malformed packet. The gateway answers with
    DISCONNECT 0x81 and half-closes; the stream must not be written to it after that (a write after
    `write_eof()` raises in the event loop's flush, which `attack` catches in the gateway's log), and
    the bystander keeps its service meanwhile."""
    with attack(gateway, "busy-subscriber") as witnesses:
        victim = RawPeer(gateway.port, V5)
        publisher = RawPeer(gateway.port, V5)
        stop = threading.Event()
        try:
            victim.connect("attacker-busy")
            victim.send(encode(Subscribe(1, (Subscription("hostile/busy/stream", 0),)), V5))
            assert isinstance(victim.next_packet(), Suback)
            publisher.connect("busy-publisher")
            batch = encode_publish(b"hostile/busy/stream", b"y" * 200, 0, version=V5) * 5

            def stream() -> None:  # 250 messages/s: below broker.max_publish_rate
                while not stop.is_set():
                    try:
                        publisher.send(batch)
                    except OSError:
                        return
                    time.sleep(0.02)

            streamer = threading.Thread(target=stream)
            streamer.start()
            time.sleep(0.3)
            victim.send(bytes.fromhex("36 05 00 01 74 00 01"))  # PUBLISH with QoS 3
            # The victim does not close its end: the gateway lingers up to 5 s for it to read.
            waits = [witnesses.round_trip(f"linger {i}".encode(), timeout_s=4.0) for i in range(3)]
            stop.set()
            streamer.join(5)
            expect_closed_with(victim, disconnect(RC.MALFORMED_PACKET))
            assert max(waits) < 2.0, waits
        finally:
            stop.set()
            victim.close()
            publisher.close()
