"""The fuzzer's codec target: valid MQTT 3.1.1/5.0 packets mutated, fed to a decoder in random chunks;
only `ProtocolError` may come out, and what decodes must round-trip (bench/fuzz.py runs it)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from ferry.gateway.mqtt import (
    Auth, Connack, Connect, Decoder, Disconnect, EMPTY_PROPERTIES, Pingreq, Pingresp, Properties, ProtocolError,
    ProtocolVersion, Puback, Pubcomp, Publish, Pubrec, Pubrel, ReasonCode, Suback, Subscribe, Subscription,
    Unsuback, Unsubscribe, Will, encode,
)
from ferry.gateway.mqtt._wire import MAX_VBI, encode_vbi
from ferry.gateway.mqtt.properties import _BIN, _BYTE, _BY_ID, _PAIR, _STR, _U16, _U32, _VBI
from ferry.bench.fuzz_input import FuzzFailure, Source

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5



def _connect_frame(version: ProtocolVersion) -> bytes:
    return encode(Connect("c", version, True, 60), version)


PRIME = {V311: _connect_frame(V311), V5: _connect_frame(V5)}
"""A minimal CONNECT that puts a fresh server-side decoder into the connected state."""

_P_PUB = Properties(payload_format_indicator=1, message_expiry_interval=60, content_type="text/plain",
                    response_topic="r/t", correlation_data=b"\x01\x02", topic_alias=3,
                    user_properties=(("k", "v"), ("k", "w")))
_P_ACK = Properties(reason_string="why", user_properties=(("a", "b"),))
_P_CONNECT = Properties(session_expiry_interval=300, receive_maximum=10, maximum_packet_size=4096,
                        topic_alias_maximum=5, request_problem_information=1, request_response_information=0,
                        user_properties=(("dev", "1"),))
_P_CONNACK = Properties(session_expiry_interval=300, assigned_client_identifier="auto-1", server_keep_alive=30,
                        receive_maximum=100, topic_alias_maximum=64, maximum_qos=1, retain_available=1,
                        maximum_packet_size=1_048_576, wildcard_subscription_available=1,
                        subscription_identifier_available=1, shared_subscription_available=0,
                        reason_string="ok", response_information="ri", server_reference="other")
_P_WILL = Properties(will_delay_interval=5, payload_format_indicator=0, message_expiry_interval=9,
                     content_type="c", response_topic="w/r", correlation_data=b"x")
_P_DISCONNECT = Properties(session_expiry_interval=0, reason_string="bye", user_properties=(("x", "y"),))
_P_AUTH = Properties(authentication_method="SCRAM", authentication_data=b"\x00\x01", reason_string="r")


def _client_packets(version: ProtocolVersion) -> list:
    """One or more packets of every type a client sends after CONNECT."""
    v5 = version is V5
    pp = _P_PUB if v5 else EMPTY_PROPERTIES
    packets: list = [
        Publish("ferry/site/dev/telemetry", b'{"t":21.5}', 0),
        Publish("a/b", b"x" * 130, 1, retain=True, packet_id=1, properties=pp),
        Publish("a", b"", 2, dup=True, packet_id=65535),
        Puback(7), Pubrec(8), Pubrel(9), Pubcomp(10),
        Subscribe(11, (Subscription("a/+/c", 1), Subscription("#", 0), Subscription("$share/g/x/#", 2))),
        Unsubscribe(12, ("a/+/c", "#")),
        Pingreq(),
        Disconnect(),
    ]
    if v5:
        packets += [
            Publish("", b"aliased", 1, packet_id=2, properties=Properties(topic_alias=3)),
            Puback(7, ReasonCode.NO_MATCHING_SUBSCRIBERS, _P_ACK), Pubrec(8, ReasonCode.QUOTA_EXCEEDED),
            Pubrel(9, ReasonCode.PACKET_IDENTIFIER_NOT_FOUND, _P_ACK), Pubcomp(10, properties=_P_ACK),
            Subscribe(13, (Subscription("a/#", 2, no_local=True, retain_as_published=True, retain_handling=2),),
                      Properties(subscription_identifiers=(77,), user_properties=(("s", "1"),))),
            Unsubscribe(14, ("x",), Properties(user_properties=(("u", "2"),))),
            Disconnect(ReasonCode.DISCONNECT_WITH_WILL_MESSAGE, _P_DISCONNECT),
            Auth(ReasonCode.CONTINUE_AUTHENTICATION, _P_AUTH),
        ]
    return packets


def _server_packets(version: ProtocolVersion) -> list:
    v5 = version is V5
    packets: list = [
        Connack(True, ReasonCode.SUCCESS, _P_CONNACK if v5 else EMPTY_PROPERTIES),
        Connack(False, ReasonCode.NOT_AUTHORIZED),
        Publish("a/b", b"payload", 1, packet_id=3,
                properties=Properties(subscription_identifiers=(1, 300, MAX_VBI)) if v5 else EMPTY_PROPERTIES),
        Publish("t", b"", 0, retain=True),
        Puback(1), Pubrec(2), Pubrel(3), Pubcomp(4),
        Suback(5, (ReasonCode.GRANTED_QOS_0, ReasonCode.GRANTED_QOS_2, ReasonCode.UNSPECIFIED_ERROR)),
        Unsuback(6, (ReasonCode.SUCCESS, ReasonCode.NO_SUBSCRIPTION_EXISTED) if v5 else ()),
        Pingresp(),
    ]
    if v5:
        packets += [
            Suback(7, (ReasonCode.TOPIC_FILTER_INVALID,), _P_ACK),
            Unsuback(8, (ReasonCode.SUCCESS,), _P_ACK),
            Puback(9, ReasonCode.UNSPECIFIED_ERROR, _P_ACK),
            Disconnect(ReasonCode.SERVER_SHUTTING_DOWN, Properties(reason_string="bye", server_reference="s")),
            Auth(ReasonCode.RE_AUTHENTICATE, _P_AUTH),
        ]
    return packets


def _connects(version: ProtocolVersion) -> list[Connect]:
    v5 = version is V5
    return [
        Connect("", version, True, 0),
        Connect("dev-1", version, False, 60, "user", b"secret",
                Will("ferry/dev-1/status", b"offline", 1, True, _P_WILL if v5 else EMPTY_PROPERTIES),
                _P_CONNECT if v5 else EMPTY_PROPERTIES),
        Connect("d", version, True, 30, None if v5 else "u", b"pw" if v5 else None,
                properties=Properties(authentication_method="SCRAM", authentication_data=b"1") if v5
                else EMPTY_PROPERTIES),
    ]


@dataclass(frozen=True)
class Seed:
    """A valid stream for one kind of decoder, as a list of whole packets (frames)."""

    side: str
    """``server`` (a server-side decoder, the stream starts with CONNECT), ``client-v311``, ``client-v5``."""
    frames: tuple[bytes, ...]


def codec_corpus() -> list[Seed]:
    """Valid streams with packets of every type, both directions, both protocol versions."""
    seeds = []
    for version in (V311, V5):
        connects = [encode(c, version) for c in _connects(version)]
        client = [encode(p, version) for p in _client_packets(version)]
        for i, frame in enumerate(client):
            seeds.append(Seed("server", (connects[i % len(connects)], frame)))
        seeds.append(Seed("server", (connects[1], *client)))
        for frame in connects:
            seeds.append(Seed("server", (frame,)))
        side = "client-v5" if version is V5 else "client-v311"
        server = [encode(p, version) for p in _server_packets(version)]
        seeds.extend(Seed(side, (frame,)) for frame in server)
        seeds.append(Seed(side, tuple(server)))
    return seeds


def _split_frame(frame: bytes) -> tuple[int, bytes]:
    """(first byte, body) of a frame; a frame whose length was mutated before: all after its first byte."""
    for i in range(1, min(5, len(frame))):
        if frame[i] < 0x80:
            return frame[0], frame[i + 1:]
    return frame[0], frame[1:]


def make_frame(first: int, body: bytes) -> bytes:
    return bytes((first,)) + encode_vbi(len(body)) + body


def _property_offset(first: int, body: bytes) -> int | None:
    """Where the property section of a v5 packet starts in its body, or None if it has none."""
    ptype = first >> 4
    if ptype == 1:
        return 10
    if ptype == 2:
        return 2
    if ptype == 3:
        if len(body) < 2:
            return None
        return 2 + ((body[0] << 8) | body[1]) + (2 if first & 0x06 else 0)
    if 4 <= ptype <= 7:
        return 3 if len(body) > 3 else None
    if 8 <= ptype <= 11:
        return 2
    if ptype in (14, 15):
        return 1 if len(body) > 1 else None
    return None


def _read_vbi(data: bytes, pos: int) -> tuple[int, int]:
    value, shift = 0, 0
    for i in range(4):
        byte = data[pos + i]
        value |= (byte & 0x7F) << shift
        if byte < 0x80:
            return value, pos + i + 1
        shift += 7
    raise ValueError("bad vbi")


def _property_items(section: bytes) -> list[bytes]:
    """Split a property section's body into its properties (each identifier + value)."""
    items, pos = [], 0
    while pos < len(section):
        start = pos
        ident, pos = _read_vbi(section, pos)
        kind = _BY_ID[ident][1]
        if kind == _BYTE:
            pos += 1
        elif kind == _U16:
            pos += 2
        elif kind == _U32:
            pos += 4
        elif kind == _VBI:
            pos = _read_vbi(section, pos)[1]
        elif kind in (_STR, _BIN):
            pos += 2 + ((section[pos] << 8) | section[pos + 1])
        elif kind == _PAIR:
            for _ in range(2):
                pos += 2 + ((section[pos] << 8) | section[pos + 1])
        items.append(section[start:pos])
    return items


def duplicate_property(frame: bytes, src: Source) -> bytes | None:
    """The v5 frame with one of its properties repeated (section 2.2.2.2: most may appear once)."""
    try:
        first, body = _split_frame(frame)
        offset = _property_offset(first, body)
        if offset is None or offset >= len(body):
            return None
        length, start = _read_vbi(body, offset)
        end = start + length
        items = _property_items(body[start:end])
    except (IndexError, KeyError, ValueError):
        return None
    if not items:
        return None
    copy = src.choice(items)
    items.insert(src.int(0, len(items)), copy)
    section = b"".join(items)
    return make_frame(first, body[:offset] + encode_vbi(len(section)) + section + body[end:])


def edit_remaining_length(frame: bytes, src: Source) -> bytes:
    """The frame with a wrong, non-minimal, overlong or huge remaining length."""
    first, body = _split_frame(frame)
    n = len(body)
    how = src.int(0, 6)
    if how == 0:
        header = encode_vbi(max(0, n + src.int(-3, 3)))
    elif how == 1:  # not the minimum number of bytes [MQTT-1.5.5-1]
        small = encode_vbi(n)
        header = bytes(b | 0x80 for b in small) + b"\x00"
    elif how == 2:  # five bytes
        header = b"\xff\xff\xff\xff" + bytes((src.int(0, 0x7F),))
    elif how == 3:
        header = encode_vbi(MAX_VBI)
    elif how == 4:
        header = encode_vbi(src.int(0, 1 << src.int(1, 28)) % (MAX_VBI + 1))
    elif how == 5:
        header = bytes((src.int(0x80, 0xFF),))  # a continuation byte with nothing after it
    else:
        header = encode_vbi(0)
    return bytes((first,)) + header + body


_INTERESTING = (0x00, 0x01, 0x02, 0x7F, 0x80, 0x81, 0xC0, 0xFE, 0xFF)


@dataclass(frozen=True)
class CodecInput:
    side: str
    data: bytes
    cuts: tuple[int, ...] = ()
    """Chunk boundaries for the split feed (positions in ``data``)."""
    max_packet_size: int = MAX_VBI

    def reproducer(self) -> str:
        return ("from ferry.bench.fuzz_codec import CodecInput, check_codec\n"
                f"check_codec(CodecInput(side={self.side!r}, max_packet_size={self.max_packet_size},\n"
                f"    cuts={self.cuts!r},\n    data=bytes.fromhex({self.data.hex()!r})))\n")


def make_codec_input(src: Source, corpus: Sequence[Seed]) -> CodecInput:
    """One input: random bytes, or a corpus stream mutated at packet level and then at byte level."""
    if src.chance(0.08):
        side = src.choice(("server", "client-v311", "client-v5"))
        prefix = PRIME[V5 if src.chance(0.5) else V311] if side == "server" and src.chance(0.7) else b""
        data = prefix + src.bytes(src.int(0, 64))
    else:
        seed = src.choice(corpus)
        side = seed.side
        frames = list(seed.frames)
        for _ in range(src.int(0, 2)):
            frames = _mutate_frames(frames, src, corpus)
        data = b"".join(frames)
        for _ in range(src.int(0 if len(frames) > 1 else 1, 3)):
            data = _mutate_bytes(bytearray(data), src, corpus)
    cuts: tuple[int, ...] = ()
    if data:
        if src.chance(0.05):
            cuts = tuple(range(1, len(data)))
        else:
            cuts = tuple(sorted({src.int(0, len(data)) for _ in range(src.int(0, 6))}))
    max_size = MAX_VBI
    if src.chance(0.1):
        max_size = src.int(2, 300)
    return CodecInput(side, bytes(data), cuts, max_size)


def _mutate_frames(frames: list[bytes], src: Source, corpus: Sequence[Seed]) -> list[bytes]:
    i = src.int(0, len(frames) - 1)
    op = src.int(0, 5)
    if op == 0:
        frames[i] = edit_remaining_length(frames[i], src)
    elif op == 1:
        dup = duplicate_property(frames[i], src)
        if dup is not None:
            frames[i] = dup
    elif op == 2:  # splice a packet of another stream in
        other = src.choice(corpus).frames
        frames.insert(src.int(1 if len(frames) > 1 else 0, len(frames)), src.choice(other))
    elif op == 3 and len(frames) > 1:
        del frames[i]
    elif op == 4:
        frames.insert(i, frames[i])
    else:  # the same body under another first byte: type and flag confusion
        frames[i] = bytes((src.int(0, 255),)) + frames[i][1:]
    return frames


def _mutate_bytes(buf: bytearray, src: Source, corpus: Sequence[Seed]) -> bytearray:
    if not buf:
        return bytearray(src.bytes(src.int(1, 8)))
    i = src.int(0, len(buf) - 1)
    op = src.int(0, 7)
    if op == 0:
        buf[i] ^= 1 << src.int(0, 7)
    elif op == 1:
        buf[i] = src.choice(_INTERESTING)
    elif op == 2:
        buf[i] = src.int(0, 255)
    elif op == 3:
        del buf[i:]
    elif op == 4:
        del buf[i : i + src.int(1, 8)]
    elif op == 5:
        buf[i:i] = src.bytes(src.int(1, 8))
    elif op == 6:  # splice: the tail of another stream
        other = b"".join(src.choice(corpus).frames)
        j = src.int(0, len(other))
        buf[i:] = other[j:]
    else:  # a two-byte length field made huge or zero
        if i + 1 < len(buf):
            buf[i : i + 2] = src.choice((b"\xff\xff", b"\x00\x00", b"\x00\x01", b"\x80\x00"))
    return buf


def _decoder(inp: CodecInput) -> Decoder:
    if inp.side == "server":
        return Decoder(server_side=True, max_packet_size=inp.max_packet_size)
    version = V5 if inp.side == "client-v5" else V311
    return Decoder(server_side=False, max_packet_size=inp.max_packet_size, protocol_version=version)


def _feed(decoder: Decoder, chunks: Iterator[bytes]) -> tuple[list, ProtocolError | None]:
    packets: list = []
    for chunk in chunks:
        try:
            packets += decoder.feed(chunk)
        except ProtocolError as error:
            if not isinstance(error.reason_code, ReasonCode) or not (error.rule or error.section):
                raise FuzzFailure(f"ProtocolError without a reason code or a citation: {error!r}") from None
            if not isinstance(error.packets, tuple):
                raise FuzzFailure(f"ProtocolError.packets is {type(error.packets).__name__}, not a tuple")
            try:
                decoder.feed(b"\x00")
            except ProtocolError as again:
                if again is not error:
                    raise FuzzFailure("a second feed after an error raised a different error") from None
            else:
                raise FuzzFailure("the decoder accepted bytes after a ProtocolError")
            return packets + list(error.packets), error
    return packets, None


def check_codec(inp: CodecInput) -> list:
    """Decode ``inp`` whole and in chunks; raise on anything but a ProtocolError or a broken property.

    Returns the decoded packets.
    """
    data = inp.data
    whole = _decoder(inp)
    packets, error = _feed(whole, iter((data,)))
    split = _decoder(inp)
    bounds = (0, *inp.cuts, len(data))
    split_packets, split_error = _feed(split, (data[a:b] for a, b in zip(bounds, bounds[1:])))
    if split_packets != packets:
        raise FuzzFailure(f"chunked decode differs from whole decode: {split_packets!r} != {packets!r}")
    if (error is None) != (split_error is None) or (
            error is not None and (error.reason_code, error.rule) != (split_error.reason_code, split_error.rule)):
        raise FuzzFailure(f"chunked decode ends with {split_error!r}, whole decode with {error!r}")
    if error is None and whole.buffered != split.buffered:
        raise FuzzFailure(f"buffered {split.buffered} bytes after a chunked decode, {whole.buffered} after whole")
    version = whole.protocol_version
    for packet in packets:
        check_round_trip(packet, version, inp.side == "server")
    return packets


def check_round_trip(packet, version: ProtocolVersion, server_side: bool) -> None:
    """A decoded packet encodes, and those bytes decode to an equal packet."""
    try:
        data = encode(packet, version)
    except (ValueError, UnicodeEncodeError) as exc:
        raise FuzzFailure(f"decoded {packet!r} does not encode again ({version!r}): {exc}") from None
    if server_side:
        decoder = Decoder(server_side=True)
        if type(packet) is not Connect:
            decoder.feed(PRIME[version])
    else:
        decoder = Decoder(server_side=False, protocol_version=version)
    try:
        again = decoder.feed(data)
    except ProtocolError as exc:
        raise FuzzFailure(f"re-encoded {packet!r} does not decode: {exc} (bytes {data.hex()})") from None
    if again != [packet]:
        raise FuzzFailure(f"round trip changed the packet: {packet!r} -> {data.hex()} -> {again!r}")


_CORPUS: list[Seed] | None = None


def corpus() -> list[Seed]:
    """The seed corpus, built once per process."""
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = codec_corpus()
    return _CORPUS
