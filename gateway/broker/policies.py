"""Per-client-id session policies: the queue limits and full-queue behaviour of sessions the
gateway itself holds (the Kafka bridge's session is its disk spool), apart from the core's routing.

Pure: the core asks, this module answers and keeps the rate-limited refusal log.
"""

from __future__ import annotations

import logging

from ferry.gateway.broker.config import BrokerConfig, SessionPolicy
from ferry.gateway.broker.session import Session
from ferry.gateway.mqtt import split_shared, topic_matches

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 10.0


class SessionPolicies:
    def __init__(self) -> None:
        self._by_client: dict[str, SessionPolicy] = {}
        self._unlogged = 0
        self._logged_at = float("-inf")

    def __bool__(self) -> bool:
        return bool(self._by_client)

    def set(self, client_id: str, policy: SessionPolicy) -> None:
        self._by_client[client_id] = policy

    def get(self, client_id: str) -> SessionPolicy | None:
        return self._by_client.get(client_id)

    def limits(self, client_id: str, config: BrokerConfig) -> tuple[int, int, bool]:
        """(max queued messages, max queued bytes, whether a drop there is worth a warning)."""
        policy = self._by_client.get(client_id)
        if policy is None:
            return config.max_queued_messages, config.max_queued_bytes, False
        return policy.max_queued_messages, policy.max_queued_bytes, True

    def full_target(self, sessions: dict[str, Session], topic: str, size: int) -> Session | None:
        """A session whose policy refuses when full, which would receive this message and has no
        room for it: the publish must be refused as a whole."""
        for client_id, policy in self._by_client.items():
            target = sessions.get(client_id)
            if target is None or not policy.refuse_when_full:
                continue
            if len(target.queue) < policy.max_queued_messages and \
                    target.queued_bytes + size <= policy.max_queued_bytes:
                continue
            if any(topic_matches(split_shared(f)[1], topic) for f in target.subscriptions):
                return target
        return None

    def log_refusal(self, target: Session, publisher: str, peer: str, now: float) -> None:
        """Count a refusal; log at most one line per REFUSAL_LOG_INTERVAL_S with the count since."""
        self._unlogged += 1
        if now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
            return
        log.warning("queue of %s is full (%d messages, %d bytes): refused %d publish(es) since the last "
                    "report, now from %s (%s), closing its connection; publishers keep them",
                    target.client_id, len(target.queue), target.queued_bytes, self._unlogged, publisher, peer)
        self._unlogged = 0
        self._logged_at = now
