"""Sessions across a gateway restart, with real processes: an assigned client id never names another
client's session [MQTT-3.1.3-6], and QoS 1 deliveries in flight when the gateway was killed come back
with their packet ids and DUP set [MQTT-4.4.0-1]."""

from __future__ import annotations

import socket
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ferry.gateway.mqtt import (
    Connack, Connect, Decoder, ProtocolVersion, Publish, Subscribe, Subscription, encode,
)
from ferry.gateway.process import GatewayProcess

V311 = ProtocolVersion.V311


def connect_without_id(port: int) -> tuple[mqtt.Client, str, bool]:
    """An MQTT 5 client with an empty client id asking for a persistent session."""
    answers: list = []
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="", protocol=mqtt.MQTTv5)
    client.on_connect = lambda c, u, flags, rc, props: answers.append((flags, props))
    props = Properties(PacketTypes.CONNECT)
    props.SessionExpiryInterval = 3600
    client.connect("127.0.0.1", port, 60, clean_start=False, properties=props)
    client.loop_start()
    deadline = time.monotonic() + 10
    while not answers and time.monotonic() < deadline:
        time.sleep(0.02)
    flags, props = answers[0]
    return client, props.AssignedClientIdentifier, bool(flags.session_present)


def test_assigned_client_ids_do_not_repeat_after_a_restart(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gw")
    with gateway:
        first, first_id, present = connect_without_id(gateway.port)
        assert not present
        first.subscribe("private/#", 1)
        time.sleep(0.3)
        first.disconnect()
        first.loop_stop()
    with gateway:
        second, second_id, present = connect_without_id(gateway.port)
        second.disconnect()
        second.loop_stop()
    assert second_id != first_id
    assert not present  # a fresh session, not the first client's with its subscription


class RawClient:
    """A 3.1.1 client on a plain socket, to see packet ids and the DUP flag as they come."""

    def __init__(self, port: int, client_id: str) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port))
        self.sock.settimeout(5)
        self.decoder = Decoder(server_side=False, protocol_version=V311)
        self.sock.sendall(encode(Connect(client_id, V311, False, 60), V311))
        self.pending: list = []
        assert isinstance(self.next(), Connack)

    def next(self) -> object:
        while not self.pending:
            self.pending.extend(self.decoder.feed(self.sock.recv(65536)))
        return self.pending.pop(0)

    def close(self) -> None:
        self.sock.close()


def test_qos1_deliveries_in_flight_come_back_with_their_ids_after_a_kill(tmp_path: Path) -> None:
    gateway = GatewayProcess(tmp_path / "gw").start()
    try:
        subscriber = RawClient(gateway.port, "slow-reader")
        subscriber.sock.sendall(encode(Subscribe(1, (Subscription("t", 1),)), V311))
        subscriber.next()  # SUBACK
        publisher = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="pub", protocol=mqtt.MQTTv311)
        publisher.connect("127.0.0.1", gateway.port, 60)
        publisher.loop_start()
        for n in range(3):
            publisher.publish("t", b"m%d" % n, 1).wait_for_publish(10)
        publisher.disconnect()
        publisher.loop_stop()
        sent = [subscriber.next() for _ in range(3)]
        assert [p.dup for p in sent] == [False] * 3
        time.sleep(0.5)  # the packet ids' records reach the disk (they are not waited for)
        gateway.kill()  # no PUBACK was sent for any of them
        subscriber.close()
        gateway.start()
        back = RawClient(gateway.port, "slow-reader")
        resent = [back.next() for _ in range(3)]
        back.close()
    finally:
        gateway.stop()
    assert all(isinstance(p, Publish) for p in resent)
    assert [(p.payload, p.packet_id, p.dup) for p in resent] == [(p.payload, p.packet_id, True) for p in sent]
