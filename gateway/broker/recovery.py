"""Between the broker core and the store's `DurableState`: restore at start, snapshot for compaction.

Restore rebuilds offline sessions, their subscriptions, queues, in-flight
packet ids and QoS 2 states, and the retained messages, so that every client
reconnecting with its session finds what it left, and unfinished QoS 2
handshakes continue with the same packet ids. A snapshot is the inverse: the
core's live durable state as records.
"""

from __future__ import annotations

from collections.abc import Iterator

from ferry.gateway.broker import delivery
from ferry.gateway.broker.config import NEVER_EXPIRES
from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.index import Subscribed
from ferry.gateway.broker.session import Delivery, DeliveryState, Message, Session
from ferry.gateway.mqtt import ProtocolVersion, split_shared
from ferry.gateway.store import records as rec
from ferry.gateway.store.state import DurableState


def _message(stored: rec.MessageAdded) -> Message:
    expiry = None if stored.expiry_at_ms is None else stored.expiry_at_ms / 1000
    return Message(stored.msg_id, stored.topic, stored.payload, stored.qos, stored.retain, stored.origin,
                   delivery.load_properties(stored.properties), expiry)


def restore(broker: Broker, state: DurableState, now: float) -> None:
    """Load `state` into a freshly built broker; every restored session starts disconnected."""
    messages = {msg_id: _message(stored) for msg_id, stored in state.messages.items()}
    broker.set_next_msg_id(state.max_msg_id + 1)
    for client_id, saved in state.sessions.items():
        session = Session(client_id, ProtocolVersion(saved.protocol_version), saved.expiry_interval_s,
                          stored=True, owner=saved.owner)
        if saved.expiry_interval_s != NEVER_EXPIRES:
            session.expires_at = now + saved.expiry_interval_s
        broker.sessions[client_id] = session
        for topic_filter, sub in state.subscriptions.get(client_id, {}).items():
            subscribed = Subscribed(client_id, topic_filter, sub.qos, sub.no_local, sub.retain_as_published,
                                    sub.retain_handling, sub.subscription_id)
            session.subscriptions[topic_filter] = subscribed
            group, plain = split_shared(topic_filter)
            broker.index.add(client_id, plain, subscribed, group)
        for packet_id in state.pubrel_pending.get(client_id, {}):
            placeholder = Message(0, "", b"", 2, False, "")
            session.inflight[packet_id] = Delivery(placeholder, 2, False, (), packet_id,
                                                   DeliveryState.PUBREL_SENT, durable=True)
        for msg_id, entry in state.queues.get(client_id, {}).items():
            message = messages[msg_id]
            message.refs += 1
            item = Delivery(message, entry.qos, False, entry.subscription_ids, durable=True)
            if entry.packet_id is not None:
                item.packet_id = entry.packet_id
                item.state = DeliveryState.PUBLISH_SENT
                session.inflight[entry.packet_id] = item
            else:
                session.queue.append(item)
                session.queued_bytes += len(message.payload)
        session.incoming_qos2.update(state.incoming_qos2.get(client_id, {}))
        if session.inflight:
            session.next_packet_id = max(session.inflight) % 65535 + 1
    for topic, msg_id in state.retained.items():
        message = messages[msg_id]
        message.refs += 1
        broker.retained[topic] = message
    broker.review_reads()


def durable_records(broker: Broker) -> Iterator[rec.Record]:
    """The core's durable state as a minimal record sequence (a compaction snapshot)."""
    yield rec.MsgIdHighWater(broker.next_msg_id - 1)
    written: set[int] = set()

    def message_once(message: Message) -> Iterator[rec.Record]:
        if message.msg_id not in written:
            written.add(message.msg_id)
            expiry_ms = None if message.expiry_at is None else int(message.expiry_at * 1000)
            yield rec.MessageAdded(message.msg_id, message.topic, message.payload, message.qos,
                                   message.retain, delivery.stored_properties(message.properties),
                                   expiry_ms, message.origin)

    for session in list(broker.sessions.values()):
        if not session.stored:
            continue
        cid = session.client_id
        yield rec.SessionSaved(cid, int(session.protocol_version), session.expiry_interval_s, session.owner)
        for sub in session.subscriptions.values():
            yield rec.SubscriptionAdded(cid, sub.topic_filter, sub.qos, sub.no_local, sub.retain_as_published,
                                        sub.retain_handling, sub.subscription_id)
        for packet_id in session.incoming_qos2:
            yield rec.IncomingQos2(cid, packet_id)
        for item in list(session.inflight.values()) + list(session.queue):
            if not item.durable:
                continue
            if item.state is DeliveryState.PUBREL_SENT:
                yield rec.PubrecReceived(cid, item.packet_id)
                continue
            yield from message_once(item.message)
            yield rec.Enqueued(cid, item.message.msg_id, item.qos, item.subscription_ids)
            if item.state is DeliveryState.PUBLISH_SENT:
                yield rec.InflightAssigned(cid, item.message.msg_id, item.packet_id)
    for topic, message in list(broker.retained.items()):
        if message.msg_id:
            yield from message_once(message)
            yield rec.RetainSet(topic, message.msg_id)
    for spool in broker.spools.values():
        yield rec.SpoolHead(spool.head)
