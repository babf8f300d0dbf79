"""Streaming, sans-IO MQTT decoder: bytes in, typed packets out.

    decoder = Decoder(server_side=True)
    for packet in decoder.feed(chunk):   # any split of the stream, even 1 byte
        ...

The decoder keeps at most one partial packet in a buffer and parses complete
frames only.  The fixed header is checked as soon as it arrives (packet type,
direction, reserved flags, remaining length, maximum packet size), so an
oversized or illegal packet is refused before its body is read.

A :class:`ProtocolError` is final: the stream position is lost, so every later
``feed`` raises the same error.  Packets decoded earlier in the failing call
are on ``error.packets``.
"""

from __future__ import annotations

from functools import lru_cache

from ._parsers import PARSERS
from ._wire import MAX_VBI, V5, V311, rule
from .errors import ProtocolError, malformed
from .packets import Packet, PacketType, ProtocolVersion
from .reason_codes import ReasonCode

__all__ = ["Decoder"]

MAX_PACKET_SIZE = MAX_VBI + 5  # largest remaining length plus the fixed header

_T = PacketType
_SERVER_RECEIVES = frozenset({
    _T.CONNECT, _T.PUBLISH, _T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP, _T.SUBSCRIBE,
    _T.UNSUBSCRIBE, _T.PINGREQ, _T.DISCONNECT, _T.AUTH,
})
_CLIENT_RECEIVES = frozenset({
    _T.CONNACK, _T.PUBLISH, _T.PUBACK, _T.PUBREC, _T.PUBREL, _T.PUBCOMP, _T.SUBACK,
    _T.UNSUBACK, _T.PINGRESP, _T.DISCONNECT, _T.AUTH,
})
# Packet types whose flags must be 0b0010, and specific rules for some others.
_FLAGS_0010 = {_T.PUBREL: "MQTT-3.6.1-1", _T.SUBSCRIBE: "MQTT-3.8.1-1", _T.UNSUBSCRIBE: "MQTT-3.10.1-1"}
_FLAGS_0000 = {_T.DISCONNECT: "MQTT-3.14.1-1", _T.AUTH: "MQTT-3.15.1-1"}

_PARSERS = (None, *(PARSERS[t] for t in _T))

# (reason code, rule, section, message) describing why a first byte is refused.
_Refusal = tuple[ReasonCode, str, str, str]


def _check_first_byte(
    first: int, version: ProtocolVersion | None, server_side: bool, connected: bool
) -> _Refusal | None:
    """Why the fixed header's first byte is not acceptable now, or None."""
    ptype, flags = first >> 4, first & 0x0F
    malformed_code, protocol_code = ReasonCode.MALFORMED_PACKET, ReasonCode.PROTOCOL_ERROR
    if ptype == 0 or (ptype == _T.AUTH and version is V311):
        return malformed_code, "", "2.1.2", f"packet type {ptype} is reserved"
    ptype = _T(ptype)
    if server_side and not connected and ptype != _T.CONNECT:
        return protocol_code, "MQTT-3.1.0-1", "", f"first packet is {ptype.name}, not CONNECT"
    if server_side and connected and ptype == _T.CONNECT:
        return protocol_code, "MQTT-3.1.0-2", "", "second CONNECT on the connection"
    receives = _SERVER_RECEIVES if server_side else _CLIENT_RECEIVES
    if ptype not in receives or (ptype == _T.DISCONNECT and version is V311 and not server_side):
        sender = "client" if server_side else "server"
        return protocol_code, "", "2.1.2", f"a {sender} does not send {ptype.name}"
    if ptype == _T.PUBLISH:
        qos = (flags >> 1) & 3
        if qos == 3:
            return malformed_code, "MQTT-3.3.1-4", "", "PUBLISH with QoS 3"
        if qos == 0 and flags & 0x08:
            return malformed_code, "MQTT-3.3.1-2", "", "PUBLISH with DUP set and QoS 0"
        return None
    if ptype in _FLAGS_0010:
        if flags != 0b0010:
            return malformed_code, _FLAGS_0010[ptype], "", f"{ptype.name} flags are {flags:04b}, not 0010"
        return None
    if flags:
        rule_id = _FLAGS_0000.get(ptype) or rule("reserved_flags", version)
        return malformed_code, rule_id, "", f"{ptype.name} flags are {flags:04b}, not 0000"
    return None


@lru_cache(maxsize=None)
def _first_byte_table(
    version: ProtocolVersion | None, server_side: bool, connected: bool
) -> tuple[_Refusal | None, ...]:
    return tuple(_check_first_byte(b, version, server_side, connected) for b in range(256))


class Decoder:
    """Turns a byte stream from one peer into :data:`~ferry.gateway.mqtt.packets.Packet` objects.

    Args:
        server_side: True in a broker (decoding what a client sends).  The
            first packet must then be CONNECT, whose protocol level sets
            :attr:`protocol_version`.
        max_packet_size: largest whole packet (fixed header included) accepted;
            larger ones raise PACKET_TOO_LARGE as soon as their size is known.
        protocol_version: required for client-side decoders, which cannot
            tell the version from the stream; must be None on the server side.
    """

    __slots__ = ("_server_side", "_max_packet_size", "_version", "_table", "_buf", "_need", "_error")

    def __init__(
        self,
        *,
        server_side: bool,
        max_packet_size: int = MAX_VBI,
        protocol_version: ProtocolVersion | None = None,
    ) -> None:
        if not 2 <= max_packet_size <= MAX_PACKET_SIZE:
            raise ValueError(f"max_packet_size must be 2..{MAX_PACKET_SIZE}, not {max_packet_size}")
        if server_side and protocol_version is not None:
            raise ValueError("a server-side decoder learns the protocol version from CONNECT")
        if not server_side and protocol_version is None:
            raise ValueError("a client-side decoder needs the protocol_version it connected with")
        self._server_side = server_side
        self._max_packet_size = max_packet_size
        self._version = None if protocol_version is None else ProtocolVersion(protocol_version)
        self._table = _first_byte_table(self._version, server_side, not server_side)
        self._buf = bytearray()
        self._need = 0  # bytes the buffered partial packet needs before parsing is worthwhile
        self._error: ProtocolError | None = None

    @property
    def protocol_version(self) -> ProtocolVersion | None:
        """The stream's protocol version; None on the server side until CONNECT's level byte."""
        return self._version

    @property
    def server_side(self) -> bool:
        return self._server_side

    @property
    def max_packet_size(self) -> int:
        return self._max_packet_size

    @property
    def buffered(self) -> int:
        """Bytes held for a packet that has not fully arrived."""
        return len(self._buf)

    def _set_version(self, version: ProtocolVersion) -> None:
        # Called by the CONNECT parser once it has read a valid protocol level.
        self._version = version
        self._table = _first_byte_table(version, True, True)

    def feed(self, data: bytes) -> list[Packet]:
        """Add received bytes; return the packets they complete, in order."""
        if self._error is not None:
            raise self._error
        if type(data) is not bytes:
            data = bytes(data)
        buf = self._buf
        if buf:
            buf += data
            if len(buf) < self._need:
                return []
            data = bytes(buf)
            buf.clear()
        packets: list[Packet] = []
        append = packets.append
        parsers = _PARSERS
        n = len(data)
        pos = need = 0
        max_size = self._max_packet_size
        try:
            while pos < n:
                first = data[pos]
                refusal = self._table[first]
                if refusal is not None:
                    raise ProtocolError(refusal[0], refusal[1], refusal[3], section=refusal[2])
                if pos + 1 >= n:
                    break
                length = data[pos + 1]
                if length < 0x80:
                    header = 2
                else:
                    length, header = self._long_length(data, pos, n)
                    if not header:
                        break
                total = header + length
                if total > max_size:
                    raise self._too_large(total)
                end = pos + total
                if end > n:
                    need = total
                    break
                append(parsers[first >> 4](self, first, data, pos + header, end))
                pos = end
        except ProtocolError as exc:
            exc.packets = tuple(packets)
            self._error = exc
            buf.clear()
            raise
        if pos < n:
            buf += memoryview(data)[pos:]
        self._need = need
        return packets

    def _long_length(self, data: bytes, pos: int, n: int) -> tuple[int, int]:
        """Remaining length of 2-4 bytes at ``data[pos+1:]``: (value, header size), or (0, 0)."""
        value = 0
        shift = 0
        for i in range(1, 5):
            if pos + i >= n:
                return 0, 0
            byte = data[pos + i]
            value |= (byte & 0x7F) << shift
            if byte < 0x80:
                if byte == 0:
                    raise malformed(
                        rule("remaining_length", self._version),
                        "remaining length is not encoded in the minimum number of bytes",
                        section="2.2.3",
                    )
                return value, i + 1
            shift += 7
        raise malformed(
            rule("remaining_length", self._version),
            "remaining length is longer than four bytes",
            section="2.2.3",
        )

    def _too_large(self, total: int) -> ProtocolError:
        if self._version is V5:
            rule_id = "MQTT-3.2.2-15" if self._server_side else "MQTT-3.1.2-24"
        else:
            rule_id = ""
        return ProtocolError(
            ReasonCode.PACKET_TOO_LARGE,
            rule_id,
            f"packet of {total} bytes exceeds the maximum packet size {self._max_packet_size}",
            section="" if rule_id else "2.2.3",
        )
