"""The broker core's hook for the bridge's spool: per-client queue limits and refusing when full."""

from __future__ import annotations

from ferry.gateway.broker.config import NEVER_EXPIRES, BrokerConfig, QueueFull, SessionPolicy
from ferry.gateway.broker.stats import DropReason
from ferry.gateway.mqtt import (
    Connack, Connect, Disconnect, Properties, Puback, Publish, ReasonCode, Subscribe, Subscription,
)
from tests.gateway.broker.harness import V5, V311, Client, Harness

BRIDGE = "$ferry-bridge"


def bridge_client(h: Harness, inflight: int = 2) -> Client:
    """The bridge as `ferry.gateway.bridge` connects it: internal, MQTT 5, never expiring, ferry/# at QoS 1."""
    client = Client(h, V5)
    client.conn.internal = True
    props = Properties(session_expiry_interval=NEVER_EXPIRES, receive_maximum=inflight)
    client.send(Connect(BRIDGE, V5, False, 0, properties=props))
    client.send(Subscribe(1, (Subscription("ferry/#", 1, retain_handling=1),)))
    h.commit()
    client.received()
    return client


def publish(client: Client, topic: str, payload: bytes, packet_id: int) -> list[object]:
    client.send(Publish(topic, payload, 1, packet_id=packet_id))
    client.harness.commit()
    return client.received()


def test_the_bridge_session_has_its_own_limits_not_the_brokers() -> None:
    h = Harness(BrokerConfig(max_queued_messages=3, queue_full=QueueFull.DROP_NEW))
    h.broker.set_session_policy(BRIDGE, SessionPolicy(max_queued_messages=10, max_queued_bytes=1 << 20))
    bridge = bridge_client(h, inflight=2)
    other = h.client("other", clean=False)
    other.send(Subscribe(1, (Subscription("ferry/#", 1),)))
    h.commit()
    other.drop()  # offline: its queue is bounded by [broker] max_queued_messages
    device = h.client("dev1")
    device.received()
    for i in range(1, 13):
        assert publish(device, "ferry/s/dev1/telemetry", b"%d" % i, i) == [Puback(i)]
    session = h.broker.sessions[BRIDGE]
    assert (len(session.inflight), len(session.queue)) == (2, 10)
    assert len(h.broker.sessions["other"].queue) == 3
    assert h.broker.stats.dropped[DropReason.QUEUE_FULL] == 12 - 3  # all for "other"
    assert h.broker.stats.refused_full == 0
    assert not bridge.closing


def test_a_full_spool_refuses_the_publish_and_routes_it_nowhere() -> None:
    h = Harness()
    h.broker.set_session_policy(BRIDGE, SessionPolicy(max_queued_messages=2, max_queued_bytes=1 << 20))
    bridge = bridge_client(h, inflight=1)
    watcher = h.client("watcher")
    watcher.send(Subscribe(1, (Subscription("ferry/#", 1),)))
    watcher.received()
    device = h.client("dev1")
    device.received()
    for i in range(1, 4):  # one in flight to the bridge, two queued
        assert publish(device, "ferry/s/dev1/telemetry", b"%d" % i, i) == [Puback(i)]
    assert len(watcher.received()) == 3
    assert publish(device, "ferry/s/dev1/telemetry", b"4", 4) == []  # no PUBACK: the device keeps it
    assert device.closing
    assert watcher.received() == []  # refused as a whole, not delivered to anyone
    assert h.broker.stats.refused_full == 1
    assert h.broker.stats.messages_received[1] == 3

    # Topics the bridge does not take are not affected by its full spool.
    other = h.client("other")
    other.received()
    assert publish(other, "elsewhere/x", b"y", 1) == [Puback(1)]

    # An MQTT 5 publisher is told why, with a negative PUBACK, and stays connected.
    v5 = h.client("dev2", V5)
    v5.received()
    assert publish(v5, "ferry/s/dev2/telemetry", b"z", 1) == [Puback(1, ReasonCode.QUOTA_EXCEEDED)]
    assert not v5.closing

    # Once the bridge acknowledges, there is room again.
    bridge.send(Puback(1))
    h.commit()
    again = h.client("dev1")
    again.received()
    assert publish(again, "ferry/s/dev1/telemetry", b"4", 4) == [Puback(4)]


def test_the_byte_limit_refuses_too() -> None:
    h = Harness()
    h.broker.set_session_policy(BRIDGE, SessionPolicy(max_queued_messages=100, max_queued_bytes=10))
    bridge_client(h, inflight=1)
    device = h.client("dev1")
    device.received()
    assert publish(device, "ferry/s/dev1/telemetry", b"in flight", 1) == [Puback(1)]
    assert publish(device, "ferry/s/dev1/telemetry", b"0123456789", 2) == [Puback(2)]
    assert publish(device, "ferry/s/dev1/telemetry", b"!", 3) == []
    assert h.broker.stats.refused_full == 1


def test_drop_instead_of_refuse_when_the_policy_says_so() -> None:
    h = Harness()
    h.broker.set_session_policy(BRIDGE, SessionPolicy(1, 1 << 20, refuse_when_full=False))
    bridge_client(h, inflight=1)
    device = h.client("dev1")
    device.received()
    for i in range(1, 4):
        assert publish(device, "ferry/s/dev1/telemetry", b"%d" % i, i) == [Puback(i)]
    assert h.broker.stats.dropped[DropReason.QUEUE_FULL] == 1


def test_the_bridge_client_id_is_reserved_for_the_gateway() -> None:
    h = Harness()
    h.broker.set_session_policy(BRIDGE, SessionPolicy(10, 1 << 20))
    bridge_client(h)
    impostor = h.client(BRIDGE, V311, clean=False)
    assert impostor.received() == [Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)]
    assert impostor.closing
    assert h.broker.sessions[BRIDGE].connection is not None


def test_the_bridge_session_never_expires_even_when_clients_are_capped() -> None:
    h = Harness(BrokerConfig(max_session_expiry_s=60))
    h.broker.set_session_policy(BRIDGE, SessionPolicy(10, 1 << 20))
    bridge = bridge_client(h)
    assert h.broker.sessions[BRIDGE].expiry_interval_s == NEVER_EXPIRES
    bridge.drop()
    h.advance(3600)
    assert BRIDGE in h.broker.sessions


def test_the_receive_time_travels_with_the_message() -> None:
    h = Harness()
    h.broker.set_session_policy(BRIDGE, SessionPolicy(10, 1 << 20))
    bridge_client(h)
    device = h.client("dev1")
    device.received()
    h.now += 2.5
    publish(device, "ferry/s/dev1/telemetry", b"x", 1)
    item = next(iter(h.broker.sessions[BRIDGE].inflight.values()))
    assert item.message.received_at == 1_700_000_000.0 + 2.5
