# Ferry firmware: the MQTT session (MicroPython), on the socket alone.
#
# Every packet is Ferry's own (packets.py), CONNECT and CONNACK included: umqtt.simple is
# not imported, because the one a board runs is whichever its image freezes (stock ESP32
# images freeze 1.6/1.7, found before /lib) or mip installed, and from 1.5.0 on its
# connect() sets the socket's timeout to None: a gateway that accepts TCP and never
# answers would then block the board until its watchdog fires (docs/device.md).
#
# - connect (session_connect.py, imported per connect and dropped after it): TCP connect,
#   the TLS handshake (settings.tls: the gateway's certificate must
#   chain to the CA on flash, pinned, and name broker_host) and CONNACK, each read with a
#   timeout of connect_timeout_ms, TCP_NODELAY set before the connect, CONNECT with
#   clean_session 0, the retained "offline" will, the device id as user name and
#   mqtt_password; a refusing CONNACK (bad password: 4, not authorized: 5) is a failed
#   connect like any other: logged as such, backed off, the readings stay in the outbox;
# - publishes readings from the outbox tail, up to `inflight` at a time, each in one
#   write from a preallocated buffer (packets.Publisher), and acknowledges the outbox
#   only on the PUBACK (in order, by record number);
# - waits on select.poll with a timeout, never in a blocking read and never busy;
# - a PUBACK, PINGRESP or SUBACK later than ack_timeout_ms means the link is dead
#   (a half-open TCP connection looks alive to the socket): the socket is closed and
#   the app reconnects with backoff; the readings still in flight are resent after the
#   reconnect, same packet ids with DUP set, same bytes from the outbox;
# - pings after keepalive_s / 2 without sending anything;
# - hands PUBLISHes on the cmd topic to the app (one larger than the receive buffer with
#   its size only, so the app can refuse it with a reply) and PUBACKs a command only
#   after the PUBACK of its reply, so a reply lost with the link is made again after
#   the reconnect (the broker redelivers the command).
#
# Heap: the per-reading path (service -> _send_next, wait -> _read_one -> _on_puback)
# allocates nothing of its own; functions are kept small so MicroPython keeps their
# frames on the C stack.
# The connect path's bytecode is on the heap only during a connect.
import gc
import random
import sys
import time

from micropython import const

import packets
from hw import log

K_TELEMETRY = const(1)
K_STATUS = const(2)
K_REPLY = const(3)
_EXTRA_SLOTS = const(4)  # in-flight slots beyond `inflight` for status messages and replies
RX_BYTES = const(640)  # largest packet the device reads whole (a command); bigger ones are skipped


def tls_context(ca_file):
    """A TLS client context that trusts exactly the CA certificate (DER) in ca_file (session_tls.py's)."""
    import session_tls

    try:
        return session_tls.tls_context(ca_file)
    finally:
        del sys.modules["session_tls"]


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
        self.ota = (base + "ota").encode()


class Session:
    """One device's MQTT session over any number of connections."""

    def __init__(self, cfg, client_id, topics, outbox, on_cmd, on_ota, feed):
        self._cfg = cfg
        self._client_id = client_id.encode()
        self.topics = topics
        self._outbox = outbox
        # on_cmd(payload, size, packet id): payload is a memoryview of the command, or None when
        # its `size` bytes did not fit the receive buffer; the app answers with reply().
        self._on_cmd = on_cmd
        # on_ota(payload, size): a chunk of an update (a memoryview of it in the receive buffer); it is
        # PUBACKed once on_ota returns: written to flash, or dropped for good (docs/ota.md). None (the
        # app, not in update mode): chunks are PUBACKed and dropped; the operator offers again.
        self._on_ota = on_ota
        self._feed = feed
        # The broker's address, looked up once and kept (session_connect.broker_address).
        self.broker_failures = 0  # connects that failed in a row
        self._broker_host = None
        self._broker_port = 0
        self._broker_address = None
        self._password = cfg.mqtt_password.encode()
        self._tls = tls_context(cfg.tls_ca_file) if cfg.tls else None
        self.sock = None  # the stream MQTT goes over: the TLS socket, or the TCP socket itself
        self._raw = None  # the TCP socket: timeouts and poll()
        self._tls_poll = None
        self.up = False
        self.session_present = False
        self.backoff = Backoff(cfg.backoff_min_ms, cfg.backoff_max_ms)
        self._poll = None
        self._ack_ms = cfg.ack_timeout_ms
        self._ping_ms = cfg.keepalive_s * 500
        # In-flight ring, oldest at _head: kind, packet id, outbox record number, send time,
        # the command a reply answers, PUBACK seen.
        self._telemetry_window = cfg.inflight
        self._ring_slots = slots = cfg.inflight + _EXTRA_SLOTS
        self._kind = [0] * slots
        self._pid = [0] * slots
        self._lsn = [0] * slots
        self._sent = [0] * slots
        self._cmd = [0] * slots
        self._acked = [0] * slots
        self._head = self._in_flight_count = self._telemetry_in_flight = 0
        self._next_lsn = outbox.tail  # the next reading to publish
        self._last_pid = 0
        self._publisher = packets.Publisher(topics.telemetry, outbox.max_payload)
        self._record = outbox.record_buffer()
        self._rx = bytearray(RX_BYTES)
        self._one_byte = bytearray(1)
        self._puback_buffer = bytearray(4)
        self._incoming = packets.Incoming()
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
        """Connect (blocking: the TCP connect, each read of the TLS handshake and of the CONNACK at most
        connect_timeout_ms); True when up. Then resend what was in flight, subscribe to the cmd topic and
        publish `birth`. The code is session_connect.py's, imported for the call and dropped after it."""
        gc.collect()  # so its bytecode fills the heap from the lowest hole: this is the heap's tightest point
        import session_connect

        try:
            return session_connect.connect(self, birth, will)
        finally:
            del sys.modules["session_connect"]

    # ---- the loop's calls ---------------------------------------------------
    def service(self, now):
        """Check deadlines, publish pending readings into the window, ping when idle."""
        if self._in_flight_count and time.ticks_diff(now, self._sent[self._head]) >= self._ack_ms:
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
        while self._window_open() and self._send_next():
            pass

    def _window_open(self):
        """Room for one more reading in flight (and in the ring, shared with status and replies)."""
        return self._telemetry_in_flight < self._telemetry_window and self._in_flight_count < self._ring_slots

    def _lost_ack(self):
        j = self._head
        self.lost("no PUBACK for packet %d within %d ms (%d in flight)" % (self._pid[j], self._ack_ms,
                                                                           self._in_flight_count))

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
        if self._in_flight_count:
            d = min(d, self._ack_ms - time.ticks_diff(now, self._sent[self._head]))
        return d if d > 0 else 0

    def can_send(self):
        """True when a reading is pending and the window has room (service() would publish)."""
        return not self._stuck and self._window_open() and self._next_lsn - self._outbox.tail < self._outbox.pending()

    def idle(self):
        """Nothing in flight and nothing pending in the outbox."""
        return self._in_flight_count == 0 and self._outbox.pending() == 0

    def in_flight(self):
        return self._in_flight_count

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
        for _ in self._poll.ipoll(ms if self._tls_poll is None else 0):
            return True
        if self._tls_poll is None:
            return False
        for _ in self._tls_poll.ipoll(0):  # the rest of a TLS record mbedTLS already read
            return True
        if ms:
            for _ in self._poll.ipoll(ms):
                return True
        return False

    # ---- publishing -------------------------------------------------------
    def _send_next(self):
        """Publish the next pending reading; False when there is none."""
        i = self._next_index()
        if i < 0:
            return False
        p = self._outbox.read_into(i, self._record)
        if p is None:  # a corrupt record behind those in flight: wait until it is the oldest
            self._stuck = True
            return False
        self._send_record(p)
        return True

    def _next_index(self):
        """The outbox index (0 = oldest pending) of the next reading to publish, or -1."""
        ob = self._outbox
        i = self._next_lsn - ob.tail
        if i < 0:  # the outbox dropped readings that were in flight
            self._next_lsn = ob.tail
            i = 0
        return i if i < ob.pending() else -1

    def _send_record(self, p):
        self._stuck = False
        pid = self._new_pid()
        self._send_pub(pid, p, packets.QOS1)
        self._push(K_TELEMETRY, pid, self._outbox.rec_lsn, 0)
        self._next_lsn = self._outbox.rec_lsn + 1
        self.sent += 1

    def _send_pub(self, pid, payload, flags):
        self._publisher.build(pid, payload, flags)
        self._publisher.send(self.sock)
        self._last_tx = time.ticks_ms()

    def _publish(self, kind, topic, payload, flags, cmd_pid):
        """A status message or reply at QoS 1 (allocates; rare). False when no slot is free."""
        if self._in_flight_count >= self._ring_slots:
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
        j = (self._head + self._in_flight_count) % self._ring_slots
        self._kind[j] = kind
        self._pid[j] = pid
        self._lsn[j] = lsn
        self._cmd[j] = cmd
        self._acked[j] = 0
        self._sent[j] = time.ticks_ms()
        self._in_flight_count += 1
        if kind == K_TELEMETRY:
            self._telemetry_in_flight += 1

    def _new_pid(self):
        p = self._last_pid
        while True:
            p = p + 1 if p < 65535 else 1
            if not self._pid_used(p):
                self._last_pid = p
                return p

    def _pid_used(self, p):
        j = self._head
        for _ in range(self._in_flight_count):
            if self._pid[j] == p:
                return True
            j = (j + 1) % self._ring_slots
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
        # A TLS socket answers None for a record with nothing for us (a TLS 1.3 session ticket after the
        # handshake; mbedTLS's would-block): read again, a few times; each read still times out.
        for _ in range(4):
            n = self.sock.readinto(self._one_byte, 1)
            if n == 1:
                return self._one_byte[0]
            if n is not None:
                return -1
        raise OSError(110)

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
        """Read past a packet too big for the receive buffer (n > RX_BYTES): session_skip.py's (rare)."""
        import session_skip

        try:
            session_skip.skip(self, first, n)
        finally:
            del sys.modules["session_skip"]

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
            if self._rx[2] == 0x80 or n >= 4 and self._rx[3] == 0x80:  # cmd, ota (docs/ota.md, "Security")
                log("mqtt: the broker refused the cmd or ota subscription")

    def _on_puback(self, pid):
        j = self._head
        for _ in range(self._in_flight_count):
            if self._pid[j] == pid and not self._acked[j]:
                self._acked[j] = 1
                self._pop_acked()
                if self.backoff.attempt:
                    self.backoff.reset()  # a PUBACK proves the link: start over at backoff_min_ms
                return
            j = (j + 1) % self._ring_slots

    def _pop_acked(self):
        self._stuck = False
        while self._in_flight_count and self._acked[self._head]:
            self._retire(self._head)
            self._head = (self._head + 1) % self._ring_slots
            self._in_flight_count -= 1

    def _retire(self, j):
        k = self._kind[j]
        if k == K_TELEMETRY:
            self._telemetry_in_flight -= 1
            self.acked += 1
            if self._outbox.tail == self._lsn[j]:  # else the outbox dropped it meanwhile
                self._outbox.ack_oldest()
        elif k == K_REPLY and self._cmd[j]:
            self._puback(self._cmd[j])

    def _on_publish(self, first, n):
        inc = self._incoming
        if not inc.parse_publish(first, self._rx, n):
            self.lost("malformed PUBLISH")
            return
        if inc.topic_is(self._rx, self.topics.cmd):
            self._on_cmd(memoryview(self._rx)[inc.payload_start:inc.payload_end], inc.payload_end - inc.payload_start,
                         inc.pid)
            return
        if self._on_ota is not None and inc.topic_is(self._rx, self.topics.ota):
            self._on_ota(memoryview(self._rx)[inc.payload_start:inc.payload_end], inc.payload_end - inc.payload_start)
        if inc.pid:
            self._puback(inc.pid)

    def _puback(self, pid):
        packets.put_puback(self._puback_buffer, pid)
        self._write(self._puback_buffer)

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
        self._poll = self._tls_poll = None
        for s in (self.sock, self._raw):  # the TLS socket closes its TCP socket too; closing twice is harmless
            if s is not None:
                try:
                    s.close()
                except OSError:
                    pass
        self.sock = self._raw = None

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
