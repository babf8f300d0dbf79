"""The `[broker]` limits the core enforces: topic sizes, subscriptions per client, sessions, retained
messages; and the counter and throttled log line every limit shares.

The core asks here and acts on the answer (a reason code, or whether to retain); the network layer
(`ferry.gateway.limits`) counts its own limits through `LimitHits.hit`. The gateway's own
connections (`Connection.internal`) are never limited.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.session import Connection, Message, Session
from ferry.gateway.broker.stats import BrokerStats, Limit
from ferry.gateway.mqtt import ReasonCode

log = logging.getLogger("ferry.gateway.limits")

LOG_INTERVAL_S = 10.0
"""One log line per limit at most this often, saying how often it was hit since the last."""

_UTF8_MAX_BYTES_PER_CHAR = 4


class LimitHits:
    """Counts every hit (`BrokerStats.limit_hits`) and logs one line per limit per LOG_INTERVAL_S."""

    def __init__(self, stats: BrokerStats) -> None:
        self.stats = stats
        self._logged_at: dict[Limit, float] = {}
        self._since: dict[Limit, int] = {}

    def hit(self, limit: Limit, now: float, message: str, *args: object) -> None:
        """Count one hit; log `message % args` unless this limit was logged less than
        LOG_INTERVAL_S ago (the next line says how many hits it covers)."""
        self.stats.limit_hits[limit] += 1
        since = self._since.get(limit, 0) + 1
        if now - self._logged_at.get(limit, float("-inf")) < LOG_INTERVAL_S:
            self._since[limit] = since
            return
        self._logged_at[limit] = now
        self._since[limit] = 0
        suffix = f" ({since} times in the last {LOG_INTERVAL_S:g} s)" if since > 1 else ""
        log.warning("limit %s: " + message + "%s", limit.value, *args, suffix)


class BrokerLimits(LimitHits):
    """The checks `Broker` makes; each returns what to answer, None when within the limits."""

    def __init__(self, config: BrokerConfig, stats: BrokerStats) -> None:
        super().__init__(stats)
        self.config = config
        self._max_length = config.max_topic_length
        self._max_levels = config.max_topic_levels

    def _topic_limit(self, topic: str) -> Limit | None:
        """Which of the topic limits `topic` (a name or a filter) breaks, if any."""
        max_length = self._max_length
        if max_length:
            chars = len(topic)
            # UTF-8 takes 1 to 4 bytes a character: encode only when the count cannot decide.
            if chars > max_length or (chars * _UTF8_MAX_BYTES_PER_CHAR > max_length
                                      and len(topic.encode()) > max_length):
                return Limit.TOPIC_LENGTH
        if self._max_levels and topic.count("/") >= self._max_levels:
            return Limit.TOPIC_LEVELS
        return None

    def _topic_hit(self, limit: Limit, conn: Connection, what: str, topic: str, now: float) -> None:
        setting = "max_topic_length" if limit is Limit.TOPIC_LENGTH else "max_topic_levels"
        self.hit(limit, now, "%s from %s (%s): %s of %d bytes, %d levels is over broker.%s",
                 "refused" if what == "filter" else "dropped a publish", conn.client_id, conn.peer, what,
                 len(topic.encode()), topic.count("/") + 1, setting)

    def publish_refusal(self, conn: Connection, topic: str, now: float) -> ReasonCode | None:
        """A PUBLISH to a topic over `max_topic_length`/`max_topic_levels`: 0x90 Topic Name invalid
        (the caller tells MQTT 5 QoS 1/2 publishers and acknowledges the others as usual)."""
        limit = self._topic_limit(topic)
        if limit is None or conn.internal:
            return None
        self._topic_hit(limit, conn, "topic", topic, now)
        return ReasonCode.TOPIC_NAME_INVALID

    def subscribe_refusal(self, conn: Connection, session: Session, topic_filter: str,
                          now: float) -> ReasonCode | None:
        """A SUBSCRIBE filter over the topic limits (0x8F Topic Filter invalid) or one subscription
        more than `max_subscriptions_per_client` (0x97 Quota exceeded); SUBACK sends 0x80 to MQTT
        3.1.1 clients for both."""
        if conn.internal:
            return None
        limit = self._topic_limit(topic_filter)
        if limit is not None:
            self._topic_hit(limit, conn, "filter", topic_filter, now)
            return ReasonCode.TOPIC_FILTER_INVALID
        most = self.config.max_subscriptions_per_client
        if most and len(session.subscriptions) >= most and topic_filter not in session.subscriptions:
            self.hit(Limit.SUBSCRIPTIONS, now, "refused a subscription of %s (%s): it holds %d "
                     "(broker.max_subscriptions_per_client)", conn.client_id, conn.peer, len(session.subscriptions))
            return ReasonCode.QUOTA_EXCEEDED
        return None

    def session_refusal(self, conn: Connection, client_id: str, expiry_s: int, sessions: Mapping[str, Session],
                        now: float) -> ReasonCode | None:
        """A CONNECT that would create a persistent session once `max_sessions` exist: 0x97 Quota
        exceeded (a 3.1.1 CONNACK says 3 Server unavailable)."""
        most = self.config.max_sessions
        if not most or not expiry_s or conn.internal or len(sessions) < most or client_id in sessions:
            return None
        self.hit(Limit.SESSIONS, now, "refused %s from %s: %d sessions are kept (broker.max_sessions)",
                 client_id, conn.peer, len(sessions))
        return ReasonCode.QUOTA_EXCEEDED

    def may_retain(self, conn: Connection, message: Message, retained: Mapping[str, Message], now: float) -> bool:
        """Whether a retained publish (or will) may set its topic's retained message: always when it
        replaces or clears one, else while fewer than `max_retained_messages` are kept."""
        most = self.config.max_retained_messages
        if not most or len(retained) < most or not message.payload or message.topic in retained or conn.internal:
            return True
        self.hit(Limit.RETAINED, now, "did not retain %s from %s (%s): %d retained messages are kept "
                 "(broker.max_retained_messages); delivered to its subscribers", message.topic, conn.client_id,
                 conn.peer, len(retained))
        return False
