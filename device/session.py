# Ferry firmware: the MQTT session (MicroPython), on umqtt.simple 1.3.4 or later.
#
# umqtt.simple opens the connection (CONNECT with the retained last will and
# clean_session=False, CONNACK, session present). It knows no timeouts, so the
# sockets it opens come from _TimedSockets: a timeout on every operation and
# TCP_NODELAY before connect. After CONNACK this module drives the socket itself:
#
# - publishes readings from the outbox tail, up to `inflight` at a time, each in one
#   write from a preallocated buffer (packets.Publisher), and acknowledges the outbox
#   only on the PUBACK (in order, by record number);
# - waits on select.poll with a timeout, never in a blocking read and never busy;
# - a PUBACK, PINGRESP or SUBACK later than ack_timeout_ms means the link is dead
#   (a half-open TCP connection looks alive to the socket): the socket is closed and
#   the app reconnects with backoff; the readings still in flight are resent after the
#   reconnect, same packet ids with DUP set, same bytes from the outbox;
# - pings after keepalive_s / 2 without sending anything;
# - hands PUBLISHes on the cmd topic to the app and PUBACKs a command only after the
#   PUBACK of its reply, so a reply lost with the link is made again after the
#   reconnect (the broker redelivers the command).
#
# Heap: the per-reading path (service -> _send_next, wait -> _read_one -> _on_puback)
# allocates nothing of its own; functions are kept small so MicroPython keeps their
# frames on the C stack.
import random
import select
import socket
import time

from micropython import const
from umqtt import simple
from umqtt.simple import MQTTClient

import packets
from hw import log

K_TELEMETRY = const(1)
K_STATUS = const(2)
K_REPLY = const(3)
_EXTRA_SLOTS = const(4)  # in-flight slots beyond `inflight` for status messages and replies
RX_BYTES = const(640)  # largest packet the device reads (a command); bigger ones are skipped


_DNS_RETRY_AFTER = const(3)  # failed connects in a row before the broker's name is looked up again


class _TimedSockets:
    """What umqtt.simple calls `socket`: sockets with a timeout and TCP_NODELAY from the start.

    MicroPython's getaddrinfo takes no timeout, so the broker's address is looked up once
    and kept: a hanging resolver can only stall the first connect and the one after every
    _DNS_RETRY_AFTER failures in a row (the gateway may have moved), not every reconnect.
    """

    def __init__(self):
        self.timeout_s = 5.0
        self.failures = 0
        self._dns = None  # (host, port, getaddrinfo result)

    def getaddrinfo(self, host, port):
        d = self._dns
        if d is None or d[0] != host or d[1] != port or self.failures >= _DNS_RETRY_AFTER:
            log("dns: looking up %s" % host)
            d = self._dns = (host, port, socket.getaddrinfo(host, port))
            self.failures = 0
        return d[2]

    def socket(self):
        s = socket.socket()
        s.settimeout(self.timeout_s)
        try:
            s.setsockopt(6, 1, 1)  # IPPROTO_TCP, TCP_NODELAY: umqtt writes a packet in 3-4 pieces
        except OSError:
            pass
        return s


_SOCKETS = _TimedSockets()
simple.socket = _SOCKETS


class Backoff:
    """Reconnect delays: min_ms doubling up to max_ms, each drawn from [d/2, d] (equal jitter)."""

    def __init__(self, min_ms, max_ms):
        self.min_ms = min_ms
        self.max_ms = max_ms
        self.attempt = 0

    def next_ms(self):
        d = self.min_ms << self.attempt if self.attempt < 20 else self.max_ms
        if d > self.max_ms:
            d = self.max_ms
        else:
            self.attempt += 1
        half = d // 2
        return half + random.getrandbits(24) % (d - half + 1)

    def reset(self):
        self.attempt = 0


class Topics:
    """ferry/<site>/<device>/<channel> as bytes."""

    def __init__(self, site, device):
        base = "ferry/%s/%s/" % (site, device)
        self.telemetry = (base + "telemetry").encode()
        self.status = (base + "status").encode()
        self.cmd = (base + "cmd").encode()
        self.reply = (base + "reply").encode()


class Session(MQTTClient):
    """One device's MQTT session over any number of connections."""

    def __init__(self, cfg, client_id, topics, outbox, on_cmd, feed):
        MQTTClient.__init__(self, client_id, cfg.broker_host, cfg.broker_port, keepalive=cfg.keepalive_s)
        self._cfg = cfg
        self.topics = topics
        self._ob = outbox
        self._on_cmd = on_cmd  # on_cmd(payload memoryview, packet id): the app answers with reply()
        self._feed = feed
        self.up = False
        self.session_present = False
        self.backoff = Backoff(cfg.backoff_min_ms, cfg.backoff_max_ms)
        self._poll = None
        self._ack_ms = cfg.ack_timeout_ms
        self._ping_ms = cfg.keepalive_s * 500
        # In-flight ring, oldest at _head: kind, packet id, outbox record number, send time,
        # the command a reply answers, PUBACK seen.
        self._W = cfg.inflight
        self._R = R = cfg.inflight + _EXTRA_SLOTS
        self._kind = [0] * R
        self._pid = [0] * R
        self._lsn = [0] * R
        self._sent = [0] * R
        self._cmd = [0] * R
        self._acked = [0] * R
        self._head = self._n = self._tele = 0
        self._next_lsn = outbox.tail  # the next reading to publish
        self._last_pid = 0
        self._pub = packets.Publisher(topics.telemetry, outbox.max_payload)
        self._rec = outbox.record_buffer()
        self._rx = bytearray(RX_BYTES)
        self._b1 = bytearray(1)
        self._ackbuf = bytearray(4)
        self._in = packets.Incoming()
        self._last_tx = 0
        self._pinging = False
        self._ping_sent = 0
        self._suback_pid = 0
        self._stuck = False  # the next record could not be read: wait for a PUBACK
        # Counters (for tests and the console).
        self.sent = 0  # readings published (first time)
        self.resent = 0  # readings published again after a reconnect
        self.acked = 0  # readings PUBACKed
        self.connects = 0
        self.links_lost = 0

    # ---- connecting -----------------------------------------------------
    def connect(self, birth, will):
        """Connect (blocking, bounded by connect_timeout_ms per step); True when up.

        Then resend what was in flight, subscribe to the cmd topic and publish `birth`.
        """
        self.set_last_will(self.topics.status, will, True, 1)
        _SOCKETS.timeout_s = self._cfg.connect_timeout_ms / 1000
        t0 = time.ticks_ms()
        try:
            self.session_present = bool(MQTTClient.connect(self, False))
        except Exception as e:  # OSError, MQTTException (refused), or garbage instead of CONNACK
            log("mqtt: connect failed: %r" % (e,))
            _SOCKETS.failures += 1
            self._drop()
            return False
        _SOCKETS.failures = 0
        self.sock.settimeout(self._ack_ms / 1000)
        self._poll = select.poll()
        self._poll.register(self.sock, select.POLLIN)
        self.up = True
        self.connects += 1
        self._pinging = False
        self._last_tx = time.ticks_ms()
        log("mqtt: connected in %d ms, session present %d" % (time.ticks_diff(self._last_tx, t0),
                                                              self.session_present))
        try:
            self._resend()  # first, before anything of this connection is in the ring
            if self._subscribe():
                self._publish(K_STATUS, self.topics.status, birth, packets.RETAIN, 0)
        except OSError as e:
            self.lost("write failed: %r" % (e,))
        return self.up

    def _subscribe(self):
        """SUBSCRIBE to the cmd topic at QoS 1 and wait for the SUBACK (commands may arrive first).

        Done on every connect: a session can be present without the subscription when
        the link died between CONNACK and SUBACK.
        """
        pid = self._new_pid()
        self._suback_pid = pid
        self._write(packets.subscribe_bytes(self.topics.cmd, pid))
        t0 = time.ticks_ms()
        while self.up and self._suback_pid:
            left = self._ack_ms - time.ticks_diff(time.ticks_ms(), t0)
            if left <= 0:
                self.lost("no SUBACK within %d ms" % self._ack_ms)
                break
            self._feed()
            self.wait(left)
        return self.up

    def _resend(self):
        """After a reconnect: publish the readings still in flight again (DUP, same packet ids).

        Status messages and replies in flight are forgotten: a new birth follows, and
        unanswered commands come again from the broker.
        """
        ob = self._ob
        keep = []
        j = self._head
        for _ in range(self._n):
            # Acked or not: the outbox acks in order, so a PUBACK that came out of order
            # (the broker must not do that) counts only when everything before it did.
            if self._kind[j] == K_TELEMETRY and self._lsn[j] >= ob.tail:
                keep.append((self._pid[j], self._lsn[j]))
            j = (j + 1) % self._R
        self._head = self._n = self._tele = 0
        self._next_lsn = ob.tail
        self._stuck = False
        for pid, lsn in keep:
            p = ob.read_into(lsn - ob.tail, self._rec)
            if p is None or ob.rec_lsn != lsn:
                break  # gone meanwhile; what follows is sent as new
            self._send_pub(pid, p, packets.QOS1 | packets.DUP)
            self._push(K_TELEMETRY, pid, lsn, 0)
            self._next_lsn = lsn + 1
            self.resent += 1
        if keep:
            log("mqtt: resent %d in flight, from packet %d" % (self._n, keep[0][0]))

    # ---- the loop's calls ---------------------------------------------------
    def service(self, now):
        """Check deadlines, publish pending readings into the window, ping when idle."""
        if self._n and time.ticks_diff(now, self._sent[self._head]) >= self._ack_ms:
            self._lost_ack()
            return
        if self._pinging and time.ticks_diff(now, self._ping_sent) >= self._ack_ms:
            self.lost("no PINGRESP within %d ms" % self._ack_ms)
            return
        try:
            self._fill()
            if not self._pinging and time.ticks_diff(now, self._last_tx) >= self._ping_ms:
                self._ping(now)
        except OSError:
            self.lost("write failed")

    def _fill(self):
        while self._tele < self._W and self._n < self._R and self._send_next():
            pass

    def _lost_ack(self):
        j = self._head
        self.lost("no PUBACK for packet %d within %d ms (%d in flight)" % (self._pid[j], self._ack_ms, self._n))

    def _ping(self, now):
        self.sock.write(packets.PINGREQ_BYTES)
        self._pinging = True
        self._ping_sent = now
        self._last_tx = now

    def deadline_ms(self, now):
        """ms until service() has something to check (an ack deadline, a ping), at least 0."""
        if self._pinging:
            d = self._ack_ms - time.ticks_diff(now, self._ping_sent)
        else:
            d = self._ping_ms - time.ticks_diff(now, self._last_tx)
        if self._n:
            d = min(d, self._ack_ms - time.ticks_diff(now, self._sent[self._head]))
        return d if d > 0 else 0

    def can_send(self):
        """True when a reading is pending and the window has room (service() would publish)."""
        return (not self._stuck and self._tele < self._W and self._n < self._R
                and self._next_lsn - self._ob.tail < self._ob.pending())

    def idle(self):
        """Nothing in flight and nothing pending in the outbox."""
        return self._n == 0 and self._ob.pending() == 0

    def in_flight(self):
        return self._n

    def wait(self, ms):
        """Sleep in poll() up to ms for the broker; handle every packet that is there."""
        if not self._readable(ms):
            return
        try:
            self._read_one()
            while self.up and self._readable(0):
                self._read_one()
        except OSError:
            self.lost("read failed or timed out mid-packet")

    def _readable(self, ms):
        for _ in self._poll.ipoll(ms):
            return True
        return False

    # ---- publishing -------------------------------------------------------
    def _send_next(self):
        """Publish the next pending reading; False when there is none."""
        i = self._next_index()
        if i < 0:
            return False
        p = self._ob.read_into(i, self._rec)
        if p is None:  # a corrupt record behind those in flight: wait until it is the oldest
            self._stuck = True
            return False
        self._send_record(p)
        return True

    def _next_index(self):
        """The outbox index (0 = oldest pending) of the next reading to publish, or -1."""
        ob = self._ob
        i = self._next_lsn - ob.tail
        if i < 0:  # the outbox dropped readings that were in flight
            self._next_lsn = ob.tail
            i = 0
        return i if i < ob.pending() else -1

    def _send_record(self, p):
        self._stuck = False
        pid = self._new_pid()
        self._send_pub(pid, p, packets.QOS1)
        self._push(K_TELEMETRY, pid, self._ob.rec_lsn, 0)
        self._next_lsn = self._ob.rec_lsn + 1
        self.sent += 1

    def _send_pub(self, pid, payload, flags):
        self._pub.build(pid, payload, flags)
        self._pub.send(self.sock)
        self._last_tx = time.ticks_ms()

    def _publish(self, kind, topic, payload, flags, cmd_pid):
        """A status message or reply at QoS 1 (allocates; rare). False when no slot is free."""
        if self._n >= self._R:
            return False
        pid = self._new_pid()
        self._write(packets.publish_bytes(topic, payload, pid, packets.QOS1 | flags))
        self._push(kind, pid, 0, cmd_pid)
        return True

    def publish_status(self, payload):
        """Publish a (retained) status message; False when not sent."""
        if not self.up:
            return False
        try:
            return self._publish(K_STATUS, self.topics.status, payload, packets.RETAIN, 0)
        except OSError:
            self.lost("write failed")
            return False

    def reply(self, payload, cmd_pid):
        """Answer the command with packet id cmd_pid; it is PUBACKed when the reply is."""
        try:
            if not self._publish(K_REPLY, self.topics.reply, payload, 0, cmd_pid) and cmd_pid:
                log("mqtt: no slot for a reply, command %d acknowledged unanswered" % cmd_pid)
                self._puback(cmd_pid)
        except OSError:
            self.lost("write failed")

    def _write(self, data):
        self.sock.write(data)
        self._last_tx = time.ticks_ms()

    def _push(self, kind, pid, lsn, cmd):
        j = (self._head + self._n) % self._R
        self._kind[j] = kind
        self._pid[j] = pid
        self._lsn[j] = lsn
        self._cmd[j] = cmd
        self._acked[j] = 0
        self._sent[j] = time.ticks_ms()
        self._n += 1
        if kind == K_TELEMETRY:
            self._tele += 1

    def _new_pid(self):
        p = self._last_pid
        while True:
            p = p + 1 if p < 65535 else 1
            if not self._pid_used(p):
                self._last_pid = p
                return p

    def _pid_used(self, p):
        j = self._head
        for _ in range(self._n):
            if self._pid[j] == p:
                return True
            j = (j + 1) % self._R
        return p == self._suback_pid

    # ---- reading ----------------------------------------------------------
    def _read_one(self):
        first = self._byte()
        n = self._varint() if first >= 0 else -1
        if n < 0:
            self.lost("closed by the broker")
            return
        if n > RX_BYTES:
            self._skip(first, n)
            return
        if n:
            self._read_into(n)
        self._dispatch(first, n)

    def _byte(self):
        if self.sock.readinto(self._b1, 1) != 1:
            return -1
        return self._b1[0]

    def _varint(self):
        n = 0
        sh = 0
        while sh < 28:
            b = self._byte()
            if b < 0:
                return -1
            n |= (b & 0x7F) << sh
            if b < 128:
                return n
            sh += 7
        return -1

    def _read_into(self, n):
        if self.sock.readinto(self._rx, n) != n:
            raise OSError(104)  # closed mid-packet

    def _skip(self, first, n):
        """Read past a packet too big for the receive buffer; PUBACK it if it is a QoS 1 PUBLISH."""
        size = n
        k = RX_BYTES if n > RX_BYTES else n
        self._read_into(k)
        pid = 0
        if first & 0xF0 == packets.PUBLISH and first & 0x06:
            o = 2 + packets.u16(self._rx, 0)
            if o + 2 <= k:
                pid = packets.u16(self._rx, o)
        n -= k
        while n:
            k = RX_BYTES if n > RX_BYTES else n
            self._read_into(k)
            n -= k
        log("mqtt: skipped a %d-byte packet 0x%02x (limit %d)" % (size, first, RX_BYTES))
        if pid:
            self._puback(pid)

    def _dispatch(self, first, n):
        t = first & 0xF0
        if t == packets.PUBACK:
            if n >= 2:
                self._on_puback(packets.u16(self._rx, 0))
        elif t == packets.PUBLISH:
            self._on_publish(first, n)
        elif t == packets.PINGRESP:
            self._pinging = False
        elif t == packets.SUBACK:
            self._on_suback(n)

    def _on_suback(self, n):
        if n >= 3 and packets.u16(self._rx, 0) == self._suback_pid:
            self._suback_pid = 0
            if self._rx[2] == 0x80:
                log("mqtt: the broker refused the cmd subscription")

    def _on_puback(self, pid):
        j = self._head
        for _ in range(self._n):
            if self._pid[j] == pid and not self._acked[j]:
                self._acked[j] = 1
                self._pop_acked()
                if self.backoff.attempt:
                    self.backoff.reset()  # a PUBACK proves the link: start over at backoff_min_ms
                return
            j = (j + 1) % self._R

    def _pop_acked(self):
        self._stuck = False
        while self._n and self._acked[self._head]:
            self._retire(self._head)
            self._head = (self._head + 1) % self._R
            self._n -= 1

    def _retire(self, j):
        k = self._kind[j]
        if k == K_TELEMETRY:
            self._tele -= 1
            self.acked += 1
            if self._ob.tail == self._lsn[j]:  # else the outbox dropped it meanwhile
                self._ob.ack_oldest()
        elif k == K_REPLY and self._cmd[j]:
            self._puback(self._cmd[j])

    def _on_publish(self, first, n):
        inc = self._in
        if not inc.parse_publish(first, self._rx, n):
            self.lost("malformed PUBLISH")
            return
        if inc.topic_is(self._rx, self.topics.cmd):
            self._on_cmd(memoryview(self._rx)[inc.payload_start:inc.payload_end], inc.pid)
        elif inc.pid:
            self._puback(inc.pid)

    def _puback(self, pid):
        packets.put_puback(self._ackbuf, pid)
        self._write(self._ackbuf)

    # ---- closing ------------------------------------------------------------
    def lost(self, reason):
        """The connection is dead: close it; what is in flight is resent after the next connect."""
        if self.up:
            self.links_lost += 1
        log("mqtt: link lost: %s" % reason)
        self._drop()

    def _drop(self):
        self.up = False
        self._pinging = False
        self._suback_pid = 0
        self._poll = None
        if self.sock is not None:
            try:
                self.sock.close()
            except OSError:
                pass
            self.sock = None

    def abort(self):
        """Close without DISCONNECT: the broker publishes the will."""
        self._drop()

    def close(self):
        """DISCONNECT cleanly (the broker then drops the will) and close."""
        if self.up:
            try:
                self.sock.write(packets.DISCONNECT_BYTES)
            except OSError:
                pass
        self._drop()
