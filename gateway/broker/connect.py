"""The broker core's CONNECT and DISCONNECT: who may connect, session take-over, resumption and
expiry, wills, keep-alive pings (a part of `Broker`, gateway/broker/core.py, kept apart for size)."""

from __future__ import annotations

import itertools
import logging

from ferry.gateway.broker import delivery
from ferry.gateway.broker.session import Connection, DeliveryState, Message, Session
from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES, Connack, Connect, Disconnect, Pingreq, Pingresp, Properties, ProtocolVersion,
    Pubrel, ReasonCode, split_shared,
)
from ferry.gateway.store import records as rec

log = logging.getLogger(__name__)

V5 = ProtocolVersion.V5


class ConnectHandling:
    """CONNECT, DISCONNECT, PINGREQ, wills and session ends: mixed into `Broker`, whose state it uses."""

    def _on_connect(self, conn: Connection, packet: Connect, now: float) -> None:
        if conn.session is not None:
            self._violation(conn, ReasonCode.PROTOCOL_ERROR, "MQTT-3.1.0-2",
                            "second CONNECT on a connection")
            return
        conn.protocol_version = packet.protocol_version
        v5 = packet.protocol_version is V5
        client_id = packet.client_id
        assigned = None
        if not client_id:
            if not v5 and not packet.clean_start:
                self._send_packet(conn, Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID))
                self._close(conn, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, send_disconnect=False)
                return
            client_id = assigned = self._new_client_id()
        policy = self._policies.get(client_id)
        if policy is not None and not conn.internal:
            log.warning("refusing %s: client id %r is reserved for the gateway itself", conn.peer, client_id)
            self._send_packet(conn, Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID))
            self._close(conn, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, send_disconnect=False)
            return
        if self.access is not None and not conn.internal and self._refuse_identity(conn, packet, client_id, now):
            return
        props = packet.properties
        if v5 and props.authentication_method is not None:
            # No enhanced authentication is offered: refuse the method and close [MQTT-4.12.0-1].
            log.warning("refusing %s (%s): authentication method %r is not supported", client_id, conn.peer,
                        props.authentication_method)
            self._send_packet(conn, Connack(False, ReasonCode.BAD_AUTHENTICATION_METHOD))
            self._close(conn, ReasonCode.BAD_AUTHENTICATION_METHOD, send_disconnect=False)
            return
        if v5:
            expiry = min(props.session_expiry_interval or 0, self.config.max_session_expiry_s)
            if policy is not None:  # the gateway's own session is not bound by client limits
                expiry = props.session_expiry_interval or 0
            if props.receive_maximum:
                conn.inflight_limit = min(props.receive_maximum, self.config.max_inflight_messages)
            if props.maximum_packet_size:
                conn.max_packet_size = props.maximum_packet_size
        else:
            expiry = 0 if packet.clean_start else self.config.persistent_session_expiry_s
        keepalive = packet.keepalive_s
        server_keepalive = None
        max_keepalive = self.config.max_keepalive_s
        if keepalive > max_keepalive or (keepalive == 0 and max_keepalive < 65535):
            if not v5:
                # 3.1.1 cannot be told another keepalive; Mosquitto rejects these too.
                self._send_packet(conn, Connack(False, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID))
                self._close(conn, ReasonCode.CLIENT_IDENTIFIER_NOT_VALID, send_disconnect=False)
                return
            keepalive = server_keepalive = self.config.max_keepalive_s
        refusal = self.limits.session_refusal(conn, client_id, expiry, self.sessions, now)
        if refusal is not None:
            self._send_packet(conn, Connack(False, refusal))
            self._close(conn, refusal, send_disconnect=False)
            return
        conn.keepalive_s = keepalive
        conn.will = packet.will
        before = self._appends

        session = self.sessions.get(client_id)
        if session is not None and session.connection is not None:
            old = session.connection
            log.info("session %s taken over: closing %s for %s", client_id, old.peer, conn.peer)
            self._close(old, ReasonCode.SESSION_TAKEN_OVER)
            self._detach(old, now)
            session = self.sessions.get(client_id)
        pending = self._pending_wills.pop(client_id, None)
        if pending is not None and packet.clean_start:
            self._publish_will(pending[1], now)
        if session is not None and packet.clean_start:
            self._end_session(session, now)
            session = None
        session_present = session is not None
        if session is None:
            session = Session(client_id, packet.protocol_version, expiry)
            self.sessions[client_id] = session
        if conn.identity is not None:
            session.owner = conn.identity.username or ""
        session.protocol_version = packet.protocol_version
        session.expiry_interval_s = expiry
        session.expires_at = None
        session.connection = conn
        conn.session = session
        if session.persistent:
            self._record(rec.SessionSaved(client_id, int(packet.protocol_version), expiry, session.owner))
            session.stored = True
        elif session.stored:
            self._unstore(session)  # a v5 client resumed it with Session Expiry 0

        connack_props = EMPTY_PROPERTIES
        if v5:
            connack_props = Properties(
                receive_maximum=self.config.receive_maximum,
                maximum_packet_size=self.config.max_packet_size_bytes,
                topic_alias_maximum=self.config.topic_alias_maximum,
                assigned_client_identifier=assigned,
                server_keep_alive=server_keepalive,
                session_expiry_interval=expiry if expiry != (props.session_expiry_interval or 0) else None,
            )
        log.info("connect %s from %s (v%s, clean=%s, expiry=%s, present=%s)", client_id, conn.peer,
                 5 if v5 else "3.1.1", packet.clean_start, expiry, session_present)
        self._send_packet(conn, Connack(session_present, ReasonCode.SUCCESS, connack_props),
                          self._wait_batch(before))
        self._resume(session, conn, now)

    def _refuse_identity(self, conn: Connection, packet: Connect, client_id: str, now: float) -> bool:
        """Refuse a CONNECT whose credentials failed, or whose identity may not use this client id or
        will topic (CONNACK 0x86/0x87/0x85; 3.1.1: 4/5/2); whether it was refused."""
        identity = conn.identity
        reason = conn.auth_refusal
        if reason is None and identity is None:
            reason = ReasonCode.NOT_AUTHORIZED  # the network layer did not authenticate it
        if reason is not None:
            self.access.denied["connect"] += 1
            log.warning("refusing %s from %s: %s", client_id, conn.peer, reason.name)
        else:
            will_topic = packet.will.topic if packet.will is not None else None
            session = self.sessions.get(client_id)
            owner = None if session is None else session.owner
            reason = self.access.connect_refusal(identity, client_id, will_topic, owner, now)
        if reason is None:
            return False
        self._send_packet(conn, Connack(False, reason))
        self._close(conn, reason, send_disconnect=False)
        return True

    def _on_pingreq(self, conn: Connection, session: Session, packet: Pingreq, now: float) -> None:
        self._send_packet(conn, Pingresp())

    def _on_disconnect(self, conn: Connection, session: Session, packet: Disconnect, now: float) -> None:
        if conn.protocol_version is V5:
            new_expiry = packet.properties.session_expiry_interval
            if new_expiry is not None:
                if session.expiry_interval_s == 0 and new_expiry != 0:
                    self._violation(conn, ReasonCode.PROTOCOL_ERROR, "MQTT-3.14.2-2",
                                    "session expiry set in DISCONNECT after 0 in CONNECT")
                    return
                session.expiry_interval_s = min(new_expiry, self.config.max_session_expiry_s)
                if session.persistent:
                    self._record(rec.SessionSaved(session.client_id, int(session.protocol_version),
                                                  session.expiry_interval_s, session.owner))
        conn.clean_disconnect = packet.reason_code != ReasonCode.DISCONNECT_WITH_WILL_MESSAGE
        log.info("disconnect %s (%s): %s", conn.client_id, conn.peer, packet.reason_code.name)
        conn.close_reason = packet.reason_code
        self._ready.add(conn)

    def _publish_will(self, conn: Connection, now: float) -> None:
        will = conn.will
        conn.will = None
        if will is None:
            return
        self.stats.wills_published += 1
        wall = self.wall(now)
        message = Message(0, will.topic, will.payload, will.qos, will.retain, conn.client_id,
                          delivery.forwarded_properties(will.properties),
                          delivery.expiry_at(will.properties, wall), received_at=wall,
                          publisher=conn.identity.username if conn.identity else None)
        if will.retain and self.limits.may_retain(conn, message, self.retained, now):
            self._retain(message)
        self._route(message, now)

    def _end_session(self, session: Session, now: float) -> None:
        """Forget a session: subscriptions, queue, QoS 2 state."""
        for topic_filter, sub in session.subscriptions.items():
            group, plain = split_shared(topic_filter)
            self.index.remove(session.client_id, plain, group)
        self._unstore(session)
        if self.sessions.get(session.client_id) is session:
            del self.sessions[session.client_id]

    def _unstore(self, session: Session) -> None:
        """Take a session out of the store: its deliveries stay in memory only, and no record refers
        to it after its `SessionDeleted`."""
        for item in itertools.chain(session.inflight.values(), session.queue):
            if item.durable:
                if item.state is not DeliveryState.PUBREL_SENT:
                    self._release_message(item.message)
                item.durable = False
        if session.stored:
            self._record(rec.SessionDeleted(session.client_id))
            session.stored = False

    def _resume(self, session: Session, conn: Connection, now: float) -> None:
        """Resend PUBRELs, then what was in flight (DUP) as far as the client's window allows, then
        fill the window from the queue."""
        session.unsent.clear()
        for item in session.inflight.values():
            if item.state is DeliveryState.PUBREL_SENT:
                self._send_packet(conn, Pubrel(item.packet_id))
            else:
                session.unsent.append(item.packet_id)
        self._fill_window(session, now)
