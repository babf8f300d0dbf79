"""The broker core's access decisions: who may connect with which client id, publish, subscribe.

Combines the ACL rules with the password file's users (a user's name is a
client id only that user may take, so nobody can take over a device's session),
counts every denial by action and logs them rate-limited.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable

from ferry.gateway.auth.acl import Acl, Action, Grant
from ferry.gateway.auth.identity import Identity, Role
from ferry.gateway.mqtt import ReasonCode

log = logging.getLogger(__name__)

DENIAL_LOG_INTERVAL_S = 10.0
PUBLISH_ANSWERS_MAX = 65_536
"""Publish decisions remembered (identity, client id, topic); all forgotten when full."""


class AccessControl:
    """Asked by the core for every CONNECT, PUBLISH and SUBSCRIBE of a client connection."""

    def __init__(self, acl: Acl, is_user: Callable[[str], bool], role_of: Callable[[str | None], Role]) -> None:
        self.acl = acl
        self._is_user = is_user
        self._role_of = role_of
        self.denied: Counter[str] = Counter()
        """"connect", "publish", "subscribe" → denials since start."""
        self._unlogged = 0
        self._logged_at = float("-inf")
        self._may_publish: dict[tuple[Identity, str, str], bool] = {}

    def identity_of(self, owner: str | None) -> Identity:
        """The identity a session's owner ("" anonymous, None not known) has under the current
        configuration."""
        return Identity(owner or None, self._role_of(owner or None))

    def connect_refusal(self, identity: Identity, client_id: str, will_topic: str | None,
                        session_owner: str | None, now: float) -> ReasonCode | None:
        """Why this identity may not connect with this client id and will, given the owner of the
        session the client id has (`session_owner`: "" anonymous, None no session or not known);
        None when it may."""
        reason = None
        if identity.role is Role.DEVICE and client_id != identity.username:
            reason, why = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "a device's client id must be its user name"
        elif client_id != identity.username and self._is_user(client_id):
            reason, why = ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, "the client id is another user's name"
        elif session_owner is not None and session_owner != (identity.username or ""):
            reason, why = ReasonCode.NOT_AUTHORIZED, f"the session {client_id!r} belongs to another user"
        elif will_topic is not None and not self.acl.allows(identity, client_id, Action.PUBLISH, will_topic):
            reason, why = ReasonCode.NOT_AUTHORIZED, f"will topic {will_topic!r} not allowed"
        if reason is not None:
            self.deny("connect", identity, client_id, why, now)
        return reason

    def may_publish(self, identity: Identity, client_id: str, topic: str) -> bool:
        """The ACL's answer, remembered: a device publishes on the same few topics all its life, and
        the rules do not change while the gateway runs (SIGHUP rereads passwords, not the ACL)."""
        key = (identity, client_id, topic)
        allowed = self._may_publish.get(key)
        if allowed is None:
            if len(self._may_publish) >= PUBLISH_ANSWERS_MAX:
                self._may_publish.clear()
            allowed = self._may_publish[key] = self.acl.allows(identity, client_id, Action.PUBLISH, topic)
        return allowed

    def subscription(self, identity: Identity, client_id: str, topic_filter: str) -> Grant:
        return self.acl.subscription(identity, client_id, topic_filter)

    def may_read(self, identity: Identity, client_id: str, topic: str) -> bool:
        """Whether a message on `topic` may be delivered (for `Grant.CHECKED` subscriptions)."""
        return self.acl.allows(identity, client_id, Action.SUBSCRIBE, topic)

    def deny(self, action: str, identity: Identity, client_id: str, what: str, now: float) -> None:
        """Count a denial; log at most one line per DENIAL_LOG_INTERVAL_S, with the count since."""
        self.denied[action] += 1
        self._unlogged += 1
        if now - self._logged_at < DENIAL_LOG_INTERVAL_S:
            return
        who = identity.username if identity.username is not None else "anonymous"
        log.warning("denied %s for %s (client %s): %s; %d denial(s) since the last report",
                    action, who, client_id or "-", what, self._unlogged)
        self._unlogged = 0
        self._logged_at = now
