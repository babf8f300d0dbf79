"""Session policies: the queue limits and full-queue behaviour of every session, with the
overrides for sessions the gateway itself holds (the Kafka bridge's session is its disk spool),
apart from the core's routing.

Pure: the core asks, this module answers and keeps the rate-limited refusal log.
"""

from __future__ import annotations

import logging
from typing import Protocol

from ferry.gateway.broker.config import BrokerConfig, QueueFull, SessionPolicy
from ferry.gateway.broker.routing import Target
from ferry.gateway.broker.session import Session


class SpoolRoom(Protocol):
    """What a policy asks of a spool (`ferry.gateway.store.spool_queue.SpoolQueue`)."""

    head: int

    def has_room(self, size: int) -> bool: ...

    def drop_oldest(self) -> int: ...
from ferry.gateway.mqtt import topic_matches

log = logging.getLogger(__name__)

REFUSAL_LOG_INTERVAL_S = 10.0
IGNORED_CACHE_TOPICS = 65_536
"""Topics whose `ignores` answer is kept per policy (devices publish on the same few topics again and
again: matching the filters took 4 topic matches per QoS 1 publish); cleared when full."""


class SessionPolicies:
    def __init__(self) -> None:
        self._by_client: dict[str, SessionPolicy] = {}
        self._unlogged = 0
        self._logged_at = float("-inf")
        self._unadmitted = 0
        self._admission_logged_at = float("-inf")
        self._ignored: dict[str, dict[str, bool]] = {}
        """client id -> topic -> whether its policy ignores the topic (`ignores`, cached)."""

    def set(self, client_id: str, policy: SessionPolicy) -> None:
        self._by_client[client_id] = policy
        self._ignored.pop(client_id, None)

    def get(self, client_id: str) -> SessionPolicy | None:
        return self._by_client.get(client_id)

    def limits(self, client_id: str, config: BrokerConfig) -> tuple[int, int, bool]:
        """(max queued messages, max queued bytes, whether a drop there is worth a warning)."""
        policy = self._by_client.get(client_id)
        if policy is None:
            return config.max_queued_messages, config.max_queued_bytes, False
        return policy.max_queued_messages, policy.max_queued_bytes, True

    def full_target(self, sessions: dict[str, Session], targets: dict[str, Target], topic: str, size: int,
                    config: BrokerConfig, spools: dict[str, SpoolRoom]) -> Session | None:
        """A session this QoS 1/2 message would have to queue for, whose queue is full and whose
        policy is to refuse rather than drop; None when the message can go everywhere (a spool
        whose policy drops its oldest entries has made room by then)."""
        for client_id, target in targets.items():
            session = sessions.get(client_id)
            if target.qos == 0 or session is None:
                continue
            spool = spools.get(client_id)
            if spool is not None:
                entry_size = len(topic.encode()) + size
                if self.ignores(client_id, topic) or spool.has_room(entry_size) \
                        or self.make_room(client_id, spool, entry_size):
                    continue
                if self.refuses_when_full(session, config):
                    return session
                continue
            conn = session.connection
            if conn is not None and not session.queue and len(session.inflight) < conn.inflight_limit:
                continue  # goes out at once, queues nothing
            max_messages, max_bytes, _ = self.limits(client_id, config)
            if len(session.queue) < max_messages and session.queued_bytes + size <= max_bytes:
                continue
            if not self.ignores(client_id, topic) and self.refuses_when_full(session, config):
                return session
        return None

    def make_room(self, client_id: str, spool: SpoolRoom, size: int) -> bool:
        """Under a `drop_oldest` policy, give up the spool's oldest entries until ``size`` fits;
        whether it fits now. Logs each drop (rate-limited)."""
        policy = self._by_client.get(client_id)
        if policy is None or not policy.drop_oldest:
            return False
        while not spool.has_room(size):
            dropped = spool.drop_oldest()
            if not dropped:
                return False
            log.warning("spool of %s is full: dropped its %d oldest message(s) (overflow policy drop_oldest)",
                        client_id, dropped)
        return True

    def refuses_when_full(self, session: Session, config: BrokerConfig) -> bool:
        """Whether a full queue of `session` refuses new publishes (else they are dropped for it)."""
        policy = self._by_client.get(session.client_id)
        if policy is not None:
            return policy.refuse_when_full
        return session.persistent and config.queue_full is QueueFull.REFUSE

    def ignores(self, client_id: str, topic: str) -> bool:
        """Whether this session does not take `topic`'s QoS 1/2 messages (`SessionPolicy.ignored`)."""
        policy = self._by_client.get(client_id)
        if policy is None or not policy.ignored:
            return False
        known = self._ignored.get(client_id)
        if known is None:
            known = self._ignored[client_id] = {}
        answer = known.get(topic)
        if answer is None:
            if len(known) >= IGNORED_CACHE_TOPICS:
                known.clear()
            answer = known[topic] = any(topic_matches(f, topic) for f in policy.ignored)
        return answer

    def admits(self, client_id: str, topic: str, publisher: str | None, now: float) -> bool:
        """Whether the session takes this publisher's message (`SessionPolicy.admits`); a refusal is
        logged at most once per REFUSAL_LOG_INTERVAL_S."""
        policy = self._by_client.get(client_id)
        if policy is None or policy.admits is None or policy.admits(topic, publisher):
            return True
        self._unadmitted += 1
        if now - self._admission_logged_at >= REFUSAL_LOG_INTERVAL_S:
            log.warning("%s does not take %s from user %s: %d such message(s) dropped since the last report",
                        client_id, topic, publisher, self._unadmitted)
            self._unadmitted = 0
            self._admission_logged_at = now
        return False

    def log_refusal(self, why: str, publisher: str, peer: str, now: float) -> None:
        """Count a refusal; log at most one line per REFUSAL_LOG_INTERVAL_S with the count since."""
        self._unlogged += 1
        if now - self._logged_at < REFUSAL_LOG_INTERVAL_S:
            return
        log.warning("%s: refused %d publish(es) since the last report, now from %s (%s); publishers keep them",
                    why, self._unlogged, publisher, peer)
        self._unlogged = 0
        self._logged_at = now
