"""Restart at the core level: the journal's records rebuild sessions, queues, QoS 2 and retained state."""

from __future__ import annotations

from ferry.gateway.broker.recovery import durable_records, restore
from ferry.gateway.mqtt import Connack, Properties, Puback, Pubcomp, Publish, Pubrec, Pubrel, ReasonCode, Subscribe, Subscription
from ferry.gateway.store.state import DurableState
from tests.gateway.broker.harness import V5, Harness


def replay(records) -> DurableState:
    state = DurableState()
    for record in records:
        state.apply(record)
    state.collect_garbage()
    return state


def restarted(h: Harness) -> Harness:
    """A new core restored from everything `h` wrote to its journal (all of it committed)."""
    state = replay(record for _, record in h.journal.records)
    fresh = Harness(h.broker.config)
    restore(fresh.broker, state, fresh.now)
    return fresh


def build_busy_broker() -> Harness:
    h = Harness()
    sub = h.client("sub", clean=False)
    sub.send(Subscribe(1, (Subscription("ferry/+/+/telemetry", 1), Subscription("q2", 2))))
    h.commit()
    sub.received()
    pub = h.client("pub", clean=False)
    pub.send(Publish("ferry/s/d/telemetry", b"delivered-not-acked", 1, packet_id=1))
    pub.send(Publish("q2", b"qos2", 2, packet_id=2))
    pub.send(Publish("q2", b"incoming-unreleased", 2, packet_id=3))
    pub.send(Publish("ferry/s/d/status", b"online", 1, retain=True, packet_id=4))
    h.commit()
    got = [p for p in sub.received() if isinstance(p, Publish)]
    qos2 = next(p for p in got if p.payload == b"qos2")
    sub.send(Pubrec(qos2.packet_id))  # PUBCOMP still owed
    pub.send(Pubrel(2))
    h.commit()
    sub.drop()
    pub.drop()
    h.client("pub2").send(Publish("ferry/s/e/telemetry", b"queued-while-offline", 1, packet_id=9))
    h.commit()
    return h


def test_restart_restores_sessions_queues_qos2_and_retained() -> None:
    h = restarted(build_busy_broker())
    sub = h.client("sub", clean=False)
    packets = sub.received()
    assert packets[0] == Connack(True, ReasonCode.SUCCESS)
    pubrels = [p for p in packets if isinstance(p, Pubrel)]
    publishes = [p for p in packets if isinstance(p, Publish)]
    assert len(pubrels) == 1  # the QoS 2 handshake continues where it stopped
    payloads = [p.payload for p in publishes]
    assert b"delivered-not-acked" in payloads and b"queued-while-offline" in payloads
    assert b"incoming-unreleased" in payloads  # routed before the crash; PUBREL still owed by pub
    sub.send(Pubcomp(pubrels[0].packet_id))
    for p in publishes:
        sub.send(Puback(p.packet_id) if p.qos == 1 else Pubrec(p.packet_id))
    assert h.broker.sessions["sub"].queue == type(h.broker.sessions["sub"].queue)()

    pub = h.client("pub", clean=False)
    assert pub.received() == [Connack(True, ReasonCode.SUCCESS)]
    pub.send(Publish("q2", b"incoming-unreleased", 2, dup=True, packet_id=3))
    assert pub.received() == [Pubrec(3)]  # known packet id: not routed twice
    assert h.broker.stats.duplicates_qos2 == 1

    late = h.client("late")
    late.received()
    late.send(Subscribe(1, (Subscription("ferry/+/+/status", 0),)))
    assert [p.payload for p in late.received() if isinstance(p, Publish)] == [b"online"]


def test_new_message_ids_continue_above_restored_ones() -> None:
    before = build_busy_broker()
    h = restarted(before)
    assert h.broker.next_msg_id == before.broker.next_msg_id


def test_snapshot_rebuilds_the_same_state_as_the_journal() -> None:
    h = build_busy_broker()
    from_journal = replay(record for _, record in h.journal.records)
    from_snapshot = replay(durable_records(h.broker))
    assert from_snapshot == from_journal


def test_v5_session_expiry_restarts_counting_after_restore() -> None:
    h = Harness()
    client = h.client("c", V5, properties=Properties(session_expiry_interval=60))
    client.drop()
    fresh = restarted(h)
    session = fresh.broker.sessions["c"]
    assert session.expires_at == fresh.now + 60
    fresh.advance(61)
    assert "c" not in fresh.broker.sessions
