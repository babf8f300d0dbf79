"""The core's acknowledgement order, refusals and CONNECT answers (issue 11's protocol fixes).

Each test here failed on the core before the fix it names: QoS 2 acknowledgements that overtook
their records, client ids that repeated after a restart, QoS 1 resends under new packet ids, full
persistent queues that acknowledged and dropped, publishes to $SYS, CONNECTs refused without a
CONNACK, authentication methods accepted, operator commands refused by a full spool.
"""

from __future__ import annotations

from ferry.gateway.broker.config import NEVER_EXPIRES, BrokerConfig, QueueFull, SessionPolicy
from ferry.gateway.mqtt import (
    Connack, Connect, Properties, ProtocolError, Puback, Pubcomp, Publish, Pubrec, Pubrel, ReasonCode, Subscribe,
    Subscription,
)
from tests.gateway.broker.harness import V5, V311, Client, Harness
from tests.gateway.broker.test_recovery import restarted


def publishes(packets: list[object]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def subscribed(h: Harness, client_id: str, topic_filter: str, qos: int = 1, version=V311) -> Client:
    client = h.client(client_id, version, clean=False)
    client.send(Subscribe(1, (Subscription(topic_filter, qos),)))
    h.commit()
    client.received()
    return client


def test_pubcomp_waits_until_the_release_is_durable() -> None:
    h = Harness()
    pub = h.client("pub", clean=False)
    pub.received()
    pub.send(Publish("t", b"x", 2, packet_id=5))
    h.commit()
    assert pub.received() == [Pubrec(5)]
    pub.send(Pubrel(5))
    assert pub.received() == []  # IncomingReleased is not on disk yet
    assert h.journal.kinds()[-1] == "IncomingReleased"
    h.commit()
    assert pub.received() == [Pubcomp(5)]


def test_pubrel_waits_until_the_pubrec_is_durable() -> None:
    h = Harness()
    sub = subscribed(h, "sub", "t", qos=2)
    h.client("pub").send(Publish("t", b"x", 2, packet_id=1))
    h.commit()
    (delivery,) = publishes(sub.received())
    sub.send(Pubrec(delivery.packet_id))
    assert sub.received() == []
    h.commit()
    assert sub.received() == [Pubrel(delivery.packet_id)]


def test_assigned_client_ids_never_repeat_across_restarts() -> None:
    ids = set()
    for _ in range(3):  # a fresh core each time, as after a restart
        h = Harness()
        client = Client(h, V5)
        client.send(Connect("", V5, False, 60, properties=Properties(session_expiry_interval=3600)))
        h.commit()
        (connack,) = client.received()
        assigned = connack.properties.assigned_client_identifier
        assert assigned.startswith("ferry-auto-") and len(assigned) == len("ferry-auto-") + 32
        ids.add(assigned)
    assert len(ids) == 3


def test_qos1_in_flight_is_resent_after_a_restart_with_its_packet_id_and_dup() -> None:
    h = Harness()
    sub = subscribed(h, "sub", "t")
    pub = h.client("pub")
    for n in range(3):
        pub.send(Publish("t", b"m%d" % n, 1, packet_id=n + 1))
    h.commit()
    sent = {p.payload: p.packet_id for p in publishes(sub.received())}
    sub.send(Puback(sent[b"m0"]))
    h.commit()
    fresh = restarted(h)
    back = fresh.client("sub", clean=False)
    resent = publishes(back.received())
    assert [(p.payload, p.packet_id, p.dup) for p in resent] == \
        [(b"m1", sent[b"m1"], True), (b"m2", sent[b"m2"], True)]


def test_a_full_persistent_queue_refuses_instead_of_acknowledging_and_dropping() -> None:
    h = Harness(BrokerConfig(max_queued_messages=2))
    offline = subscribed(h, "offline", "t")
    offline.drop()
    watcher = subscribed(h, "watcher", "t")
    pub = h.client("pub")
    pub.received()
    for n in (1, 2):
        pub.send(Publish("t", b"%d" % n, 1, packet_id=n))
        h.commit()
        assert pub.received() == [Puback(n)]
    watcher.received()
    pub.send(Publish("t", b"3", 1, packet_id=3))
    h.commit()
    assert pub.received() == [] and pub.closing  # 3.1.1: no PUBACK, the client keeps it
    assert publishes(watcher.received()) == []  # refused as a whole
    assert h.broker.stats.refused_queue_full == 1
    v5 = h.client("pub5", V5)
    v5.received()
    v5.send(Publish("t", b"4", 2, packet_id=9))
    h.commit()
    assert v5.received() == [Pubrec(9, ReasonCode.QUOTA_EXCEEDED)] and not v5.closing
    assert 9 not in h.broker.sessions["pub5"].incoming_qos2  # the failed flow ends at PUBREC
    assert len(h.broker.sessions["offline"].queue) == 2


def test_drop_new_acknowledges_and_counts() -> None:
    h = Harness(BrokerConfig(max_queued_messages=1, queue_full=QueueFull.DROP_NEW))
    subscribed(h, "offline", "t").drop()
    pub = h.client("pub")
    pub.received()
    for n in (1, 2):
        pub.send(Publish("t", b"x", 1, packet_id=n))
        h.commit()
        assert pub.received() == [Puback(n)]
    assert h.broker.stats.refused_queue_full == 0


def test_clients_cannot_publish_under_dollar_topics() -> None:
    h = Harness()
    everything = h.client("all")
    everything.send(Subscribe(1, (Subscription("$SYS/#", 1),)))
    h.commit()
    everything.received()
    v5 = h.client("v5", V5)
    v5.received()
    v5.send(Publish("$SYS/broker/uptime", b"forged", 1, packet_id=1))
    h.commit()
    assert v5.received() == [Puback(1, ReasonCode.NOT_AUTHORIZED)]
    old = h.client("v311")
    old.received()
    old.send(Publish("$SYS/broker/uptime", b"forged", 1, retain=True, packet_id=2))
    h.commit()
    assert old.received() == [Puback(2)]  # acknowledged and dropped, as 3.1.1 allows
    assert publishes(everything.received()) == []
    assert "$SYS/broker/uptime" not in h.broker.retained
    assert h.broker.stats.publishes_denied == 2


def feed_raw(client: Client, data: bytes) -> None:
    """Bytes the codec cannot produce, through the decoder as the network layer does."""
    try:
        for packet in client.server_decoder.feed(data):
            client.harness.broker.handle_packet(client.conn, packet, client.harness.now)
    except ProtocolError as error:
        client.harness.broker.protocol_error(client.conn, error, client.server_decoder.protocol_version)


def test_unsupported_protocol_level_gets_connack_0x01() -> None:
    for level in (3, 6):
        h = Harness()
        client = Client(h, V311)
        feed_raw(client, bytes.fromhex("10 0c 00 04 4d 51 54 54") + bytes([level]) + bytes.fromhex("02 00 3c 00 00"))
        assert bytes(client.conn.out) == bytes.fromhex("20 02 00 01")  # [MQTT-3.1.2-2]
        assert client.closing
    h = Harness()
    client = Client(h, V311)  # MQTT 3.1's name
    feed_raw(client, bytes.fromhex("10 0e 00 06") + b"MQIsdp" + bytes.fromhex("03 02 00 3c 00 00"))
    assert bytes(client.conn.out) == bytes.fromhex("20 02 00 01")


def test_malformed_v5_connect_gets_a_connack_with_the_reason_and_v311_none() -> None:
    h = Harness()
    v5 = Client(h, V5)
    feed_raw(v5, bytes.fromhex("10 0d 00 04 4d 51 54 54 05 03 00 3c 00 00 00"))  # reserved flag set
    assert v5.received() == [Connack(False, ReasonCode.MALFORMED_PACKET)]
    assert v5.closing
    v311 = Client(h, V311)
    feed_raw(v311, bytes.fromhex("10 0c 00 04 4d 51 54 54 04 03 00 3c 00 00"))
    assert bytes(v311.conn.out) == b"" and v311.closing  # [MQTT-3.1.4-1]


def test_an_authentication_method_we_do_not_offer_is_refused_and_closed() -> None:
    h = Harness()
    client = Client(h, V5)
    client.send(Connect("dev", V5, True, 60, properties=Properties(authentication_method="SCRAM-SHA-1")))
    h.commit()
    assert client.received() == [Connack(False, ReasonCode.BAD_AUTHENTICATION_METHOD)]
    assert client.closing  # [MQTT-4.12.0-1]
    assert "dev" not in h.broker.sessions


def test_operator_commands_pass_a_full_spool() -> None:
    h = Harness()
    bridge_id = "$ferry-bridge"
    h.broker.set_session_policy(bridge_id, SessionPolicy(1, 1 << 20, ignored=("ferry/+/+/cmd",)))
    bridge = Client(h, V5)
    bridge.conn.internal = True
    bridge.send(Connect(bridge_id, V5, False, 0, properties=Properties(
        session_expiry_interval=NEVER_EXPIRES, receive_maximum=1)))
    bridge.send(Subscribe(1, (Subscription("ferry/#", 1),)))
    h.commit()
    bridge.received()
    device = subscribed(h, "dev1", "ferry/s/dev1/cmd")
    operator = h.client("operator")
    operator.received()
    for n in (1, 2):  # one in flight to the bridge, one queued: the spool is full
        operator.send(Publish("ferry/s/dev9/telemetry", b"r", 1, packet_id=n))
        h.commit()
        assert operator.received() == [Puback(n)]
    operator.send(Publish("ferry/s/dev1/cmd", b'{"op":"sample_s","value":60}', 1, packet_id=3))
    h.commit()
    assert operator.received() == [Puback(3)] and not operator.closing
    assert [p.payload for p in publishes(device.received())] == [b'{"op":"sample_s","value":60}']
    assert len(h.broker.sessions[bridge_id].queue) == 1  # the command was not queued for the bridge
    operator.send(Publish("ferry/s/dev9/telemetry", b"r", 1, packet_id=4))
    h.commit()
    assert operator.received() == [] and operator.closing  # device data is still refused
