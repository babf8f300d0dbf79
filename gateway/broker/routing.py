"""Who a message reaches: each matching session with the QoS, subscription ids and retain flag it gets.

Pure. Reads the subscription index and the sessions (a shared subscription group prefers a
connected member) and moves each shared group's round-robin position.
"""

from __future__ import annotations

from dataclasses import dataclass

from ferry.gateway.broker.index import Subscribed, SubscriptionIndex
from ferry.gateway.broker.session import Message, Session


@dataclass(slots=True)
class Target:
    """What one session gets of a message: overlapping subscriptions merged [MQTT-3.3.4-2]."""

    qos: int
    subscription_ids: list[int]
    retain: bool


def targets(index: SubscriptionIndex, sessions: dict[str, Session], message: Message) -> dict[str, Target]:
    """Client id -> what it gets, for every session `message` reaches; one member per shared group."""
    found: dict[str, Target] = {}
    origin = message.origin
    for node, _ in index.match(message.topic):
        for client_id, sub in node.subscribers.items():
            if sub.no_local and client_id == origin:
                continue
            _add(found, client_id, sub, message)
        for group in node.shared.values():
            members = list(group.members.items())
            if not members:
                continue
            chosen = None
            for step in range(len(members)):
                client_id, sub = members[(group.next_index + step) % len(members)]
                session = sessions.get(client_id)
                if session is not None and session.connection is not None:
                    chosen = (client_id, sub)
                    group.next_index = (group.next_index + step + 1) % len(members)
                    break
            if chosen is None:
                chosen = members[group.next_index % len(members)]
                group.next_index = (group.next_index + 1) % len(members)
            _add(found, chosen[0], chosen[1], message)
    return found


def _add(found: dict[str, Target], client_id: str, sub: Subscribed, message: Message) -> None:
    qos = min(message.qos, sub.qos)
    retain = message.retain and sub.retain_as_published
    known = found.get(client_id)
    if known is None:
        found[client_id] = Target(qos, [sub.subscription_id] if sub.subscription_id else [], retain)
        return
    if sub.subscription_id:
        known.subscription_ids.append(sub.subscription_id)
    known.qos = max(known.qos, qos)
    known.retain = known.retain or retain
