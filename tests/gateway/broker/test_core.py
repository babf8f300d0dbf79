"""The broker core's MQTT semantics, driven through the real codec without sockets."""

from __future__ import annotations

from ferry.gateway.broker.config import BrokerConfig, QueueFull
from ferry.gateway.broker.stats import DropReason
from ferry.gateway.mqtt import (
    Connack, Connect, Disconnect, Pingreq, Pingresp, Properties, Puback, Pubcomp, Publish, Pubrec,
    Pubrel, ReasonCode, Suback, Subscribe, Subscription, Unsuback, Unsubscribe, Will,
)
from tests.gateway.broker.harness import V5, V311, Harness


def publishes(packets: list[object]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def subscribe(client, *filters: str, qos: int = 1, packet_id: int = 1, **options) -> list[object]:
    props = options.pop("properties", Properties())
    client.send(Subscribe(packet_id, tuple(Subscription(f, qos, **options) for f in filters), props))
    client.harness.commit()
    return client.received()


def test_connect_gets_connack_without_session() -> None:
    h = Harness()
    client = h.client("dev1")
    assert client.received() == [Connack(False, ReasonCode.SUCCESS)]


def test_qos1_to_persistent_subscriber_is_acked_only_after_commit() -> None:
    h = Harness()
    sub = h.client("sub", clean=False)
    subscribe(sub, "ferry/+/+/telemetry")
    sub.received()
    pub = h.client("pub")
    pub.received()
    pub.send(Publish("ferry/s/d/telemetry", b"r1", 1, packet_id=7))
    assert pub.received() == []  # nothing on disk yet, so no PUBACK
    assert [p.payload for p in publishes(sub.received())] == [b"r1"]
    # The packet id it went out with is kept too, for a resend after a restart [MQTT-4.4.0-1].
    assert h.journal.kinds()[-3:] == ["MessageAdded", "Enqueued", "InflightAssigned"]
    h.commit()
    assert pub.received() == [Puback(7)]


def test_qos1_without_persistent_target_is_acked_at_once() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "a/b")
    pub = h.client("pub")
    pub.received()
    pub.send(Publish("a/b", b"x", 1, packet_id=1))
    assert pub.received() == [Puback(1)]
    assert [(p.payload, p.qos) for p in publishes(sub.received())] == [(b"x", 1)]


def test_acks_keep_their_order_across_batches() -> None:
    h = Harness()
    h.client("sub", clean=False).send(Subscribe(1, (Subscription("t", 1),)))
    h.commit()
    pub = h.client("pub")
    pub.received()
    pub.send(Publish("t", b"1", 1, packet_id=1))
    pub.send(Publish("other", b"2", 1, packet_id=2))  # needs nothing durable
    assert pub.received() == []  # held behind packet 1
    h.commit()
    assert pub.received() == [Puback(1), Puback(2)]


def test_wildcards_and_dollar_topics() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "#", "+/status", "$SYS/#", "a/+/c", "a/b/#")
    pub = h.client("pub")
    for topic in ("a/b/c", "x/status", "$SYS/broker/uptime", "a/b"):
        if topic.startswith("$"):
            h.broker.publish_internal(topic, topic.encode(), h.now)  # only the broker publishes there
        else:
            pub.send(Publish(topic, topic.encode(), 0))
    got = [p.topic for p in publishes(sub.received())]
    assert got == ["a/b/c", "x/status", "$SYS/broker/uptime", "a/b"]  # one copy each
    h2 = Harness()
    root = h2.client("root")
    subscribe(root, "#", "+/broker/#")
    h2.broker.publish_internal("$SYS/broker/x", b"1", h2.now)
    assert publishes(root.received()) == []  # [MQTT-4.7.2-1]


def test_overlapping_subscriptions_deliver_once_at_the_highest_qos() -> None:
    h = Harness()
    sub = h.client("sub")
    sub.send(Subscribe(1, (Subscription("a/#", 0), Subscription("a/b", 2))))
    h.commit()
    sub.received()
    h.client("pub").send(Publish("a/b", b"x", 2, packet_id=3))
    h.commit()
    got = publishes(sub.received())
    assert [(p.topic, p.qos) for p in got] == [("a/b", 2)]


def test_retained_message_set_delivered_and_cleared() -> None:
    h = Harness()
    pub = h.client("pub")
    pub.received()
    pub.send(Publish("ferry/s/d/status", b"online", 1, retain=True, packet_id=1))
    assert pub.received() == []  # retained state must be durable first
    h.commit()
    assert pub.received() == [Puback(1)]
    sub = h.client("sub")
    sub.received()
    got = publishes(subscribe(sub, "ferry/+/+/status"))
    assert [(p.payload, p.retain) for p in got] == [(b"online", True)]
    pub.send(Publish("ferry/s/d/status", b"", 0, retain=True))
    assert [p.payload for p in publishes(sub.received())] == [b""]
    late = h.client("late")
    assert publishes(subscribe(late, "ferry/#")) == []
    assert "RetainCleared" in h.journal.kinds()


def test_live_delivery_clears_retain_flag_for_v311() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "t")
    h.client("pub").send(Publish("t", b"x", 0, retain=True))
    h.commit()
    assert [p.retain for p in publishes(sub.received())] == [False]


def test_shared_subscription_round_robin() -> None:
    h = Harness()
    workers = [h.client(f"w{i}") for i in range(3)]
    for worker in workers:
        subscribe(worker, "$share/g/jobs/#", qos=0)
    pub = h.client("pub")
    for i in range(6):
        pub.send(Publish("jobs/x", str(i).encode(), 0))
    counts = [len(publishes(w.received())) for w in workers]
    assert counts == [2, 2, 2]


def test_session_takeover_closes_the_old_connection() -> None:
    h = Harness()
    old = h.client("dev", clean=False)
    subscribe(old, "cmd")
    new = h.client("dev", clean=False)
    assert old.closing
    assert new.received() == [Connack(True, ReasonCode.SUCCESS)]
    h.client("op").send(Publish("cmd", b"go", 1, packet_id=1))
    assert [p.payload for p in publishes(new.received())] == [b"go"]


def test_offline_queue_is_delivered_on_reconnect_and_inflight_resent_with_dup() -> None:
    h = Harness(BrokerConfig(max_inflight_messages=2))
    sub = h.client("sub", clean=False)
    subscribe(sub, "t")
    sub.drop()
    pub = h.client("pub")
    for i in range(4):
        pub.send(Publish("t", str(i).encode(), 1, packet_id=i + 1))
    h.commit()
    assert pub.received()[1:] == [Puback(i + 1) for i in range(4)]
    back = h.client("sub", clean=False)
    packets = back.received()
    assert packets[0] == Connack(True, ReasonCode.SUCCESS)
    first = publishes(packets)
    assert [p.payload for p in first] == [b"0", b"1"]  # window of 2
    back.drop()
    again = h.client("sub", clean=False)
    resent = publishes(again.received())
    assert [(p.payload, p.dup, p.packet_id) for p in resent] == [(b"0", True, first[0].packet_id),
                                                                (b"1", True, first[1].packet_id)]
    for p in resent:
        again.send(Puback(p.packet_id))
    rest = publishes(again.received())
    assert [(p.payload, p.dup) for p in rest] == [(b"2", False), (b"3", False)]
    for p in rest:
        again.send(Puback(p.packet_id))
    assert h.journal.kinds().count("Dequeued") == 4


def test_clean_session_forgets_everything() -> None:
    h = Harness()
    sub = h.client("sub", clean=False)
    subscribe(sub, "t")
    sub.drop()
    fresh = h.client("sub", clean=True)
    assert fresh.received() == [Connack(False, ReasonCode.SUCCESS)]
    h.client("pub").send(Publish("t", b"x", 1, packet_id=1))
    assert publishes(fresh.received()) == []
    assert "SessionDeleted" in h.journal.kinds()


def test_qos2_inbound_exactly_once_with_duplicate_publish() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "t", qos=2)
    pub = h.client("pub", clean=False)
    pub.received()
    pub.send(Publish("t", b"once", 2, packet_id=9))
    h.commit()
    assert pub.received() == [Pubrec(9)]
    pub.send(Publish("t", b"once", 2, dup=True, packet_id=9))
    assert pub.received() == [Pubrec(9)]
    pub.send(Pubrel(9))
    h.commit()
    assert pub.received() == [Pubcomp(9)]
    got = publishes(sub.received())
    assert [p.payload for p in got] == [b"once"]
    assert h.broker.stats.duplicates_qos2 == 1


def test_qos2_outbound_flow() -> None:
    h = Harness()
    sub = h.client("sub", clean=False)
    subscribe(sub, "t", qos=2)
    h.client("pub").send(Publish("t", b"x", 2, packet_id=1))
    h.commit()
    (delivery,) = publishes(sub.received())
    assert delivery.qos == 2
    sub.send(Pubrec(delivery.packet_id))
    assert sub.received() == []  # PUBREL waits for PubrecReceived to be on disk
    assert h.journal.kinds()[-1] == "PubrecReceived"
    h.commit()
    assert sub.received() == [Pubrel(delivery.packet_id)]
    sub.drop()
    back = h.client("sub", clean=False)
    assert back.received() == [Connack(True, ReasonCode.SUCCESS), Pubrel(delivery.packet_id)]
    back.send(Pubcomp(delivery.packet_id))
    assert h.broker.sessions["sub"].inflight == {}


def test_keepalive_timeout_publishes_the_will() -> None:
    h = Harness()
    watcher = h.client("watcher")
    subscribe(watcher, "ferry/+/+/status")
    device = h.client("dev", keepalive_s=10,
                      will=Will("ferry/s/dev/status", b"offline", 1, True))
    h.advance(14)
    assert not device.closing
    h.advance(2)  # 16 s > 1.5 x 10 s
    assert device.closing
    device.drop()
    h.commit()
    assert [(p.topic, p.payload) for p in publishes(watcher.received())] == [("ferry/s/dev/status", b"offline")]
    assert h.broker.retained["ferry/s/dev/status"].payload == b"offline"


def test_clean_disconnect_discards_the_will() -> None:
    h = Harness()
    watcher = h.client("watcher")
    subscribe(watcher, "w")
    device = h.client("dev", will=Will("w", b"gone", 0, False))
    device.send(Disconnect())
    device.drop()
    assert publishes(watcher.received()) == []


def test_ping() -> None:
    h = Harness()
    client = h.client("c")
    client.received()
    client.send(Pingreq())
    assert client.received() == [Pingresp()]


def test_unsubscribe_v5_reason_codes() -> None:
    h = Harness()
    client = h.client("c", V5)
    subscribe(client, "a")
    client.send(Unsubscribe(2, ("a", "b")))
    h.commit()
    assert client.received() == [Unsuback(2, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED))]


def test_v5_no_local_retain_as_published_and_subscription_ids() -> None:
    h = Harness()
    client = h.client("c", V5)
    subscribe(client, "echo", no_local=True)
    subscribe(client, "keep", retain_as_published=True, packet_id=2,
              properties=Properties(subscription_identifiers=(42,)))
    client.send(Publish("echo", b"mine", 0))
    client.send(Publish("keep", b"r", 0, retain=True))
    got = publishes(client.received())
    assert [(p.topic, p.retain, p.properties.subscription_identifiers) for p in got] == [("keep", True, (42,))]


def test_v5_retain_handling_2_sends_no_retained() -> None:
    h = Harness()
    h.client("p").send(Publish("r", b"x", 0, retain=True))
    h.commit()
    client = h.client("c", V5)
    assert publishes(subscribe(client, "r", retain_handling=2)) == []
    assert len(publishes(subscribe(client, "r", retain_handling=1, packet_id=2))) == 0  # not new
    assert len(publishes(subscribe(client, "r", retain_handling=0, packet_id=3))) == 1


def test_v5_topic_alias() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "long/topic/name")
    pub = h.client("pub", V5)
    pub.send(Publish("long/topic/name", b"1", 0, properties=Properties(topic_alias=1)))
    pub.send(Publish("", b"2", 0, properties=Properties(topic_alias=1)))
    assert [(p.topic, p.payload) for p in publishes(sub.received())] == [("long/topic/name", b"1"),
                                                                         ("long/topic/name", b"2")]
    pub.send(Publish("", b"3", 0, properties=Properties(topic_alias=2)))
    assert pub.closing


def test_v5_message_expiry_drops_queued_messages() -> None:
    h = Harness()
    sub = h.client("sub", V5, properties=Properties(session_expiry_interval=3600))
    subscribe(sub, "t")
    sub.drop()
    pub = h.client("pub", V5)
    pub.send(Publish("t", b"short", 1, packet_id=1, properties=Properties(message_expiry_interval=5)))
    pub.send(Publish("t", b"long", 1, packet_id=2, properties=Properties(message_expiry_interval=600)))
    h.commit()
    h.advance(10)
    back = h.client("sub", V5, clean=False, properties=Properties(session_expiry_interval=3600))
    got = publishes(back.received())
    assert [p.payload for p in got] == [b"long"]
    assert 589 <= got[0].properties.message_expiry_interval <= 590
    assert h.broker.stats.dropped[DropReason.EXPIRED] == 1


def test_v5_session_expiry() -> None:
    h = Harness()
    client = h.client("c", V5, properties=Properties(session_expiry_interval=30))
    subscribe(client, "t")
    client.drop()
    h.advance(20)
    assert "c" in h.broker.sessions
    h.advance(15)
    assert "c" not in h.broker.sessions
    assert "SessionDeleted" in h.journal.kinds()


def test_v5_will_delay_cancelled_by_reconnect() -> None:
    h = Harness()
    watcher = h.client("w")
    subscribe(watcher, "lwt")
    props = Properties(session_expiry_interval=600)
    device = h.client("dev", V5, properties=props,
                      will=Will("lwt", b"gone", 0, False, Properties(will_delay_interval=30)))
    device.drop()
    h.advance(10)
    h.client("dev", V5, clean=False, properties=props)
    h.advance(30)
    assert publishes(watcher.received()) == []
    h.client("dev", V5, clean=False, properties=props,
             will=Will("lwt", b"gone2", 0, False, Properties(will_delay_interval=5))).drop()
    h.advance(6)
    assert [p.payload for p in publishes(watcher.received())] == [b"gone2"]


def test_v5_receive_maximum_exceeded_closes() -> None:
    h = Harness(BrokerConfig(receive_maximum=2))
    h.client("s", clean=False).send(Subscribe(1, (Subscription("t", 1),)))
    h.commit()
    pub = h.client("pub", V5)
    for i in range(3):
        pub.send(Publish("t", b"x", 1, packet_id=i + 1))
    assert pub.closing
    assert pub.conn.close_reason == ReasonCode.RECEIVE_MAXIMUM_EXCEEDED


def test_queue_limit_drops_and_counts_with_drop_new() -> None:
    h = Harness(BrokerConfig(max_queued_messages=3, queue_full=QueueFull.DROP_NEW))
    sub = h.client("sub", clean=False)
    subscribe(sub, "t")
    sub.drop()
    pub = h.client("pub")
    for i in range(5):
        pub.send(Publish("t", b"x", 1, packet_id=i + 1))
    assert h.broker.stats.dropped[DropReason.QUEUE_FULL] == 2
    assert len(h.broker.sessions["sub"].queue) == 3


def test_publish_before_connect_is_a_protocol_error() -> None:
    h = Harness()
    from tests.gateway.broker.harness import Client
    client = Client(h, V311)
    h.broker.handle_packet(client.conn, Publish("t", b"x", 0), h.now)
    assert client.closing
    assert h.broker.stats.protocol_errors == 1


def test_v311_empty_client_id_with_persistent_session_is_rejected() -> None:
    h = Harness()
    from tests.gateway.broker.harness import Client
    client = Client(h, V311)
    client.send(Connect("", V311, False, 60))
    assert client.received() == [Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)]
    assert client.closing


def test_v5_empty_client_id_gets_one_assigned() -> None:
    h = Harness()
    client = h.client("", V5)
    (connack,) = client.received()
    assert connack.properties.assigned_client_identifier.startswith("ferry-auto-")


def test_subscribe_is_acked_after_its_routing_is_durable() -> None:
    h = Harness()
    client = h.client("c", clean=False)
    client.received()
    client.send(Subscribe(5, (Subscription("t", 1),)))
    assert client.received() == []
    h.commit()
    assert client.received() == [Suback(5, (ReasonCode.GRANTED_QOS_1,))]


def test_qos0_to_a_blocked_subscriber_is_dropped_and_counted() -> None:
    h = Harness()
    sub = h.client("slow")
    subscribe(sub, "t", qos=0)
    sub.conn.output_blocked = True  # the transport's buffer is over its high-water mark
    pub = h.client("pub")
    pub.send(Publish("t", b"x", 0))
    assert publishes(sub.received()) == []
    assert h.broker.stats.dropped[DropReason.SLOW_SUBSCRIBER] == 1
    sub.conn.output_blocked = False
    pub.send(Publish("t", b"y", 0))
    assert [p.payload for p in publishes(sub.received())] == [b"y"]


def test_max_keepalive_replaces_v5_and_refuses_v311() -> None:
    h = Harness(BrokerConfig(max_keepalive_s=120))
    modern = h.client("m", V5, keepalive_s=600)
    (connack,) = modern.received()
    assert connack.properties.server_keep_alive == 120
    assert modern.conn.keepalive_s == 120
    old = h.client("o", keepalive_s=600)
    assert old.received() == [Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID)]
    assert old.closing
