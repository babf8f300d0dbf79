"""Session policies: the queue limits and full-queue behaviour of every session, with the
overrides for sessions the gateway itself holds (the Kafka bridge's session is its disk spool),
apart from the core's routing.

Pure: the core asks, this module answers and keeps the rate-limited refusal log.
"""

from __future__ import annotations

import logging

from ferry.gateway.broker.config import BrokerConfig, QueueFull, SessionPolicy
from ferry.gateway.broker.routing import Target
from ferry.gateway.broker.session import Session
from ferry.gateway.mqtt import topic_matches

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 10.0


class SessionPolicies:
    def __init__(self) -> None:
        self._by_client: dict[str, SessionPolicy] = {}
        self._unlogged = 0
        self._logged_at = float("-inf")

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

    def full_target(self, sessions: dict[str, Session], targets: dict[str, Target], topic: str, size: int,
                    config: BrokerConfig) -> Session | None:
        """A session this QoS 1/2 message would have to queue for, whose queue is full and whose
        policy is to refuse rather than drop; None when the message can go everywhere."""
        for client_id, target in targets.items():
            session = sessions.get(client_id)
            if target.qos == 0 or session is None:
                continue
            conn = session.connection
            if conn is not None and not session.queue and len(session.inflight) < conn.inflight_limit:
                continue  # goes out at once, queues nothing
            max_messages, max_bytes, _ = self.limits(client_id, config)
            if len(session.queue) < max_messages and session.queued_bytes + size <= max_bytes:
                continue
            if not self.skips(client_id, topic) and self.refuses_when_full(session, config):
                return session
        return None

    def refuses_when_full(self, session: Session, config: BrokerConfig) -> bool:
        """Whether a full queue of `session` refuses new publishes (else they are dropped for it)."""
        policy = self._by_client.get(session.client_id)
        if policy is not None:
            return policy.refuse_when_full
        return session.persistent and config.queue_full is QueueFull.REFUSE

    def skips(self, client_id: str, topic: str) -> bool:
        """Whether this session does without `topic`'s messages while its queue is full."""
        policy = self._by_client.get(client_id)
        return policy is not None and any(topic_matches(f, topic) for f in policy.skip_when_full)

    def log_refusal(self, target: Session, publisher: str, peer: str, now: float) -> None:
        """Count a refusal; log at most one line per REFUSAL_LOG_INTERVAL_S with the count since."""
        self._unlogged += 1
        if now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
            return
        log.warning("queue of %s is full (%d messages, %d bytes): refused %d publish(es) since the last "
                    "report, now from %s (%s); publishers keep them",
                    target.client_id, len(target.queue), target.queued_bytes, self._unlogged, publisher, peer)
        self._unlogged = 0
        self._logged_at = now
