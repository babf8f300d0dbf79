"""DurableState: applying records, rebuilding from records(), garbage and dangling references."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from ferry.gateway.store.records import (
    Dequeued,
    Enqueued,
    IncomingQos2,
    IncomingReleased,
    InflightAssigned,
    MessageAdded,
    MsgIdHighWater,
    PubcompReceived,
    PubrecReceived,
    RetainCleared,
    RetainSet,
    SessionDeleted,
    SessionSaved,
    SubscriptionAdded,
    SubscriptionRemoved,
)
from ferry.gateway.store.state import DurableState, QueueEntry
from tests.gateway.store.helpers import (
    build_state,
    busy_state,
    read_segment,
    segment_bytes,
    state_ops,
)


def msg(msg_id: int, topic: str = "t") -> MessageAdded:
    return MessageAdded(msg_id, topic, b"p%d" % msg_id, 1, False, b"", None, "pub")


def rebuilt(state: DurableState) -> DurableState:
    return build_state(list(state.records()))


def test_a_typical_flow() -> None:
    state = build_state([
        SessionSaved("c", 5, 60),
        SubscriptionAdded("c", "a/#", 2, False, False, 0, 3),
        msg(1), Enqueued("c", 1, 1, (3,)),
        msg(2), Enqueued("c", 2, 2, (3,)),
        InflightAssigned("c", 1, 10), InflightAssigned("c", 2, 11),
        IncomingQos2("c", 5),
    ])
    assert list(state.queues["c"].items()) == [
        (1, QueueEntry(1, (3,), 10)), (2, QueueEntry(2, (3,), 11))]
    state.apply(Dequeued("c", 1))  # PUBACK
    state.apply(PubrecReceived("c", 11))  # QoS 2: delivered, entry gone, PUBREL pending
    state.apply(IncomingReleased("c", 5))
    assert state.queues == {} and state.messages == {}
    assert list(state.pubrel_pending["c"]) == [11]
    assert state.incoming_qos2 == {}
    state.apply(PubcompReceived("c", 11))
    assert state.pubrel_pending == {}
    assert state.dangling_references == 0
    assert state.max_msg_id == 2


def test_retained_messages_live_while_referenced() -> None:
    state = build_state([msg(1, "r"), RetainSet("r", 1), msg(2, "r")])
    assert state.retained == {"r": 1}
    state.apply(RetainSet("r", 2))  # replaces: message 1 goes
    assert set(state.messages) == {2}
    state.apply(RetainCleared("r"))
    assert state.messages == {} and state.retained == {}


def test_session_deleted_removes_everything_of_the_client() -> None:
    state = build_state([
        SessionSaved("c", 5, 60), SessionSaved("d", 4, 0),
        SubscriptionAdded("c", "#", 1, False, False, 0, None),
        msg(1), Enqueued("c", 1, 1, ()), Enqueued("d", 1, 1, ()),
        InflightAssigned("c", 1, 4), PubrecReceived("c", 9), IncomingQos2("c", 3),
    ])
    state.apply(SessionDeleted("c"))
    assert list(state.sessions) == ["d"]
    assert state.subscriptions == {} and state.pubrel_pending == {} and state.incoming_qos2 == {}
    assert list(state.queues) == ["d"] and set(state.messages) == {1}
    state.apply(SessionDeleted("d"))
    assert state.messages == {} and state.dangling_references == 0


def test_dangling_references_are_counted_never_raised() -> None:
    dangling = [
        Dequeued("c", 1), Enqueued("c", 99, 1, ()), InflightAssigned("c", 1, 1),
        PubcompReceived("c", 1), IncomingReleased("c", 1), RetainSet("t", 99),
        RetainCleared("t"), SubscriptionRemoved("c", "#"), SessionDeleted("c"),
    ]
    state = build_state(dangling)
    assert state.dangling_references == len(dangling)
    assert state == DurableState()


def test_garbage_messages_are_not_emitted_and_are_collected() -> None:
    state = build_state([msg(1), msg(2), SessionSaved("c", 5, 0), Enqueued("c", 2, 1, ())])
    emitted = list(state.records())
    assert msg(1) not in emitted and msg(2) in emitted
    assert state.collect_garbage() == 1
    assert set(state.messages) == {2}


def test_high_water_keeps_max_msg_id_when_messages_are_gone() -> None:
    state = build_state([msg(41), SessionSaved("c", 5, 0)])
    state.collect_garbage()
    records = list(state.records())
    assert records[0] == MsgIdHighWater(41)
    assert rebuilt(state).max_msg_id == 41


def test_re_enqueue_and_reassign_keep_queue_order() -> None:
    state = build_state([msg(1), msg(2), Enqueued("c", 1, 1, ()), Enqueued("c", 2, 1, ()),
                         InflightAssigned("c", 1, 5), InflightAssigned("c", 1, 6),
                         Enqueued("c", 1, 2, (4,))])
    assert list(state.queues["c"].items()) == [(1, QueueEntry(2, (4,))), (2, QueueEntry(1, ()))]
    state.apply(PubrecReceived("c", 5))  # packet 5 no longer belongs to message 1
    assert 1 in state.queues["c"]


def test_busy_state_round_trips_through_records() -> None:
    state, _ = busy_state()
    again = rebuilt(state)
    assert again == state
    assert again.dangling_references == 0
    assert again.summary() == state.summary()


@settings(max_examples=300, deadline=None)
@given(st.lists(state_ops, max_size=60))
def test_records_rebuild_the_same_state(ops: list) -> None:
    state = build_state(ops)
    emitted = list(state.records())
    again = build_state(emitted)
    assert again == state
    assert again.dangling_references == 0
    assert list(again.records()) == emitted  # minimal form is a fixed point
    # ...and survives the codec.
    assert read_segment(segment_bytes([emitted]))[0] == emitted
    # Nothing unreferenced is emitted.
    for record in emitted:
        if isinstance(record, MessageAdded):
            assert state.is_referenced(record.msg_id)


def test_equality_ignores_garbage_and_dangling_counts() -> None:
    a = build_state([msg(1), Dequeued("x", 5)])
    assert a == build_state([MsgIdHighWater(1)])
    assert a != build_state([SessionSaved("c", 5, 0)])
    assert a.__eq__(object()) is NotImplemented
