# Ferry firmware: every MQTT 3.1.1 packet the session sends or reads, sans-IO
# (MicroPython): CONNECT and CONNACK, PUBLISH and PUBACK (the hot path: built in and
# parsed from preallocated buffers), SUBSCRIBE, PING, DISCONNECT. So they can be tested
# byte for byte without a socket or broker, and no umqtt.simple a board's image may
# freeze (1.3.4-1.8.0, each connecting differently) is ever imported.
# tests/vectors/device/umqtt_simple_session.json pins the CONNECT and PUBLISH bytes: the
# same as umqtt.simple 1.3.4's, each in one write instead of several.
from micropython import const

CONNACK = const(0x20)
PUBLISH = const(0x30)
PUBACK = const(0x40)
SUBACK = const(0x90)
PINGRESP = const(0xD0)
QOS1 = const(0x02)
DUP = const(0x08)
RETAIN = const(0x01)
PINGREQ_BYTES = b"\xc0\x00"
DISCONNECT_BYTES = b"\xe0\x00"


class Publisher:
    """PUBLISH packets for one topic, built in place: [header][topic][packet id][payload].

    The topic is written once; build() writes the payload, packet id and fixed header
    around it: the packet is buf[start:end]. No allocation.
    """

    def __init__(self, topic, max_payload):
        tl = len(topic)
        if 2 + tl + 2 + max_payload >= 16384:
            raise ValueError("packets: topic + payload too long")
        self._pid_at = 5 + tl
        self.buf = bytearray(self._pid_at + 2 + max_payload)
        self.buf[3] = tl >> 8
        self.buf[4] = tl & 0xFF
        self.buf[5:5 + tl] = topic
        self.max_payload = max_payload
        self.start = self.end = 0

    # MicroPython puts a frame on the heap when locals + stack pass 11 words: small methods.
    def build(self, pid, payload, flags):
        """The packet (QoS 1 when flags has QOS1) for payload: self.buf[self.start:self.end]."""
        self._body(pid, payload)
        self.start = self._header(self.end - 3, flags)
        return self.start

    def send(self, sock):
        """Write the packet built last, in one write (one TCP segment with TCP_NODELAY)."""
        sock.write(self.buf, self.start, self.end - self.start)

    def _body(self, pid, payload):
        o = self._pid_at
        self.buf[o] = pid >> 8
        self.buf[o + 1] = pid & 0xFF
        o += 2
        self.end = o + len(payload)
        self.buf[o:self.end] = payload

    def _header(self, rl, flags):
        b = self.buf
        if rl < 128:
            b[1] = PUBLISH | flags
            b[2] = rl
            return 1
        b[0] = PUBLISH | flags
        b[1] = (rl & 0x7F) | 0x80
        b[2] = rl >> 7
        return 0


def connect_bytes(client_id, keepalive_s, will_topic, will_payload, username=b"", password=b""):
    """CONNECT with clean_session 0 and a retained QoS 1 last will, the only one a device sends
    (rare: allocates). All arguments but keepalive_s are bytes. With a password, the user name
    and password flags are set and both follow the will in the payload (MQTT 3.1.1 3.1.2.8-9,
    3.1.3); a password without a user name is not allowed [MQTT-3.1.2-22], so an empty
    username sends neither."""
    flags = 0x2C  # will retain | will QoS 1 | will flag
    tail = b""
    if username:
        flags |= 0x80
        tail = _field(username)
        if password:
            flags |= 0x40
            tail += _field(password)
    n = 10 + 2 + len(client_id) + 2 + len(will_topic) + 2 + len(will_payload) + len(tail)
    head = bytes((0x10, n & 0x7F | 0x80, n >> 7)) if n >= 128 else bytes((0x10, n))
    # Protocol name "MQTT", level 4, the flags, the keepalive.
    return (head + b"\x00\x04MQTT\x04" + bytes((flags, keepalive_s >> 8, keepalive_s & 0xFF))
            + _field(client_id) + _field(will_topic) + _field(will_payload) + tail)


def _field(data):
    return bytes((len(data) >> 8, len(data) & 0xFF)) + data


def connack_code(first, body, n):
    """The return code of the CONNACK in body[:n] (0: accepted), or -1 when it is not one."""
    if first != CONNACK or n != 2:
        return -1
    return body[1]


def connack_session_present(body):
    """1 when the broker still had this client's session (the CONNACK's session-present flag)."""
    return body[0] & 1


def publish_bytes(topic, payload, pid, flags):
    """A whole PUBLISH packet (status and replies: rare, allocates), as a view of the one buffer it
    is built in: no second copy (the birth is published during a connect, the heap's tightest point)."""
    p = Publisher(topic, len(payload))
    start = p.build(pid, payload, flags)
    return memoryview(p.buf)[start:p.end]


def subscribe_bytes(topics, pid, qos=1):
    """SUBSCRIBE to a tuple of topic filters, each at `qos` (rare: allocates)."""
    body = bytes((pid >> 8, pid & 0xFF))
    for topic in topics:
        body += bytes((len(topic) >> 8, len(topic) & 0xFF)) + topic + bytes((qos,))
    n = len(body)
    head = bytes((0x82, n & 0x7F | 0x80, n >> 7)) if n >= 128 else bytes((0x82, n))
    return head + body


def put_puback(buf, pid):
    """PUBACK for pid into a 4-byte buffer."""
    buf[0] = PUBACK
    buf[1] = 2
    buf[2] = pid >> 8
    buf[3] = pid & 0xFF


def u16(buf, o):
    return buf[o] << 8 | buf[o + 1]


class Incoming:
    """Where the parts of a received PUBLISH are in the receive buffer (set by parse_publish)."""

    def __init__(self):
        self.topic_start = self.topic_end = 0
        self.pid = 0
        self.payload_start = self.payload_end = 0

    def parse_publish(self, first, body, n):
        """Parse a PUBLISH body of n bytes; False when it is malformed."""
        if n < 2:
            return False
        tl = u16(body, 0)
        self.topic_start = 2
        self.topic_end = 2 + tl
        o = self.topic_end
        self.pid = 0
        if first & 0x06:
            self.pid = u16(body, o) if o + 2 <= n else 0
            o += 2
        if o > n:
            return False
        self.payload_start = o
        self.payload_end = n
        return True

    def topic_is(self, body, topic):
        """True when the parsed topic equals `topic` (bytes), compared in place."""
        s = self.topic_start
        if self.topic_end - s != len(topic):
            return False
        for i in range(len(topic)):
            if body[s + i] != topic[i]:
                return False
        return True
