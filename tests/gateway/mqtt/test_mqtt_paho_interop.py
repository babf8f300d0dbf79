"""Interop with paho-mqtt 2.2.0 (a test dependency) without any network.

paho's client writes into a fake socket; our server-side Decoder must read its
bytes.  Our encoder's server packets are fed to paho through the same fake
socket and must reach paho's callbacks intact.  Uses paho internals
(``_sock``, ``_send_connect``, ``_state``) pinned by pyproject's test extra.
"""

from __future__ import annotations

from typing import Any

import pytest

from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES,
    Connack,
    Connect,
    Decoder,
    Disconnect,
    Pingreq,
    Pingresp,
    Properties,
    ProtocolVersion,
    Puback,
    Publish,
    ReasonCode,
    Suback,
    Subscribe,
    Subscription,
    Unsubscribe,
    Will,
    encode,
)

mc = pytest.importorskip("paho.mqtt.client")
from paho.mqtt.enums import CallbackAPIVersion  # noqa: E402
from paho.mqtt.packettypes import PacketTypes  # noqa: E402
from paho.mqtt.properties import Properties as PahoProperties  # noqa: E402
from paho.mqtt.subscribeoptions import SubscribeOptions  # noqa: E402

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5


class FakeSocket:
    """Just enough of a socket for paho's loop_read/loop_write."""

    def __init__(self, incoming: bytes = b"") -> None:
        self.sent = bytearray()
        self.incoming = bytearray(incoming)

    def send(self, data: bytes) -> int:
        self.sent += data
        return len(data)

    def recv(self, size: int) -> bytes:
        if not self.incoming:
            raise BlockingIOError
        chunk = bytes(self.incoming[:size])
        del self.incoming[:size]
        return chunk

    def close(self) -> None:
        pass

    def fileno(self) -> int:
        return -1

    def setblocking(self, flag: bool) -> None:
        pass


def _paho(version: ProtocolVersion, **kwargs: Any) -> Any:
    protocol = mc.MQTTv5 if version == V5 else mc.MQTTv311
    client = mc.Client(CallbackAPIVersion.VERSION2, client_id="dev1", protocol=protocol, **kwargs)
    client._sock = FakeSocket()
    return client


def test_paho_v311_client_packets_decode() -> None:
    client = _paho(V311, clean_session=False)
    client.username_pw_set("ferry", "s3cret")
    client.will_set("ferry/s/dev1/status", b"offline", qos=1, retain=True)
    client._send_connect(60)
    client.publish("ferry/t", b"21.5", qos=0)
    client.publish("ferry/t", b"21.6", qos=1)
    client.publish("ferry/t", b"21.7", qos=2, retain=True)
    client.subscribe([("ferry/c/dev1/#", 1), ("$SYS/+", 0)])
    client.unsubscribe("$SYS/+")
    client._send_simple_command(mc.PINGREQ)
    sock = client._sock
    client.disconnect()  # paho drops its socket afterwards

    packets = Decoder(server_side=True).feed(bytes(sock.sent))
    assert packets == [
        Connect("dev1", V311, False, 60, "ferry", b"s3cret", Will("ferry/s/dev1/status", b"offline", 1, True)),
        Publish("ferry/t", b"21.5", 0),  # paho spends message id 1 on this QoS 0 publish
        Publish("ferry/t", b"21.6", 1, packet_id=2),
        Publish("ferry/t", b"21.7", 2, retain=True, packet_id=3),
        Subscribe(4, (Subscription("ferry/c/dev1/#", 1), Subscription("$SYS/+", 0))),
        Unsubscribe(5, ("$SYS/+",)),
        Pingreq(),
        Disconnect(),
    ]


def test_paho_v5_client_packets_decode() -> None:
    client = _paho(V5)
    connect_props = PahoProperties(PacketTypes.CONNECT)
    connect_props.SessionExpiryInterval = 3600
    connect_props.ReceiveMaximum = 20
    client._connect_properties = connect_props
    client._send_connect(30)
    publish_props = PahoProperties(PacketTypes.PUBLISH)
    publish_props.ResponseTopic = "r/1"
    publish_props.CorrelationData = b"\x01\x02"
    publish_props.UserProperty = ("k", "v")
    client.publish("a/b", b"hi", qos=1, properties=publish_props)
    sub_props = PahoProperties(PacketTypes.SUBSCRIBE)
    sub_props.SubscriptionIdentifier = 42
    client.subscribe(
        [("x/#", SubscribeOptions(qos=2, noLocal=True, retainAsPublished=True, retainHandling=1)),
         ("$share/g/y", SubscribeOptions(qos=0))],
        properties=sub_props,
    )
    sock = client._sock
    client.disconnect(reasoncode=mc.ReasonCode(PacketTypes.DISCONNECT, identifier=0x04))

    packets = Decoder(server_side=True).feed(bytes(sock.sent))
    assert packets == [
        Connect("dev1", V5, True, 30, properties=Properties(session_expiry_interval=3600, receive_maximum=20)),
        Publish("a/b", b"hi", 1, packet_id=1, properties=Properties(
            response_topic="r/1", correlation_data=b"\x01\x02", user_properties=(("k", "v"),))),
        Subscribe(2, (Subscription("x/#", 2, True, True, 1), Subscription("$share/g/y", 0)),
                  Properties(subscription_identifiers=(42,))),
        Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE),
    ]


@pytest.mark.parametrize("version", [V311, V5])
def test_paho_reads_our_server_packets(version: ProtocolVersion) -> None:
    client = _paho(version)
    events: list[tuple[Any, ...]] = []
    client.on_connect = lambda c, u, flags, rc, props: events.append(("connect", flags.session_present, rc.value))
    client.on_subscribe = lambda c, u, mid, rcs, props: events.append(("subscribe", mid, [r.value for r in rcs]))
    client.on_message = lambda c, u, m: events.append(("message", m.topic, m.payload, m.qos, m.retain, m.mid))
    v5_props = Properties(user_properties=(("k", "v"),), message_expiry_interval=9)
    server_packets = [
        Connack(True, ReasonCode.SUCCESS, Properties(receive_maximum=10) if version == V5 else EMPTY_PROPERTIES),
        Suback(1, (ReasonCode.GRANTED_QOS_1, ReasonCode.UNSPECIFIED_ERROR)),
        Publish("a/b", b"hello" * 40, 1, retain=True, packet_id=9, properties=v5_props if version == V5 else EMPTY_PROPERTIES),
        Publish("a/c", b"", 0),
        Pingresp(),
    ]
    client._sock = FakeSocket(b"".join(encode(p, version) for p in server_packets))
    client._state = mc._ConnectionState.MQTT_CS_CONNECTING
    for _ in range(len(server_packets) + 2):
        assert client.loop_read() == mc.MQTT_ERR_SUCCESS
    assert events == [
        ("connect", True, 0),
        ("subscribe", 1, [1, 128]),
        ("message", "a/b", b"hello" * 40, 1, True, 9),
        ("message", "a/c", b"", 0, False, 0),
    ]
    # paho acknowledged the QoS 1 PUBLISH; our server decoder reads the PUBACK.
    server = Decoder(server_side=True)
    server.feed(encode(Connect("dev1", version, True, 0), version))
    assert server.feed(bytes(client._sock.sent)) == [Puback(9)]
