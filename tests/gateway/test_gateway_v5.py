"""MQTT 5 features through paho-mqtt against a real `ferry gateway` process."""

from __future__ import annotations

import socket
import threading
import time
import urllib.request

import paho.mqtt.client as mqtt

from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ferry.process import free_port
from tests.gateway.paho_client import TestClient


def props(packet_type: int, **values) -> Properties:
    p = Properties(packet_type)
    for name, value in values.items():
        setattr(p, name, value)
    return p


def test_connack_advertises_limits(gateway) -> None:
    with TestClient(gateway.port, "c", v5=True) as client:
        advertised = client.connack_props
        assert advertised.ReceiveMaximum == 1024
        assert advertised.TopicAliasMaximum == 64
        assert advertised.MaximumPacketSize == 1_048_576


def test_qos2_both_directions(gateway) -> None:
    with TestClient(gateway.port, "s", v5=True) as sub, TestClient(gateway.port, "p", v5=True) as pub:
        sub.subscribe("q2", 2)
        for i in range(3):
            pub.publish("q2", str(i).encode(), 2)
        got = sub.expect(3)
        assert [(m.payload, m.qos) for m in got] == [(b"0", 2), (b"1", 2), (b"2", 2)]
        sub.expect_nothing()


def test_topic_alias_from_client(gateway) -> None:
    with TestClient(gateway.port, "s", v5=True) as sub, TestClient(gateway.port, "p", v5=True) as pub:
        sub.subscribe("ferry/site/device-with-a-long-name/telemetry", 1)
        pub.publish("ferry/site/device-with-a-long-name/telemetry", b"first", 1,
                    properties=props(PacketTypes.PUBLISH, TopicAlias=3))
        pub.publish("", b"second", 1, properties=props(PacketTypes.PUBLISH, TopicAlias=3))
        assert [(m.topic, m.payload) for m in sub.expect(2)] == [
            ("ferry/site/device-with-a-long-name/telemetry", b"first"),
            ("ferry/site/device-with-a-long-name/telemetry", b"second")]


def test_retain_handling_and_retain_as_published(gateway) -> None:
    with TestClient(gateway.port, "p", v5=True) as pub:
        pub.publish("cfg/a", b"retained", 1, retain=True)
    with TestClient(gateway.port, "s", v5=True) as sub:
        sub.subscribe("cfg/#", 1, retainHandling=2)
        sub.expect_nothing(0.3)
        sub.subscribe("cfg/#", 1, retainHandling=1)  # not a new subscription: still nothing
        sub.expect_nothing(0.3)
        sub.subscribe("cfg/+", 1, retainHandling=0, retainAsPublished=True)
        (message,) = sub.expect(1)
        assert message.retain and message.payload == b"retained"
        with TestClient(gateway.port, "p2", v5=True) as pub:
            pub.publish("cfg/a", b"live", 1, retain=True)
        (live,) = sub.expect(1)  # overlapping subscriptions: one copy [MQTT-3.3.4-2]
        assert live.payload == b"live" and live.retain  # retain as published on cfg/+
        sub.expect_nothing(0.3)


def test_message_expiry_for_an_offline_session(gateway) -> None:
    sub = TestClient(gateway.port, "sleepy", v5=True, clean=True, session_expiry_s=600)
    sub.subscribe("news", 1)
    sub.close()
    with TestClient(gateway.port, "p", v5=True) as pub:
        pub.publish("news", b"stale", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=1))
        pub.publish("news", b"fresh", 1, properties=props(PacketTypes.PUBLISH, MessageExpiryInterval=3600))
    time.sleep(2.2)
    with TestClient(gateway.port, "sleepy", v5=True, clean=False, session_expiry_s=600) as back:
        assert back.session_present
        (message,) = back.expect(1)
        assert message.payload == b"fresh"
        assert 3590 <= message.properties.MessageExpiryInterval <= 3600
        back.expect_nothing(0.3)


def test_will_delay_is_cancelled_by_a_quick_reconnect(gateway) -> None:
    with TestClient(gateway.port, "w", v5=True) as watcher:
        watcher.subscribe("lwt", 1)
        will_props = props(PacketTypes.WILLMESSAGE, WillDelayInterval=2)
        client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="dev", protocol=mqtt.MQTTv5)
        client.will_set("lwt", b"gone", 1, False, properties=will_props)
        client.connect("127.0.0.1", gateway.port, 60, clean_start=False,
                       properties=props(PacketTypes.CONNECT, SessionExpiryInterval=600))
        connected = threading.Event()
        client.on_connect = lambda *args: connected.set()
        client.loop_start()
        assert connected.wait(10)
        client.socket().shutdown(socket.SHUT_RDWR)  # abrupt: the will is due after its delay
        client.loop_stop()
        time.sleep(0.5)
        with TestClient(gateway.port, "dev", v5=True, clean=False, session_expiry_s=600):
            watcher.expect_nothing(2.5)  # back before the 2 s delay ended: no will
        watcher.expect_nothing(0.5)  # a clean DISCONNECT discards it too


def test_unsubscribe_stops_delivery(gateway) -> None:
    with TestClient(gateway.port, "s", v5=True) as sub, TestClient(gateway.port, "p") as pub:
        sub.subscribe("u", 1)
        pub.publish("u", b"1", 1)
        assert sub.expect(1)[0].payload == b"1"
        unsubscribed = threading.Event()
        sub.client.on_unsubscribe = lambda *args: unsubscribed.set()
        sub.client.unsubscribe("u")
        assert unsubscribed.wait(10)
        pub.publish("u", b"2", 1)
        sub.expect_nothing(0.5)


def test_session_expiry_ends_an_offline_session(gateway) -> None:
    client = TestClient(gateway.port, "short", v5=True, clean=True, session_expiry_s=1)
    client.subscribe("t", 1)
    client.close()
    time.sleep(2.5)  # the gateway checks expiry once a second
    with TestClient(gateway.port, "short", v5=True, clean=False, session_expiry_s=1) as back:
        assert not back.session_present


def test_queue_limit_drops_new_messages_and_counts_them(start_gateway) -> None:
    gateway = start_gateway(config_text='[broker]\nmax_queued_messages = 5\nqueue_full = "drop_new"\n',
                            metrics_port=free_port())
    sub = TestClient(gateway.port, "offline", clean=False)
    sub.subscribe("q", 1)
    sub.close()
    with TestClient(gateway.port, "p") as pub:
        for i in range(8):
            pub.publish("q", str(i).encode(), 1)
    with TestClient(gateway.port, "offline", clean=False) as back:
        assert [m.payload for m in back.expect(5)] == [b"0", b"1", b"2", b"3", b"4"]
        back.expect_nothing(0.5)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).read()
    assert b'ferry_dropped_messages_total{reason="queue_full"} 3' in metrics


def test_a_full_persistent_queue_refuses_publishers_who_keep_their_messages(start_gateway) -> None:
    """`queue_full = "refuse"` (the default): nothing is acknowledged and then dropped. A 3.1.1
    publisher gets no PUBACK and a closed connection, an MQTT 5 one PUBACK 0x97; both keep the message,
    and it arrives once the subscriber has made room."""
    gateway = start_gateway(config_text="[broker]\nmax_queued_messages = 5\n", metrics_port=free_port())
    sub = TestClient(gateway.port, "offline", clean=False)
    sub.subscribe("q", 1)
    sub.close()
    pub = TestClient(gateway.port, "p")
    for i in range(5):
        pub.publish("q", str(i).encode(), 1)
    refused = pub.client.publish("q", b"5", 1)
    refused.wait_for_publish(2)
    assert not refused.is_published()
    assert pub.disconnects.get(timeout=10) is not None  # the gateway closed the connection
    pub.client.loop_stop()
    with TestClient(gateway.port, "p5", v5=True) as v5:
        acks: list = []
        v5.client.on_publish = lambda client, userdata, mid, reason, props: acks.append(reason)
        v5.client.publish("q", b"6", 1).wait_for_publish(10)
        assert [int(code.value) for code in acks] == [0x97]
    with TestClient(gateway.port, "offline", clean=False) as back:
        assert [m.payload for m in back.expect(5)] == [b"0", b"1", b"2", b"3", b"4"]
        back.expect_nothing(0.5)
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).read()
    refused_total = next(line for line in metrics.decode().splitlines()
                         if line.startswith('ferry_publishes_refused_total{reason="queue_full"} '))
    assert float(refused_total.split()[1]) >= 2  # paho may have retried "5" on a reconnect
    assert b'ferry_dropped_messages_total{reason="queue_full"} 0' in metrics
