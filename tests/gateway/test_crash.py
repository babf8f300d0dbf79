"""Power cuts: SIGKILL the gateway under QoS 1 load; nothing it acknowledged may be lost.

Publishers send numbered QoS 1 messages and remember which ones the gateway
PUBACKed; a paho subscriber with a persistent session collects what arrives.
The gateway is killed with SIGKILL and restarted several times in the middle
of it. Every acknowledged number must arrive; duplicates are allowed by QoS 1
and counted.
"""

from __future__ import annotations

import random
import socket
import threading
import time
from collections import Counter

import paho.mqtt.client as mqtt

from ferry.gateway.mqtt import Connect, Decoder, ProtocolVersion, Puback, Publish, encode

V311 = ProtocolVersion.V311
KILLS = 5
PUBLISHERS = 3
CONFIG = '[store]\ndurability = "fsync"\n'


class NumberedPublisher(threading.Thread):
    """Publishes `name:seq` at QoS 1 in order; resends the same seq until it is PUBACKed."""

    def __init__(self, name: str, port: int, stop: threading.Event) -> None:
        super().__init__(daemon=True)
        self.client_name = name
        self.port = port
        self.stop_event = stop
        self.acked: list[int] = []
        self.reconnects = 0

    def _connect(self) -> tuple[socket.socket, Decoder]:
        while True:
            try:
                sock = socket.create_connection(("127.0.0.1", self.port), timeout=2)
                sock.sendall(encode(Connect(self.client_name, V311, True, 30), V311))
                decoder = Decoder(server_side=False, protocol_version=V311)
                self._read_one(sock, decoder)  # CONNACK
                return sock, decoder
            except OSError:
                time.sleep(0.05)

    @staticmethod
    def _read_one(sock: socket.socket, decoder: Decoder) -> object:
        pending: list[object] = []
        while not pending:
            data = sock.recv(4096)
            if not data:
                raise ConnectionError("closed")
            pending = decoder.feed(data)
        return pending[0]

    def run(self) -> None:
        sock, decoder = self._connect()
        seq = 0
        dup = False
        while not self.stop_event.is_set():
            packet_id = seq % 65535 + 1
            try:
                sock.sendall(encode(Publish(f"crash/{self.client_name}", f"{self.client_name}:{seq}".encode(),
                                            1, dup=dup, packet_id=packet_id), V311))
                ack = self._read_one(sock, decoder)
            except OSError:
                sock.close()
                self.reconnects += 1
                sock, decoder = self._connect()
                dup = True
                continue
            assert ack == Puback(packet_id), ack
            self.acked.append(seq)
            seq += 1
            dup = False
        sock.close()


def test_every_pubacked_message_survives_repeated_sigkill(start_gateway, tmp_path) -> None:
    rng = random.Random(20261124)
    gateway = start_gateway(tmp_path / "data", config_text=CONFIG)
    received: list[str] = []
    lock = threading.Lock()

    def on_message(client, userdata, message) -> None:
        with lock:
            received.append(message.payload.decode())

    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="crash-sub", clean_session=False)
    sub.on_message = on_message
    subscribed = threading.Event()
    sub.on_connect = lambda c, u, flags, rc, props: c.subscribe("crash/#", 1)
    sub.on_subscribe = lambda c, u, mid, codes, props: subscribed.set()
    sub.reconnect_delay_set(0.05, 0.5)
    sub.connect("127.0.0.1", gateway.port, 30)
    sub.loop_start()
    assert subscribed.wait(10), "no SUBACK"

    stop = threading.Event()
    publishers = [NumberedPublisher(f"p{i}", gateway.port, stop) for i in range(PUBLISHERS)]
    for publisher in publishers:
        publisher.start()
    try:
        for _ in range(KILLS):
            time.sleep(rng.uniform(0.3, 1.2))
            gateway.kill()
            time.sleep(rng.uniform(0.0, 0.3))
            gateway.start()
        time.sleep(0.5)
        stop.set()
        for publisher in publishers:
            publisher.join(30)
        expected = {f"{p.client_name}:{seq}" for p in publishers for seq in p.acked}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            with lock:
                if expected <= set(received):
                    break
            time.sleep(0.1)
    finally:
        sub.disconnect()
        sub.loop_stop()
    with lock:
        counts = Counter(received)
    missing = expected - set(counts)
    duplicates = sum(n - 1 for n in counts.values())
    acked = sum(len(p.acked) for p in publishers)
    print(f"\n{KILLS} SIGKILLs: {acked} messages PUBACKed, {len(counts)} distinct received, "
          f"{duplicates} duplicates (QoS 1), publisher reconnects "
          f"{[p.reconnects for p in publishers]}")
    assert gateway.starts == KILLS + 1
    assert acked > 100, "the publishers made no progress"
    assert not missing, f"{len(missing)} PUBACKed messages lost, e.g. {sorted(missing)[:5]}"
    unknown = set(counts) - {f"{p.client_name}:{s}" for p in publishers for s in range(len(p.acked) + 1)}
    assert not unknown, f"received messages nobody sent: {sorted(unknown)[:5]}"
