"""Wire primitives shared by the decoder and encoder (OASIS MQTT 5.0 section 1.5).

Internal module.  Reads go through :class:`Reader`, which bounds every field by
the end of the current packet so that truncated fields become Malformed
Packets instead of ``IndexError``s.  Conformance statement ids that differ
between MQTT 3.1.1 and 5.0 are looked up with :func:`rule`.
"""

from __future__ import annotations

import struct

from .errors import ProtocolError, malformed
from .packets import ProtocolVersion
from .reason_codes import ReasonCode

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5

MAX_VBI = 268_435_455  # largest Variable Byte Integer (section 1.5.5)

_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
pack_u16 = _U16.pack
pack_u32 = _U32.pack
unpack_u16_from = _U16.unpack_from
unpack_u32_from = _U32.unpack_from

# Conformance statements whose number differs between the two specifications:
# key -> (MQTT 3.1.1 id, MQTT 5.0 id).  "" means the spec has no numbered rule.
_RULES: dict[str, tuple[str, str]] = {
    "utf8": ("MQTT-1.5.3-1", "MQTT-1.5.4-1"),
    "utf8_nul": ("MQTT-1.5.3-2", "MQTT-1.5.4-2"),
    "remaining_length": ("", "MQTT-1.5.5-1"),
    "reserved_flags": ("MQTT-2.2.2-2", "MQTT-2.1.3-1"),
    "packet_id_zero": ("MQTT-2.3.1-1", "MQTT-2.2.1-3"),
    "multi_level_wildcard": ("MQTT-4.7.1-2", "MQTT-4.7.1-1"),
    "single_level_wildcard": ("MQTT-4.7.1-3", "MQTT-4.7.1-2"),
    "subscribe_empty": ("MQTT-3.8.3-3", "MQTT-3.8.3-2"),
    "subscribe_options_reserved": ("MQTT-3.8.3-4", "MQTT-3.8.3-5"),
    "connack_flags": ("", "MQTT-3.2.2-1"),
    "connack_session_present": ("MQTT-3.2.2-4", "MQTT-3.2.2-6"),
}


def rule(key: str, version: ProtocolVersion | None) -> str:
    """The conformance statement id for ``key`` in ``version`` (5.0 if unknown)."""
    return _RULES[key][0 if version == V311 else 1]


# ---------------------------------------------------------------- encoding

_VBI_SMALL = [bytes((n,)) for n in range(128)]


def encode_vbi(value: int) -> bytes:
    """A Variable Byte Integer in the minimum number of bytes [MQTT-1.5.5-1]."""
    if value < 128:
        if value < 0:
            raise ValueError(f"variable byte integer {value} is negative")
        return _VBI_SMALL[value]
    if value < 16_384:
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    if value > MAX_VBI:
        raise ValueError(f"variable byte integer {value} exceeds {MAX_VBI} (section 1.5.5)")
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_utf8(text: str) -> bytes:
    """A UTF-8 Encoded String: two-byte length then the bytes (section 1.5.4)."""
    raw = text.encode("utf-8")  # raises UnicodeEncodeError for lone surrogates
    if len(raw) > 65_535:
        raise ValueError(f"string of {len(raw)} bytes exceeds 65535 (section 1.5.4)")
    if "\x00" in text:
        raise ValueError("string contains U+0000 [MQTT-1.5.4-2]")
    return pack_u16(len(raw)) + raw


def encode_binary(data: bytes) -> bytes:
    """Binary Data: two-byte length then the bytes (section 1.5.6)."""
    if len(data) > 65_535:
        raise ValueError(f"binary data of {len(data)} bytes exceeds 65535 (section 1.5.6)")
    return pack_u16(len(data)) + bytes(data)


# ---------------------------------------------------------------- decoding


def decode_utf8(raw: bytes, version: ProtocolVersion | None) -> str:
    """Decode a UTF-8 Encoded String's bytes, enforcing section 1.5.4."""
    try:
        # CPython's strict codec rejects overlong forms and encoded surrogates.
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise malformed(rule("utf8", version), "ill-formed UTF-8 string") from None
    if "\x00" in text:
        raise malformed(rule("utf8_nul", version), "UTF-8 string contains U+0000")
    return text


class Reader:
    """Bounded cursor over one packet's bytes ``data[pos:end]``."""

    __slots__ = ("data", "pos", "end", "version")

    def __init__(self, data: bytes, pos: int, end: int, version: ProtocolVersion | None) -> None:
        self.data = data
        self.pos = pos
        self.end = end
        self.version = version

    def remaining(self) -> int:
        return self.end - self.pos

    def _short(self, what: str) -> ProtocolError:
        return malformed("", f"packet ends inside {what}", section="2.1.4")

    def u8(self, what: str = "a byte") -> int:
        pos = self.pos
        if pos >= self.end:
            raise self._short(what)
        self.pos = pos + 1
        return self.data[pos]

    def u16(self, what: str = "a two byte integer") -> int:
        pos = self.pos
        if pos + 2 > self.end:
            raise self._short(what)
        self.pos = pos + 2
        return (self.data[pos] << 8) | self.data[pos + 1]

    def u32(self, what: str = "a four byte integer") -> int:
        pos = self.pos
        if pos + 4 > self.end:
            raise self._short(what)
        self.pos = pos + 4
        return unpack_u32_from(self.data, pos)[0]

    def vbi(self, what: str = "a variable byte integer") -> int:
        data, pos, end = self.data, self.pos, self.end
        value = 0
        shift = 0
        for i in range(4):
            if pos + i >= end:
                raise self._short(what)
            byte = data[pos + i]
            value |= (byte & 0x7F) << shift
            if not byte & 0x80:
                if byte == 0 and i:
                    raise malformed(
                        "MQTT-1.5.5-1", f"{what} is not encoded in the minimum number of bytes"
                    )
                self.pos = pos + i + 1
                return value
            shift += 7
        raise malformed("", f"{what} is longer than four bytes", section="1.5.5")

    def raw(self, length: int, what: str) -> bytes:
        pos = self.pos
        if pos + length > self.end:
            raise self._short(what)
        self.pos = pos + length
        return self.data[pos : pos + length]

    def binary(self, what: str = "binary data") -> bytes:
        return self.raw(self.u16(what), what)

    def utf8(self, what: str = "a UTF-8 string") -> str:
        return decode_utf8(self.raw(self.u16(what), what), self.version)

    def rest(self) -> bytes:
        data = self.data[self.pos : self.end]
        self.pos = self.end
        return data

    def expect_end(self, what: str) -> None:
        if self.pos != self.end:
            raise malformed(
                "", f"{self.end - self.pos} unexpected bytes after {what}", section="2.1.4"
            )


def packet_id_error(version: ProtocolVersion | None) -> ProtocolError:
    return ProtocolError(
        ReasonCode.PROTOCOL_ERROR, rule("packet_id_zero", version), "packet identifier is 0"
    )
