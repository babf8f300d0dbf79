# Ferry firmware: connecting the MQTT session (MicroPython), the half of session.py that runs
# once per connect: DNS, TCP connect, the TLS handshake, CONNECT and CONNACK, resending what
# was in flight, SUBSCRIBE and the birth. Session.connect() imports this module for the call
# and drops it from sys.modules after it: between connects its bytecode is heap the running
# firmware gets back (docs/device.md, "Heap"). The TLS context is session_tls.py's.
# Reconnects are rare (backed off), so loading it again from flash each time costs little.
import select
import socket
import time

from micropython import const

import packets
from hw import log
from session import K_STATUS, K_TELEMETRY, RX_BYTES

_DNS_RETRY_AFTER = const(3)  # failed connects in a row before the broker's name is looked up again


def broker_address(session, host, port):
    """The broker's address, looked up once and kept in the session.

    MicroPython's getaddrinfo takes no timeout, so a hanging resolver can only stall the
    first connect and the one after every _DNS_RETRY_AFTER failures in a row (the gateway
    may have moved), not every reconnect.
    """
    if (session._broker_address is None or session._broker_host != host or session._broker_port != port
            or session.broker_failures >= _DNS_RETRY_AFTER):
        log("dns: looking up %s" % host)
        session._broker_address = socket.getaddrinfo(host, port)[0][-1]
        session._broker_host = host
        session._broker_port = port
        session.broker_failures = 0
    return session._broker_address


def connect(session, birth, will):
    """Connect (blocking: the TCP connect, each read of the TLS handshake and of the CONNACK at most
    connect_timeout_ms); True when up.

    Then resend what was in flight, subscribe to the cmd and ota topics and publish `birth` (if not None).
    """
    t0 = time.ticks_ms()
    try:
        code = open_mqtt(session, will)
    except Exception as e:  # OSError (timeout, refused, reset), a certificate that does not verify, no CONNACK
        code = -1
        log("mqtt: connect failed: %r" % (e,))
    if code:  # backed off by the app like any failed connect; the readings stay in the outbox
        if code > 0:  # the gateway said no, in its words (MQTT 3.1.1 table 3.1)
            log("mqtt: connect refused: %s (CONNACK return code %d)" % (
                "bad user name or password" if code == 4 else "not authorized" if code == 5 else
                "identifier rejected" if code == 2 else "see MQTT 3.1.1 table 3.1", code))
        session.broker_failures += 1
        session._drop()
        return False
    session.broker_failures = 0
    session._raw.settimeout(session._ack_ms / 1000)
    session._poll = select.poll()
    session._poll.register(session._raw, select.POLLIN)
    if session._tls is not None:
        # Only asked with timeout 0, for records mbedTLS already holds: the unix port's poll() sleeps
        # 1 ms per round for an object without a file descriptor, so the waiting is on the TCP socket.
        session._tls_poll = select.poll()
        session._tls_poll.register(session.sock, select.POLLIN)
    session.up = True
    session.connects += 1
    session._pinging = False
    session._last_tx = time.ticks_ms()
    log("mqtt: connected in %d ms, session present %d%s" % (time.ticks_diff(session._last_tx, t0),
                                                            session.session_present,
                                                            ", tls" if session._tls is not None else ""))
    try:
        resend(session)  # first, before anything of this connection is in the ring
        if subscribe(session) and birth is not None:  # update mode has none (ota_mode.py)
            session._publish(K_STATUS, session.topics.status, birth, packets.RETAIN, 0)
    except OSError as e:
        session.lost("write failed: %r" % (e,))
    return session.up


def open_mqtt(session, will):
    """TCP connect, TLS handshake, CONNECT, CONNACK; sets session_present. Returns the CONNACK's return
    code (0: accepted); raises when there is none."""
    cfg = session._cfg
    address = broker_address(session, cfg.broker_host, cfg.port())
    session._drop()
    s = session._raw = socket.socket()
    s.settimeout(cfg.connect_timeout_ms / 1000)  # the TCP connect, then every read of the handshake and CONNACK
    try:
        s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY (not on every lwIP build: then Nagle stays)
    except OSError:
        pass
    s.connect(address)
    if session._tls is not None:
        # Blocking; each read times out like s: ETIMEDOUT on the unix port and the ESP32 alike,
        # which mbedTLS passes through, so a gateway that never answers costs connect_timeout_ms.
        session._feed()
        try:
            s = session._tls.wrap_socket(s, server_hostname=cfg.broker_host)
        except ValueError as e:  # mbedTLS refused the certificate: its reason, without the line breaks
            raise ValueError("tls: certificate refused: %s" % str(e).strip())
        session._feed()
    session.sock = s
    user = session._client_id if session._password else b""
    s.write(packets.connect_bytes(session._client_id, cfg.keepalive_s, session.topics.status, will, user,
                                  session._password))
    first = session._byte()
    n = session._varint() if first >= 0 else -1
    if n < 0:
        raise OSError(104)  # closed by the broker
    if n > RX_BYTES:
        raise ValueError("a %d-byte packet instead of CONNACK" % n)
    session._read_into(n)
    code = packets.connack_code(first, session._rx, n)
    if code < 0:
        raise ValueError("packet 0x%02x instead of CONNACK" % first)
    session.session_present = bool(packets.connack_session_present(session._rx))
    return code


def subscribe(session):
    """SUBSCRIBE to the cmd and ota topics at QoS 1 (one packet) and wait for the SUBACK (commands and
    chunks may arrive first).

    Done on every connect: a session can be present without the subscription when
    the link died between CONNACK and SUBACK.
    """
    pid = session._new_pid()
    session._suback_pid = pid
    session._write(packets.subscribe_bytes((session.topics.cmd, session.topics.ota), pid))
    t0 = time.ticks_ms()
    while session.up and session._suback_pid:
        left = session._ack_ms - time.ticks_diff(time.ticks_ms(), t0)
        if left <= 0:
            session.lost("no SUBACK within %d ms" % session._ack_ms)
            break
        session._feed()
        session.wait(left)
    return session.up


def resend(session):
    """After a reconnect: publish the readings still in flight again (DUP, same packet ids).

    Status messages and replies in flight are forgotten: a new birth follows, and
    unanswered commands come again from the broker.
    """
    ob = session._outbox
    keep = []
    j = session._head
    for _ in range(session._in_flight_count):
        # Acked or not: the outbox acks in order, so a PUBACK that came out of order
        # (the broker must not do that) counts only when everything before it did.
        if session._kind[j] == K_TELEMETRY and session._lsn[j] >= ob.tail:
            keep.append((session._pid[j], session._lsn[j]))
        j = (j + 1) % session._ring_slots
    session._head = session._in_flight_count = session._telemetry_in_flight = 0
    session._next_lsn = ob.tail
    session._stuck = False
    for pid, lsn in keep:
        p = ob.read_into(lsn - ob.tail, session._record)
        if p is None or ob.rec_lsn != lsn:
            break  # gone meanwhile; what follows is sent as new
        session._send_pub(pid, p, packets.QOS1 | packets.DUP)
        session._push(K_TELEMETRY, pid, lsn, 0)
        session._next_lsn = lsn + 1
        session.resent += 1
    if keep:
        log("mqtt: resent %d in flight, from packet %d" % (session._in_flight_count, keep[0][0]))
