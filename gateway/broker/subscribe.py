"""The broker core's SUBSCRIBE and UNSUBSCRIBE: grants, the ACL's read rules, retained messages on
subscribe (a part of `Broker`, gateway/broker/core.py, kept apart for size)."""

from __future__ import annotations

import itertools
import logging

from ferry.gateway.auth.acl import Grant
from ferry.gateway.broker import delivery
from ferry.gateway.broker.index import Subscribed
from ferry.gateway.broker.session import Connection, Delivery, Message, Session
from ferry.gateway.mqtt import (
    ProtocolVersion, ReasonCode, Suback, Subscribe, Unsuback, Unsubscribe, split_shared, topic_matches,
)
from ferry.gateway.store import records as rec

V5 = ProtocolVersion.V5


class SubscribeHandling:
    """SUBSCRIBE, UNSUBSCRIBE and read rights: mixed into `Broker`, whose state it uses."""

    def _on_subscribe(self, conn: Connection, session: Session, packet: Subscribe, now: float) -> None:
        before = self._appends
        sub_id = packet.properties.subscription_identifiers[0] \
            if packet.properties.subscription_identifiers else None
        codes = []
        retained_out: list[tuple[Message, Subscribed]] = []
        for request in packet.subscriptions:
            group, plain = split_shared(request.topic_filter)
            refused = self.limits.subscribe_refusal(conn, session, request.topic_filter, now)
            if refused is not None:  # over max_topic_length/levels or max_subscriptions_per_client
                codes.append(refused)
                continue
            if not self._may_subscribe(conn, session, plain, now):
                codes.append(ReasonCode.NOT_AUTHORIZED)  # 3.1.1: 0x80
                continue
            granted = min(request.qos, 2)
            sub = Subscribed(session.client_id, request.topic_filter, granted, request.no_local,
                             request.retain_as_published, request.retain_handling, sub_id)
            is_new = self.index.add(session.client_id, plain, sub, group)
            session.subscriptions[request.topic_filter] = sub
            if session.persistent:
                self._record(rec.SubscriptionAdded(
                    session.client_id, request.topic_filter, granted, request.no_local,
                    request.retain_as_published, request.retain_handling, sub_id))
            codes.append(ReasonCode(granted))
            if group is None and (request.retain_handling == 0 or (request.retain_handling == 1 and is_new)):
                retained_out.extend((m, sub) for m in self._retained_matching(plain, now))
        self._send_packet(conn, Suback(packet.packet_id, tuple(codes)), self._wait_batch(before))
        if not retained_out:
            return
        # One delivery per retained message (the last matching filter's), and none of a message the
        # session already has on its way: the store keeps one queue entry per session and message.
        pending = {id(item.message) for item in itertools.chain(session.inflight.values(), session.queue)}
        for message, sub in {id(message): (message, sub) for message, sub in retained_out}.values():
            if id(message) in pending:
                continue
            qos = min(message.qos, sub.qos)
            ids = (sub.subscription_id,) if sub.subscription_id else ()
            self._deliver(session, Delivery(message, qos, True, ids), now)

    def _may_subscribe(self, conn: Connection, session: Session, topic_filter: str, now: float) -> bool:
        access = self.access
        if access is None or conn.internal:
            return True
        grant = access.subscription(conn.identity, session.client_id, topic_filter)
        if grant is Grant.DENIED:
            access.deny("subscribe", conn.identity, session.client_id, f"filter {topic_filter!r}", now)
            return False
        if grant is Grant.CHECKED:
            session.read_checked = True
        return True

    def review_reads(self) -> None:
        """After a restore: mark the sessions whose subscriptions need each message checked under the
        current ACL (one the ACL no longer grants at all gets nothing)."""
        if self.access is None:
            return
        for session in self.sessions.values():
            identity = self.access.identity_of(session.owner)
            session.read_checked = any(
                self.access.subscription(identity, session.client_id, split_shared(f)[1]) is not Grant.GRANTED
                for f in session.subscriptions)

    def _may_read(self, session: Session, topic: str, now: float) -> bool:
        identity = self.access.identity_of(session.owner)
        if self.access.may_read(identity, session.client_id, topic):
            return True
        self.access.deny("read", identity, session.client_id, f"topic {topic!r}", now)
        return False

    def _retained_matching(self, topic_filter: str, now: float) -> list[Message]:
        """Retained messages for a new subscription; expired ones are deleted on the way."""
        if "+" not in topic_filter and "#" not in topic_filter:
            message = self.retained.get(topic_filter)
            found = [] if message is None else [message]
        else:
            found = [m for topic, m in self.retained.items() if topic_matches(topic_filter, topic)]
        wall = self.wall(now)
        live = []
        for message in found:
            if message.expiry_at is not None and message.expiry_at <= wall:
                self._retain(Message(0, message.topic, b"", 0, True, message.origin))
            else:
                live.append(message)
        return live

    def _on_unsubscribe(self, conn: Connection, session: Session, packet: Unsubscribe, now: float) -> None:
        before = self._appends
        codes = []
        for topic_filter in packet.topic_filters:
            group, plain = split_shared(topic_filter)
            existed = session.subscriptions.pop(topic_filter, None) is not None
            self.index.remove(session.client_id, plain, group)
            if existed and session.persistent:
                self._record(rec.SubscriptionRemoved(session.client_id, topic_filter))
            codes.append(ReasonCode.SUCCESS if existed else ReasonCode.NO_SUBSCRIPTION_EXISTED)
        codes_sent = tuple(codes) if conn.protocol_version is V5 else ()
        self._send_packet(conn, Unsuback(packet.packet_id, codes_sent), self._wait_batch(before))
