"""The network layer's `[broker]` limits on a real gateway process, with raw sockets: slow-loris
CONNECTs, connection caps, the publish rate, flow control towards slow subscribers, the output
bounds and TCP keepalive. Each failed on the gateway before it had the limit.

No timing is asserted: a test waits (with a generous timeout) for what must happen, and checks
what arrived and the counters.
"""

from __future__ import annotations

import asyncio
import socket
import threading
import time
import urllib.request
from collections.abc import Callable

from ferry.gateway.auth.identity import Identity, Role
from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.core import Broker
from ferry.gateway.mqtt import (
    Connack, Connect, Decoder, ProtocolVersion, Puback, Publish, Suback, Subscribe, Subscription, encode,
)
from ferry.gateway.process import GatewayProcess
from ferry.gateway.server import TICK_INTERVAL_S, MqttServer
from ferry.process import free_port
from tests.gateway.broker.harness import FakeJournal

V311 = ProtocolVersion.V311
WAIT_S = 15.0
FLOOD_WAIT_S = 60.0


def limits_gateway(start_gateway: Callable[..., GatewayProcess], **broker: int) -> GatewayProcess:
    config = "[broker]\n" + "".join(f"{key} = {value}\n" for key, value in broker.items())
    return start_gateway(config_text=config, metrics_port=free_port())


def metric(gateway: GatewayProcess, name: str) -> float:
    text = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=5).read().decode()
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"no metric {name}")


def hits(gateway: GatewayProcess, limit: str) -> float:
    return metric(gateway, f'ferry_limit_hits_total{{limit="{limit}"}}')


def wait_for(condition: Callable[[], bool], timeout_s: float = WAIT_S) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if condition():
            return True
        time.sleep(0.05)
    return condition()


class Raw:
    """An MQTT 3.1.1 client on a plain socket: every byte under the test's control."""

    def __init__(self, port: int, *, source: str = "127.0.0.1", rcvbuf: int | None = None) -> None:
        self.sock = socket.socket()
        if rcvbuf is not None:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
        self.sock.bind((source, 0))
        self.sock.connect(("127.0.0.1", port))
        self.sock.settimeout(WAIT_S)
        self.decoder = Decoder(server_side=False, protocol_version=V311)
        self.packets: list[object] = []

    def connect(self, client_id: str, keepalive_s: int = 60) -> None:
        self.send(encode(Connect(client_id, V311, True, keepalive_s), V311))
        assert self.next() == Connack(False, 0)

    def subscribe(self, topic_filter: str, qos: int = 0) -> None:
        self.send(encode(Subscribe(1, (Subscription(topic_filter, qos),)), V311))
        assert isinstance(self.next(), Suback)

    def send(self, data: bytes) -> None:
        self.sock.sendall(data)

    def next(self) -> object:
        while not self.packets:
            data = self.sock.recv(65536)
            assert data, "closed by the gateway"
            self.packets += self.decoder.feed(data)
        return self.packets.pop(0)

    def publishes(self, count: int) -> list[Publish]:
        got = []
        while len(got) < count:
            packet = self.next()
            if isinstance(packet, Publish):
                got.append(packet)
        return got

    def closed_by_gateway(self) -> bool:
        """Read until the gateway closes (FIN: True, reset: True); False if it stays open."""
        try:
            while self.sock.recv(65536):
                pass
            return True
        except ConnectionResetError:
            return True
        except TimeoutError:
            return False

    def close(self) -> None:
        self.sock.close()


def publish_stream(topic: str, count: int, size: int, qos: int = 0) -> bytes:
    return b"".join(encode(Publish(topic, i.to_bytes(4, "big") + b"x" * (size - 4), qos,
                                   packet_id=i % 65535 + 1 if qos else None), V311) for i in range(count))


def sender(client: Raw, data: bytes) -> threading.Thread:
    """Send `data` from a thread (the gateway may stop reading it for a while); errors end it."""
    def run() -> None:
        try:
            client.send(data)
        except OSError:
            pass
    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


# ---------------------------------------------------------------- CONNECT timeout (slow-loris)

def test_a_connection_without_a_connect_is_closed_after_connect_timeout(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, connect_timeout_s=1)
    silent = Raw(gateway.port)
    trickle = Raw(gateway.port)
    trickle.send(encode(Connect("slow-loris", V311, True, 60), V311)[:6])  # half a CONNECT
    good = Raw(gateway.port)
    good.connect("good")
    try:
        assert silent.closed_by_gateway() and trickle.closed_by_gateway()  # FIN, and no CONNACK before it
        assert silent.decoder.feed(b"") == [] and trickle.packets == []
        good.send(bytes.fromhex("c0 00"))  # PINGREQ: the client that sent its CONNECT stays
        assert good.next().__class__.__name__ == "Pingresp"
        assert hits(gateway, "connect_timeout") == 2
    finally:
        for client in (silent, trickle, good):
            client.close()


class SlowPasswords:
    """An authenticator whose password check takes as long as the test wants."""

    def __init__(self) -> None:
        self.release = threading.Event()

    def needs_hash(self, username: str | None, cert_username: str | None) -> bool:
        return True

    def authenticate(self, username, password, cert_username=None) -> Identity:
        self.release.wait(WAIT_S)
        return Identity(username, Role.DEVICE)


class InProcessJournal(FakeJournal):
    writable = False
    failed = None

    def flush(self) -> None: ...

    def close(self) -> None: ...


def test_a_connect_whose_password_is_being_checked_is_not_timed_out() -> None:
    """The CONNECT arrived; its scrypt check is slow (a reconnecting fleet queues for the threads):
    not a slow-loris. In process, with the network layer's real MqttServer."""
    async def scenario() -> bytes:
        broker = Broker(BrokerConfig(connect_timeout_s=1), InProcessJournal(), now=time.monotonic(),
                        wall=time.time())
        passwords = SlowPasswords()
        server = MqttServer(broker, broker.journal, authenticator=passwords)
        host, port = await server.start("127.0.0.1", 0)
        try:
            reader, writer = await asyncio.open_connection(host, port)
            writer.write(encode(Connect("dev-1", V311, True, 60, username="dev-1", password=b"pw"), V311))
            await asyncio.sleep(2 * TICK_INTERVAL_S + 1)  # past connect_timeout_s, and a tick after it
            passwords.release.set()
            answer = await asyncio.wait_for(reader.read(4), WAIT_S)
            writer.close()
            return answer
        finally:
            await server.stop()

    assert asyncio.run(scenario()) == b"\x20\x02\x00\x00"  # CONNACK, accepted


# ---------------------------------------------------------------- connections, total and per address

def test_connections_beyond_the_caps_are_accepted_and_closed_at_once(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_connections=3, max_connections_per_address=2)
    first = [Raw(gateway.port) for _ in range(2)]
    for i, client in enumerate(first):
        client.connect(f"local-{i}")
    third_local = Raw(gateway.port)
    other = Raw(gateway.port, source="127.0.0.2")
    other.connect("other-host")
    fourth_host = Raw(gateway.port, source="127.0.0.3")
    try:
        assert third_local.closed_by_gateway()  # per address: 2 from 127.0.0.1
        assert fourth_host.closed_by_gateway()  # in total: 3
        assert hits(gateway, "max_connections_per_address") == 1
        assert hits(gateway, "max_connections") == 1
        first[0].close()  # a slot frees up
        assert wait_for(lambda: metric(gateway, "ferry_connections") == 2)
        again = Raw(gateway.port)
        again.connect("local-again")
        again.close()
    finally:
        for client in (*first, third_local, other, fourth_host):
            client.close()


# ---------------------------------------------------------------- publish rate

def test_a_client_over_the_publish_rate_is_slowed_down_and_loses_nothing(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_publish_rate=200)
    sub = Raw(gateway.port)
    sub.connect("sub")
    sub.subscribe("rate/#", 1)
    pub = Raw(gateway.port)
    pub.connect("pub")
    try:
        count = 500  # 2.5 s at 200/s with a burst of 200: the gateway must pause reading it
        pub.send(publish_stream("rate/q0", count, 32) + publish_stream("rate/q1", 50, 32, qos=1))
        got = sub.publishes(count + 50)
        assert [p.topic for p in got] == ["rate/q0"] * count + ["rate/q1"] * 50
        assert [int.from_bytes(p.payload[:4], "big") for p in got[:count]] == list(range(count))
        acks = [pub.next() for _ in range(50)]
        assert all(isinstance(a, Puback) for a in acks)
        assert hits(gateway, "publish_rate") >= 1
        assert metric(gateway, 'ferry_dropped_messages_total{reason="slow_subscriber"}') == 0
    finally:
        sub.close()
        pub.close()


# ---------------------------------------------------------------- flow control

def test_a_slow_subscriber_holds_the_publisher_back_instead_of_losing_messages(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_publish_rate=0, max_output_buffer_bytes=16_384)
    sub = Raw(gateway.port, rcvbuf=4096)
    sub.connect("slow-sub")
    sub.subscribe("flow", 0)
    pub = Raw(gateway.port)
    pub.connect("fast-pub")
    count = 8000
    # 8 MB: more than the kernel's send buffer (at most 4 MB) and the gateway's 16 KB together.
    thread = sender(pub, publish_stream("flow", count, 1000))
    try:
        time.sleep(1.0)  # the subscriber does not read: its output backs up
        got = sub.publishes(count)
        assert [int.from_bytes(p.payload[:4], "big") for p in got] == list(range(count))
        thread.join(WAIT_S)
        assert metric(gateway, 'ferry_dropped_messages_total{reason="slow_subscriber"}') == 0
        assert metric(gateway, "ferry_publishers_held_total") >= 1
    finally:
        sub.close()
        pub.close()


def test_a_subscriber_that_never_reads_is_aborted_and_publishers_go_on(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_publish_rate=0, max_output_buffer_bytes=16_384,
                             max_output_blocked_s=1)
    stuck = Raw(gateway.port, rcvbuf=4096)
    stuck.connect("never-reads")
    stuck.subscribe("flow", 0)
    reader = Raw(gateway.port)
    reader.connect("reads")
    reader.subscribe("flow", 0)
    pub = Raw(gateway.port)
    pub.connect("pub")
    count = 6000  # 6 MB: more than the kernel's send buffer for the stuck one (at most 4 MB) takes
    thread = sender(pub, publish_stream("flow", count, 1000))
    try:
        got = reader.publishes(count)  # all of them: the stuck one held the publisher for a while only
        assert [int.from_bytes(p.payload[:4], "big") for p in got] == list(range(count))
        thread.join(WAIT_S)
        assert not thread.is_alive()
        assert wait_for(lambda: hits(gateway, "output_blocked") == 1)
        stuck.sock.settimeout(5)
        assert stuck.closed_by_gateway()
    finally:
        for client in (stuck, reader, pub):
            client.close()


def test_a_publisher_that_does_not_read_its_pubacks_is_not_read_then_aborted(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_publish_rate=0, max_output_buffer_bytes=4096,
                             max_output_blocked_s=1)
    flooder = Raw(gateway.port, rcvbuf=4096)
    flooder.connect("no-reader")
    batch = publish_stream("nobody/listens", 2000, 16, qos=1)
    stop = threading.Event()

    def flood() -> None:
        try:
            while not stop.is_set():
                flooder.send(batch)
        except OSError:
            pass

    thread = threading.Thread(target=flood, daemon=True)
    thread.start()
    try:
        # Its PUBACKs back up; the gateway stops reading it, then aborts it: the flood ends. The
        # PUBACKs (4 bytes each) must first fill the gateway's kernel send buffer, which grows to
        # 4 MB on loopback: ~9 s alone here, past 15 s on a loaded machine.
        thread.join(FLOOD_WAIT_S)
        assert not thread.is_alive()
        assert wait_for(lambda: hits(gateway, "output_blocked") == 1)
        rss_kb = int(next(line.split()[1] for line in open(f"/proc/{gateway.process.pid}/status")
                          if line.startswith("VmRSS:")))
        assert rss_kb < 200 * 1024
    finally:
        stop.set()
        flooder.close()


def test_more_output_than_the_abort_bound_aborts_the_connection(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, max_publish_rate=0, max_output_buffer_bytes=4096,
                             max_output_buffer_abort_bytes=65_536, max_output_blocked_s=0)
    retainer = Raw(gateway.port)
    retainer.connect("retainer")
    retainer.send(b"".join(encode(Publish(f"r/{i}", b"x" * 1000, 0, retain=True), V311) for i in range(6000))
                  + encode(Publish("r/last", b"x", 1, retain=True, packet_id=1), V311))
    assert isinstance(retainer.next(), Puback)  # every retained message before it is in place
    greedy = Raw(gateway.port, rcvbuf=4096)
    greedy.connect("greedy")
    try:
        # 6 MB of retained messages in answer to one SUBSCRIBE: more than the kernel's send buffer
        # (at most 4 MB) and the 64 KB bound together.
        greedy.send(encode(Subscribe(1, (Subscription("r/#", 0),)), V311))
        assert wait_for(lambda: hits(gateway, "output_buffer") == 1)
        assert greedy.closed_by_gateway()
    finally:
        retainer.close()
        greedy.close()


# ---------------------------------------------------------------- keepalive 0 and TCP keepalive

def server_side_timer(gateway_port: int, client_port: int) -> tuple[int, int]:
    """(timer kind, jiffies left) of the gateway's socket for this client, from /proc/net/tcp:
    kind 2 is the keepalive timer, 0 none."""
    local, remote = f"0100007F:{gateway_port:04X}", f"0100007F:{client_port:04X}"
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        if fields[1] == local and fields[2] == remote:
            kind, when = fields[5].split(":")
            return int(kind, 16), int(when, 16)
    raise AssertionError("the gateway's socket is not in /proc/net/tcp")


def test_keepalive_0_is_accepted_and_the_socket_has_tcp_keepalive(start_gateway) -> None:
    gateway = limits_gateway(start_gateway, tcp_keepalive_s=120)
    device = Raw(gateway.port)
    try:
        device.connect("umqtt-simple", keepalive_s=0)  # MicroPython's default: accepted
        kind, _ = server_side_timer(gateway.port, device.sock.getsockname()[1])
        assert kind == 2  # the kernel will probe it, and close it if the device is gone
    finally:
        device.close()
