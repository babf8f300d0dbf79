"""The `[broker]` limits the core enforces (the security issue's list), each counted.

Every test here failed on the core before the limit it names: a client's Receive Maximum raised
the in-flight window past `max_inflight_messages`; topics and filters of any length and depth,
any number of subscriptions, sessions and retained messages were accepted; nothing told the
network layer that a delivery met a backed-up output.
"""

from __future__ import annotations

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.stats import DropReason, Limit
from ferry.gateway.mqtt import (
    Connack, Connect, Properties, Puback, Publish, Pubrec, ReasonCode, Suback, Subscribe, Subscription, Will,
)
from tests.gateway.broker.harness import V5, Client, Harness


def publishes(packets: list[object]) -> list[Publish]:
    return [p for p in packets if isinstance(p, Publish)]


def subscribe(client: Client, *filters: str, qos: int = 1, packet_id: int = 1) -> Suback:
    client.send(Subscribe(packet_id, tuple(Subscription(f, qos) for f in filters)))
    client.harness.commit()
    (suback,) = [p for p in client.received() if isinstance(p, Suback)]
    return suback


def hits(h: Harness, limit: Limit) -> int:
    return h.broker.stats.limit_hits[limit]


# ---------------------------------------------------------------- in flight (the server caps the window)

def test_a_v5_receive_maximum_cannot_raise_the_window_past_max_inflight_messages() -> None:
    h = Harness(BrokerConfig(max_inflight_messages=10))
    sub = h.client("sub", V5, properties=Properties(receive_maximum=65535))
    sub.received()
    subscribe(sub, "t")
    pub = h.client("pub")
    for i in range(1, 31):
        pub.send(Publish("t", b"%d" % i, 1, packet_id=i))
    h.commit()
    unacked = publishes(sub.received())
    assert len(unacked) == 10  # was 30: the client's 65535 replaced the server's cap
    sub.send(Puback(unacked[0].packet_id))
    assert len(publishes(sub.received())) == 1  # the window moves on one by one


def test_a_smaller_v5_receive_maximum_still_narrows_the_window() -> None:
    h = Harness(BrokerConfig(max_inflight_messages=10))
    sub = h.client("sub", V5, properties=Properties(receive_maximum=3))
    subscribe(sub, "t")
    pub = h.client("pub")
    for i in range(1, 11):
        pub.send(Publish("t", b"x", 1, packet_id=i))
    h.commit()
    assert len(publishes(sub.received())) == 3


# ---------------------------------------------------------------- topic length and levels

def test_a_v5_qos1_publish_to_a_too_long_topic_gets_0x90_and_goes_nowhere() -> None:
    h = Harness(BrokerConfig(max_topic_length=16))
    sub = h.client("sub")
    subscribe(sub, "#")
    pub = h.client("pub", V5)
    pub.received()
    pub.send(Publish("a" * 17, b"x", 1, packet_id=1, retain=True))
    pub.send(Publish("b" * 16, b"y", 1, packet_id=2))  # at the limit: fine
    h.commit()
    assert pub.received() == [Puback(1, ReasonCode.TOPIC_NAME_INVALID), Puback(2, ReasonCode.SUCCESS)]
    assert [p.payload for p in publishes(sub.received())] == [b"y"]
    assert "a" * 17 not in h.broker.retained
    assert hits(h, Limit.TOPIC_LENGTH) == 1


def test_the_topic_length_counts_utf8_bytes() -> None:
    h = Harness(BrokerConfig(max_topic_length=8))
    pub = h.client("pub", V5)
    pub.received()
    pub.send(Publish("äöüß", b"x", 1, packet_id=1))  # 4 characters, 8 bytes
    pub.send(Publish("äöüßa", b"x", 1, packet_id=2))  # 9 bytes
    h.commit()
    assert [p.reason_code for p in pub.received()] == [ReasonCode.NO_MATCHING_SUBSCRIBERS,
                                                       ReasonCode.TOPIC_NAME_INVALID]


def test_a_v5_qos2_publish_too_deep_gets_pubrec_0x90() -> None:
    h = Harness(BrokerConfig(max_topic_levels=3))
    pub = h.client("pub", V5)
    pub.received()
    pub.send(Publish("a/b/c/d", b"x", 2, packet_id=7))
    pub.send(Publish("a/b/c", b"x", 2, packet_id=8))
    h.commit()
    assert [type(p) for p in pub.received()] == [Pubrec, Pubrec]
    assert 7 not in pub.conn.session.incoming_qos2  # refused: no QoS 2 state kept
    assert hits(h, Limit.TOPIC_LEVELS) == 1


def test_a_v311_publish_over_the_limits_is_acknowledged_and_dropped() -> None:
    h = Harness(BrokerConfig(max_topic_length=16, max_topic_levels=3))
    sub = h.client("sub")
    subscribe(sub, "#")
    pub = h.client("pub")
    pub.received()
    pub.send(Publish("x" * 17, b"long", 1, packet_id=1))
    pub.send(Publish("a/b/c/d", b"deep", 1, packet_id=2))
    pub.send(Publish("a/b/c/d", b"deep0", 0))
    h.commit()
    # 3.1.1 has no negative PUBACK; closing would make the client resend the same publish forever.
    assert pub.received() == [Puback(1), Puback(2)]
    assert not pub.closing
    assert publishes(sub.received()) == []
    assert hits(h, Limit.TOPIC_LENGTH) == 1 and hits(h, Limit.TOPIC_LEVELS) == 2


def test_subscribe_filters_over_the_topic_limits_are_refused() -> None:
    h = Harness(BrokerConfig(max_topic_length=16, max_topic_levels=3))
    v5 = h.client("v5", V5)
    v5.received()
    assert subscribe(v5, "a/b/#", "a/b/c/#", "f" * 17).reason_codes == (
        ReasonCode.GRANTED_QOS_1, ReasonCode.TOPIC_FILTER_INVALID, ReasonCode.TOPIC_FILTER_INVALID)
    v3 = h.client("v3")
    assert subscribe(v3, "a/+/c/d").reason_codes == (ReasonCode.UNSPECIFIED_ERROR,)  # 0x80
    assert set(v5.conn.session.subscriptions) == {"a/b/#"}
    assert hits(h, Limit.TOPIC_LEVELS) == 2 and hits(h, Limit.TOPIC_LENGTH) == 1


# ---------------------------------------------------------------- subscriptions per client

def test_subscriptions_beyond_the_per_client_limit_are_refused() -> None:
    h = Harness(BrokerConfig(max_subscriptions_per_client=3))
    v5 = h.client("v5", V5)
    v5.received()
    assert subscribe(v5, "a", "b", "c", "d", "e").reason_codes == (
        *(ReasonCode.GRANTED_QOS_1,) * 3, ReasonCode.QUOTA_EXCEEDED, ReasonCode.QUOTA_EXCEEDED)
    # Subscribing again to a filter it holds replaces it: always granted.
    assert subscribe(v5, "a", qos=0, packet_id=2).reason_codes == (ReasonCode.GRANTED_QOS_0,)
    v3 = h.client("v3")
    assert subscribe(v3, "a", "b", "c", "d").reason_codes[3] == ReasonCode.UNSPECIFIED_ERROR
    assert len(v5.conn.session.subscriptions) == 3
    assert hits(h, Limit.SUBSCRIPTIONS) == 3


# ---------------------------------------------------------------- sessions

def test_a_new_persistent_session_beyond_max_sessions_is_refused() -> None:
    h = Harness(BrokerConfig(max_sessions=2))
    h.client("kept-1", clean=False).drop()
    h.client("kept-2", V5, clean=False, properties=Properties(session_expiry_interval=60)).drop()
    v5 = h.client("new-v5", V5, clean=False, properties=Properties(session_expiry_interval=60))
    assert v5.received() == [Connack(False, ReasonCode.QUOTA_EXCEEDED)]
    assert v5.closing
    v3 = h.client("new-v3", clean=False)
    assert v3.received() == [Connack(False, ReasonCode.SERVER_UNAVAILABLE)]  # return code 3
    assert set(h.broker.sessions) == {"kept-1", "kept-2"}
    assert hits(h, Limit.SESSIONS) == 2
    # An existing session may come back; a clean one (it ends with its connection) is not refused.
    back = h.client("kept-1", clean=False)
    assert back.received() == [Connack(True, ReasonCode.SUCCESS)]
    clean = h.client("passing", clean=True)
    assert clean.received() == [Connack(False, ReasonCode.SUCCESS)]


# ---------------------------------------------------------------- retained messages

def test_a_new_retained_topic_beyond_max_retained_is_delivered_not_retained() -> None:
    h = Harness(BrokerConfig(max_retained_messages=2))
    sub = h.client("sub")
    subscribe(sub, "r/#")
    pub = h.client("pub", V5)
    pub.received()
    for i, topic in enumerate(("r/1", "r/2", "r/3"), start=1):
        pub.send(Publish(topic, b"v%d" % i, 1, packet_id=i, retain=True))
    h.commit()
    assert [p.reason_code for p in pub.received()] == [ReasonCode.SUCCESS] * 3
    assert [p.payload for p in publishes(sub.received())] == [b"v1", b"v2", b"v3"]  # all routed
    assert set(h.broker.retained) == {"r/1", "r/2"}
    assert hits(h, Limit.RETAINED) == 1
    # Replacing and clearing are always allowed.
    pub.send(Publish("r/1", b"new", 1, packet_id=4, retain=True))
    pub.send(Publish("r/2", b"", 1, packet_id=5, retain=True))
    pub.send(Publish("r/3", b"v3", 1, packet_id=6, retain=True))  # room again
    h.commit()
    assert h.broker.retained["r/1"].payload == b"new" and set(h.broker.retained) == {"r/1", "r/3"}


def test_a_retained_will_beyond_max_retained_is_published_not_retained() -> None:
    h = Harness(BrokerConfig(max_retained_messages=1))
    sub = h.client("sub")
    subscribe(sub, "w/#")
    h.client("pub").send(Publish("w/kept", b"x", 0, retain=True))
    dev = h.client("dev", will=Will("w/dev", b"gone", 0, True))
    dev.drop()
    assert [p.payload for p in publishes(sub.received())] == [b"x", b"gone"]
    assert set(h.broker.retained) == {"w/kept"}
    assert hits(h, Limit.RETAINED) == 1


# ---------------------------------------------------------------- flow control signal

def test_a_qos0_delivery_that_fills_an_output_names_it_for_flow_control() -> None:
    h = Harness(BrokerConfig(max_output_buffer_bytes=1000))
    sub = h.client("sub")
    subscribe(sub, "t", qos=0)
    pub = h.client("pub")
    sent = 0
    while h.broker.backed_up is None:
        pub.send(Publish("t", b"x" * 100, 0))
        sent += 1
    assert h.broker.backed_up is sub.conn
    assert len(publishes(sub.received())) == sent  # over the bound within a turn: delivered, not dropped
    h.broker.backed_up = None
    pub.send(Publish("t", b"small", 0))
    assert h.broker.backed_up is None  # the output was written (received): room again


def test_a_qos0_delivery_to_a_blocked_output_is_dropped_and_named() -> None:
    h = Harness()
    sub = h.client("sub")
    subscribe(sub, "t", qos=0)
    sub.conn.output_blocked = True  # the transport is over its high-water mark
    h.client("pub").send(Publish("t", b"x", 0))
    assert h.broker.backed_up is sub.conn
    assert h.broker.stats.dropped[DropReason.SLOW_SUBSCRIBER] == 1


# ---------------------------------------------------------------- the gateway's own connections

def test_internal_connections_are_not_limited() -> None:
    h = Harness(BrokerConfig(max_topic_levels=2, max_subscriptions_per_client=1, max_sessions=1))
    h.client("someone", clean=False).drop()
    internal = Client(h, V5)
    internal.conn = h.broker.open_connection("internal:test", h.now, internal=True)
    internal.send(Connect("gateway-own", V5, False, 0, properties=Properties(session_expiry_interval=60)))
    h.commit()
    assert [p.reason_code for p in internal.received()] == [ReasonCode.SUCCESS]
    assert subscribe(internal, "a/b/c", "d").reason_codes == (ReasonCode.GRANTED_QOS_1,) * 2
    assert sum(h.broker.stats.limit_hits.values()) == 0


def test_each_limit_hit_is_logged_at_most_every_ten_seconds(caplog) -> None:
    h = Harness(BrokerConfig(max_topic_levels=1))
    pub = h.client("pub")
    with caplog.at_level("WARNING", logger="ferry.gateway.limits"):
        for _ in range(5):
            pub.send(Publish("a/b", b"x", 0))
        h.advance(11)
        pub.send(Publish("a/b", b"x", 0))
    lines = [r.getMessage() for r in caplog.records if "topic_levels" in r.getMessage()]
    assert len(lines) == 2 and "(5 times in the last 10 s)" in lines[1]
    assert hits(h, Limit.TOPIC_LEVELS) == 6
