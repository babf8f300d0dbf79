# Ferry firmware: reading past a packet too big for the session's receive buffer (MicroPython).
# Rare (a command over 640 bytes, an update's chunk sent too large), so its code is not kept on the
# heap: Session._skip imports this module for the call and drops it after.
import packets
from hw import log
from session import RX_BYTES


def skip(session, first, n):
    """Read past a packet of n > RX_BYTES bytes whose first byte was `first`.

    A command goes to the app with its size only, to be refused with a reply (and PUBACKed after
    it); another QoS 1 PUBLISH (a chunk, anything else) is PUBACKed. May allocate.
    """
    size = n
    session._read_into(RX_BYTES)
    inc = session._incoming
    publish = first & 0xF0 == packets.PUBLISH and inc.parse_publish(first, session._rx, RX_BYTES)
    command = publish and inc.topic_is(session._rx, session.topics.cmd)
    pid = inc.pid if publish else 0
    n -= RX_BYTES
    while n:
        k = RX_BYTES if n > RX_BYTES else n
        session._read_into(k)
        n -= k
    log("mqtt: skipped a %d-byte packet 0x%02x (limit %d)" % (size, first, RX_BYTES))
    if command:
        session._on_cmd(None, size - inc.payload_start, pid)
    elif pid:
        session._puback(pid)
