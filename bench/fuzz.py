"""`ferry bench fuzz`: fuzz the MQTT codec and the broker core, for the test suite and for long runs.

Two targets, each a pure function of its input that raises on a defect:

* ``codec``: bytes (random, or valid packets of every type for MQTT 3.1.1 and 5.0 mutated by bit
  flips, truncation, splicing, remaining-length edits and property duplication) fed to a
  server-side or client-side :class:`~ferry.gateway.mqtt.Decoder` in random chunks. Only
  :class:`~ferry.gateway.mqtt.ProtocolError` may come out; the same bytes in one chunk and in
  random chunks give the same packets and the same error; every decoded packet re-encodes and
  decodes to an equal packet.
* ``core``: a sequence of steps for the broker core (:class:`~ferry.gateway.broker.core.Broker`):
  bytes from several connections (CONNECT or not, PUBLISH/SUBSCRIBE/UNSUBSCRIBE/acks/PINGREQ/
  DISCONNECT/AUTH with random topics, wildcards, ``$SYS``, QoS 0-2, packet ids and v5 properties)
  decoded as the network layer does, journal batches sealed and committed, time advancing with
  ``tick``, connections lost, and restarts from the committed records. After every step the
  invariants in :meth:`CoreRun.check` must hold.

Inputs come from a :class:`Source` of choices, so one generator serves three engines: ``random``
(seeded, fast, the default), ``hypothesis`` (shrinks a failure to a small one) and ``atheris``
(coverage-guided, when the ``atheris`` package is importable). A failure is reported with a
reproducer: the bytes in hex and the chunk cuts for the codec, the step list (wire bytes per
connection, with the decoded packets) for the core.
"""

from __future__ import annotations

import argparse
import contextlib
import itertools
import logging
import random
import sys
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field

from ferry.gateway.broker.config import BrokerConfig
from ferry.gateway.broker.core import Broker
from ferry.gateway.broker.session import Connection, Delivery, DeliveryState
from ferry.gateway.mqtt import (
    EMPTY_PROPERTIES, Auth, Connack, Connect, Decoder, Disconnect, Pingreq, Pingresp, Properties,
    ProtocolError, ProtocolVersion, Puback, Pubcomp, Publish, Pubrec, Pubrel, ReasonCode, Suback,
    Subscribe, Subscription, Unsuback, Unsubscribe, Will, encode, encode_properties, encode_publish,
)
from ferry.gateway.mqtt._wire import MAX_VBI, encode_vbi
from ferry.gateway.mqtt.properties import _BY_ID, _BIN, _BYTE, _PAIR, _STR, _U16, _U32, _VBI

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
TARGETS = ("codec", "core")
ENGINES = ("random", "hypothesis", "atheris")


# ====================================================================== sources of choices


class Source:
    """Where a generator's choices come from; every engine provides one."""

    def int(self, lo: int, hi: int) -> int:
        raise NotImplementedError

    def bytes(self, n: int) -> bytes:
        raise NotImplementedError

    def chance(self, p: float) -> bool:
        """True with probability about ``p``; engines that shrink shrink towards False."""
        raise NotImplementedError

    def choice(self, seq: Sequence):
        return seq[self.int(0, len(seq) - 1)]


class RandomSource(Source):
    __slots__ = ("rng",)

    def __init__(self, rng: random.Random) -> None:
        self.rng = rng

    def int(self, lo: int, hi: int) -> int:
        return self.rng.randint(lo, hi)

    def bytes(self, n: int) -> bytes:
        return self.rng.randbytes(n)

    def chance(self, p: float) -> bool:
        return self.rng.random() < p

    def choice(self, seq: Sequence):
        return self.rng.choice(seq)


class HypothesisSource(Source):
    """Choices drawn from a Hypothesis ``st.data()`` object, so failures shrink."""

    def __init__(self, data) -> None:  # data: hypothesis.strategies.DataObject
        from hypothesis import strategies as st

        self.data = data
        self._st = st

    def int(self, lo: int, hi: int) -> int:
        return self.data.draw(self._st.integers(lo, hi))

    def bytes(self, n: int) -> bytes:
        return self.data.draw(self._st.binary(min_size=n, max_size=n))

    def chance(self, p: float) -> bool:
        return self.data.draw(self._st.integers(0, 999)) >= round((1.0 - p) * 1000)


class ProviderSource(Source):
    """Choices from atheris's ``FuzzedDataProvider``; an exhausted provider gives zeros."""

    def __init__(self, provider) -> None:
        self.fdp = provider

    def int(self, lo: int, hi: int) -> int:
        return self.fdp.ConsumeIntInRange(lo, hi)

    def bytes(self, n: int) -> bytes:
        data = self.fdp.ConsumeBytes(n)
        return data + bytes(n - len(data))

    def chance(self, p: float) -> bool:
        return self.fdp.ConsumeProbability() < p


# ====================================================================== failures


class FuzzFailure(AssertionError):
    """A property of a target does not hold (as opposed to an unexpected exception).

    ``kind`` names the property, so that a known defect can be tolerated by kind (see
    :data:`KNOWN_CORE_DEFECTS`) while every other failure still fails the run.
    """

    def __init__(self, message: str, kind: str = "property") -> None:
        super().__init__(f"[{kind}] {message}")
        self.kind = kind


@dataclass
class Crash:
    """One failing input: what went wrong and how to run it again."""

    target: str
    index: int
    error: str
    """The exception's type and message."""
    trace: str
    reproducer: str

    @property
    def signature(self) -> str:
        """Same defect, same signature: the property that failed, or the exception and where it was raised."""
        if self.error.startswith("FuzzFailure: ["):
            return "FuzzFailure" + self.error.split(" ", 1)[1].split("]", 1)[0] + "]"
        where = ""
        for line in self.trace.splitlines():
            if line.strip().startswith("File "):
                where = line.strip()
        return f"{self.error.split(':', 1)[0]} @ {where}"

    def render(self) -> str:
        return (f"--- {self.target} crash at input #{self.index}: {self.error}\n{self.trace.rstrip()}\n"
                f"reproducer:\n{self.reproducer.rstrip()}\n")


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


# ====================================================================== codec target


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


def _frame(first: int, body: bytes) -> bytes:
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
    return _frame(first, body[:offset] + encode_vbi(len(section)) + section + body[end:])


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
        return ("from ferry.bench.fuzz import CodecInput, check_codec\n"
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


# ====================================================================== core target


class ModelJournal:
    """The journal as the core sees it, with batches sealed and committed when a step says so.

    Like the real one: appends go to ``pending_batch`` and return its number; ``seal`` hands that
    batch to the writer (a new pending batch starts), batches commit in order. Several may be sealed
    and not committed. ``arm`` models the writer thread sealing by itself (a flush asked for while it
    wrote): the next append's batch is sealed right after that append, in the middle of whatever
    the core is doing.
    """

    def __init__(self) -> None:
        self.records: list[tuple[int, object]] = []
        self.pending_batch = 1
        self.committed_batch = 0
        self.sealed: deque[int] = deque()
        self.armed = False

    def append(self, record: object) -> int:
        batch = self.pending_batch
        self.records.append((batch, record))
        if self.armed:
            self.armed = False
            self.seal()
        return batch

    def seal(self) -> None:
        if self.records and self.records[-1][0] == self.pending_batch:
            self.sealed.append(self.pending_batch)
            self.pending_batch += 1

    def commit(self) -> int | None:
        """Commit the oldest sealed batch; its number, or None when none is sealed."""
        if not self.sealed:
            return None
        self.committed_batch = self.sealed.popleft()
        return self.committed_batch

    def committed_records(self) -> Iterator[object]:
        return (record for batch, record in self.records if batch <= self.committed_batch)


_DELIVERY_RECORDS = frozenset({"MessageAdded", "Enqueued", "InflightAssigned", "Dequeued"})
"""What deliveries append: a SUBACK goes out before the retained messages it brings are queued, a
CONNACK before the session's queue starts to flow, so neither waits for these."""


def _ack_wait(kind: type, appended: list[tuple[int, object]]) -> int:
    """The batch an acknowledgement of a `kind` packet must wait for, given the records (batch,
    record) that handling it appended: the last one it covers (0: none)."""
    if kind in (Subscribe, Connect):
        appended = [(batch, record) for batch, record in appended
                    if type(record).__name__ not in _DELIVERY_RECORDS]
    return appended[-1][0] if appended else 0


_ACK_FOR = {Publish: None, Pubrel: Pubcomp, Subscribe: Suback, Unsubscribe: Unsuback, Connect: Connack,
            Pubrec: Pubrel}


@dataclass
class Slot:
    """One simulated client connection (a slot is reused after its connection is gone)."""

    conn: Connection
    decoder: Decoder
    out_decoder: Decoder | None = None
    expect: list[tuple[type, int | None, int, str | None]] = field(default_factory=list)
    """Acknowledgements owed: (packet type, packet id, batch that must commit first, message tag)."""
    connected: bool = False
    version: ProtocolVersion = V311
    seen_ids: list[int] = field(default_factory=list)
    """Packet ids of QoS 1/2 PUBLISHes and PUBRELs the broker sent here (for realistic acks)."""
    seen_qos2: list[int] = field(default_factory=list)
    closing_flushed: bool = False
    """The core had marked the connection closing when its output was last taken: the network layer
    has written it and half-closed the socket (`write_eof`), so nothing more can be sent."""


KNOWN_CORE_DEFECTS: frozenset[str] = frozenset()
"""Failure kinds of the core target that are reported and not fixed yet: the in-suite run tolerates
them (counting them), ``ferry bench fuzz`` reports them. Each has an xfail test with its reproducer
in tests/bench/test_fuzz.py; remove the kind here when its fix lands."""


class CoreRun:
    """A broker core with a model journal, driven by steps; :meth:`check` holds after each step.

    Steps (tuples, printable and replayable): ``("open", slot)``, ``("send", slot, bytes)``,
    ``("seal",)``, ``("arm",)``, ``("commit",)``, ``("tick", seconds)``, ``("lost", slot)``,
    ``("blocked", slot, bool)``, ``("restart",)``.

    Invariants (the failure kinds): no exception from the core; ``ack-before-commit``: no PUBACK,
    PUBREC, PUBREL, PUBCOMP, SUBACK, UNSUBACK or CONNACK goes out before the batch holding the
    records its packet caused has committed; ``inflight-over-limit``: a session never has more
    deliveries in flight than its connection's limit (``resume-over-receive-maximum`` when the excess
    was already in flight when the client reconnected with a smaller Receive Maximum);
    ``closed-connection-output``: nothing is queued for, or handed to the network layer for, a
    connection after ``connection_lost``; ``output-after-close``: nor after the core marked it closing
    and its output was taken (the network layer half-closes it then); ``session-on-closed-connection``; ``undecodable-output``;
    ``publish-too-large`` (over the client's Maximum Packet Size); ``stuck-ack``: nothing held for a
    commit waits for a batch that holds no record (nothing would ever seal it); ``dangling-record``: every record
    the core appends refers to a session and message the store has; ``restart-lost-acked``: after a
    restart from the committed records, every QoS 1/2 message whose PUBACK/PUBREC was released and
    that a persistent session still held is still held.
    """

    SLOTS = 4

    def __init__(self, config: BrokerConfig | None = None, tolerate: frozenset[str] = frozenset()) -> None:
        from ferry.gateway.store.state import DurableState

        self.config = config or BrokerConfig(max_inflight_messages=3, max_queued_messages=6, receive_maximum=4,
                                             topic_alias_maximum=4, max_packet_size_bytes=400,
                                             max_keepalive_s=120)
        self.tolerate = tolerate
        self.tolerated: dict[str, int] = {}
        self.now = 1000.0
        self.journal = ModelJournal()
        self._ids = itertools.count(1)
        self.broker = self._new_broker()
        self.slots: list[Slot | None] = [None] * self.SLOTS
        self.steps: list[tuple] = []
        self.acked_tags: set[str] = set()
        """Payloads of QoS 1/2 publishes whose PUBACK/PUBREC the broker released to the publisher."""
        self.restarts = 0
        self._store = DurableState()
        """Every record appended so far (committed or not), to catch records that refer to nothing."""
        self._applied = 0
        self._routed: dict[str, set[Delivery]] = {}
        """Message tag -> the deliveries its PUBLISH made (what sessions held right after it was handled)."""
        self._resumed_inflight: dict[int, int] = {}
        """Connection id -> deliveries its session had in flight when the connection attached to it."""

    def _new_broker(self) -> Broker:
        return Broker(self.config, self.journal, now=self.now, wall=1_700_000_000.0,
                      new_client_id=lambda: f"auto-{next(self._ids)}")

    def fail(self, kind: str, message: str) -> None:
        """A violated invariant: raise, unless ``kind`` is tolerated (then count it)."""
        if kind in self.tolerate:
            self.tolerated[kind] = self.tolerated.get(kind, 0) + 1
            return
        raise FuzzFailure(message, kind)

    # ------------------------------------------------------------ steps

    def apply(self, step: tuple) -> None:
        self.steps.append(step)
        kind = step[0]
        if kind == "open":
            self._open(step[1])
        elif kind == "send":
            self._send(step[1], step[2])
        elif kind == "seal":
            self.journal.seal()
        elif kind == "arm":
            self.journal.armed = True
        elif kind == "commit":
            batch = self.journal.commit()
            if batch is not None:
                self.broker.commit_done(batch)
        elif kind == "tick":
            self.now += step[1]
            self.broker.tick(self.now)
        elif kind == "lost":
            slot = self.slots[step[1]]
            if slot is not None:
                self.broker.connection_lost(slot.conn, self.now)
        elif kind == "blocked":
            slot = self.slots[step[1]]
            if slot is not None:
                slot.conn.output_blocked = step[2]
        elif kind == "restart":
            self._restart()
        else:
            raise ValueError(f"unknown step {step!r}")
        self._drain()
        self.check()

    def _open(self, i: int) -> None:
        old = self.slots[i]
        if old is not None and not old.conn.closed:
            self.broker.connection_lost(old.conn, self.now)
        conn = self.broker.open_connection(f"127.0.0.1:{10000 + i}", self.now)
        self.slots[i] = Slot(conn, Decoder(server_side=True, max_packet_size=self.config.max_packet_size_bytes))

    def _send(self, i: int, data: bytes) -> None:
        """As the network layer's `data_received`: decode, hand packets to the core, or the error."""
        slot = self.slots[i]
        if slot is None or slot.conn.closed or slot.conn.close_reason is not None:
            return
        broker, journal = self.broker, self.journal
        try:
            packets = slot.decoder.feed(data)
            error = None
        except ProtocolError as exc:
            packets, error = list(exc.packets), exc
        for packet in packets:
            before = len(journal.records)
            broker.handle_packet(slot.conn, packet, self.now)
            if type(packet) is Connect:
                slot.version = packet.protocol_version
                session = slot.conn.session
                if session is not None:
                    self._resumed_inflight[slot.conn.conn_id] = len(session.inflight)
            ack = _ACK_FOR.get(type(packet))
            if type(packet) is Publish and packet.qos:
                ack = Puback if packet.qos == 1 else Pubrec
            elif type(packet) is Pubrec and packet.reason_code >= 0x80:
                ack = None  # a refused delivery ends without a PUBREL
            if ack is not None:
                wait = _ack_wait(type(packet), journal.records[before:])
                packet_id = getattr(packet, "packet_id", None)
                tag = None
                if type(packet) is Publish and packet.payload:
                    tag = packet.payload.decode("latin-1")
                    self._routed.setdefault(tag, set()).update(self._holders(tag))
                slot.expect.append((ack, packet_id, wait, tag))
        if error is not None:
            broker.protocol_error(slot.conn, error, slot.decoder.protocol_version)

    def _holders(self, tag: str) -> Iterator[Delivery]:
        """The deliveries of the message with this payload that sessions hold now."""
        payload = tag.encode("latin-1")
        for session in self.broker.sessions.values():
            for item in (*session.inflight.values(), *session.queue):
                if item.qos and item.message.payload == payload:
                    yield item

    def _restart(self) -> None:
        """A crash: uncommitted batches are lost; a new core restores from the committed records."""
        from ferry.gateway.broker.recovery import restore
        from ferry.gateway.store.state import DurableState

        old = self.broker
        must_keep: dict[str, set[str]] = {}
        for session in old.sessions.values():
            if not session.persistent:
                continue
            # Only deliveries that the acknowledged PUBLISH itself made: the same retained message
            # delivered again later, for a subscription whose SUBACK never went out, may be lost with it.
            must_keep[session.client_id] = {
                tag for item in (*session.inflight.values(), *session.queue)
                if item.qos and item.state is not DeliveryState.PUBREL_SENT and item.message.expiry_at is None
                and (tag := item.message.payload.decode("latin-1")) in self.acked_tags
                and item in self._routed.get(tag, ())}
        state = DurableState()
        for record in self.journal.committed_records():
            state.apply(record)
        state.collect_garbage()
        self.journal.records = [(b, r) for b, r in self.journal.records if b <= self.journal.committed_batch]
        self.journal.sealed.clear()
        self.journal.armed = False
        self.journal.pending_batch = self.journal.committed_batch + 1
        self._store, self._applied = DurableState(), 0
        for _, record in self.journal.records:
            self._store.apply(record)
        self._store.dangling_references = 0  # counted when they were appended
        self._applied = len(self.journal.records)
        self.broker = self._new_broker()
        restore(self.broker, state, self.now)
        self.slots = [None] * self.SLOTS
        self.restarts += 1
        for client_id, tags in must_keep.items():
            session = self.broker.sessions.get(client_id)
            kept = set() if session is None else {
                item.message.payload.decode("latin-1") for item in (*session.inflight.values(), *session.queue)}
            lost = tags - kept
            if lost:
                self.fail("restart-lost-acked",
                          f"restart lost acknowledged messages {sorted(lost)} of session {client_id!r}")

    # ------------------------------------------------------------ output and invariants

    def _drain(self) -> None:
        ready = self.broker.take_ready()
        for i, slot in enumerate(self.slots):
            if slot is None:
                continue
            conn = slot.conn
            if conn.closed:
                if conn in ready:
                    self.fail("closed-connection-output",
                              f"slot {i}: a closed connection was handed to the network layer to write")
                if conn.out:
                    self.fail("closed-connection-output",
                              f"slot {i}: {len(conn.out)} bytes queued for a closed connection")
                    conn.out.clear()
                continue
            if not conn.out:
                slot.closing_flushed = conn.close_reason is not None and not conn.held
                continue
            if slot.closing_flushed:
                self.fail("output-after-close", f"slot {i}: {len(conn.out)} bytes queued after the connection was "
                          f"closed with {conn.close_reason!r} and its last output written (the network layer has "
                          "called write_eof(): writing more raises RuntimeError in its flush)")
            slot.closing_flushed = conn.close_reason is not None and not conn.held
            data = bytes(conn.out)
            conn.out.clear()
            if slot.out_decoder is None:
                slot.out_decoder = Decoder(server_side=False, protocol_version=conn.protocol_version)
            try:
                packets = slot.out_decoder.feed(data)
            except ProtocolError as exc:
                raise FuzzFailure(f"slot {i}: the broker sent bytes its peer cannot decode: {exc}; "
                                  f"{data.hex()}", "undecodable-output") from None
            for packet in packets:
                self._check_output(i, slot, packet)

    def _check_output(self, i: int, slot: Slot, packet) -> None:
        conn = slot.conn
        kind = type(packet)
        if kind is Publish:
            size = len(encode(packet, conn.protocol_version))
            if size > conn.max_packet_size:
                self.fail("publish-too-large", f"slot {i}: {size}-byte PUBLISH to a client whose maximum "
                                               f"packet size is {conn.max_packet_size} [MQTT-3.1.2-24]")
            if packet.qos:
                slot.seen_ids.append(packet.packet_id)
                if packet.qos == 2:
                    slot.seen_qos2.append(packet.packet_id)
        elif kind is Pubrel:
            slot.seen_qos2.append(packet.packet_id)
        if kind not in (Puback, Pubrec, Pubcomp, Suback, Unsuback, Connack, Pubrel):
            return
        packet_id = getattr(packet, "packet_id", None)
        for n, (ack, expected_id, wait, tag) in enumerate(slot.expect):
            if ack is kind and expected_id == packet_id:
                del slot.expect[n]
                if wait > self.journal.committed_batch:
                    self.fail("ack-before-commit",
                              f"slot {i}: {packet!r} sent before batch {wait} committed (committed: "
                              f"{self.journal.committed_batch}): acknowledged before it is durable")
                if tag is not None and packet.reason_code < 0x80:
                    self.acked_tags.add(tag)
                return

    def check(self) -> None:
        broker = self.broker
        records = self.journal.records
        store = self._store
        while self._applied < len(records):
            record = records[self._applied][1]
            self._applied += 1
            dangling = store.dangling_references
            store.apply(record)
            if store.dangling_references != dangling:
                self.fail("dangling-record", f"the core appended {record!r}, which refers to a session, message "
                                             "or packet id the store does not have")
        for conn in broker.connections.values():
            if conn.closed:
                self.fail("closed-connection-output", f"closed connection {conn.conn_id} is still in "
                                                      "broker.connections")
            pending = self.journal.pending_batch
            if conn.held and conn.held[-1][0] >= pending and not (records and records[-1][0] == pending):
                self.fail("stuck-ack", f"connection {conn.conn_id} holds output for batch {conn.held[-1][0]}, "
                          f"which has no record: nothing will seal it (pending batch {pending})")
        for session in broker.sessions.values():
            conn = session.connection
            if conn is None:
                continue
            if conn.closed:
                self.fail("session-on-closed-connection", f"session {session.client_id!r} is attached to a "
                          f"closed connection {conn.conn_id}: its deliveries would vanish")
            if conn.session is not session:
                self.fail("session-on-closed-connection",
                          f"session {session.client_id!r} and its connection disagree")
            inflight = len(session.inflight) - len(session.unsent)  # sent on this connection
            if inflight > conn.inflight_limit:
                if inflight <= self._resumed_inflight.get(conn.conn_id, 0):
                    self.fail("resume-over-receive-maximum",
                              f"session {session.client_id!r} resumed with {inflight} deliveries in flight and "
                              f"resent them all to a client whose Receive Maximum is {conn.inflight_limit} "
                              "[MQTT-3.3.4-9]")
                else:
                    self.fail("inflight-over-limit",
                              f"session {session.client_id!r} has {inflight} deliveries in flight, over the "
                              f"connection's limit {conn.inflight_limit}")

    # ------------------------------------------------------------ reproducer

    def reproducer(self) -> str:
        lines = ["from ferry.bench.fuzz import CoreRun", "run = CoreRun()", "for step in ["]
        versions: dict[int, ProtocolVersion | None] = {}
        for step in self.steps:
            comment = ""
            if step[0] == "open":
                versions[step[1]] = None
            elif step[0] == "send":
                comment = _describe_bytes(step[2], versions, step[1])
            lines.append(f"    {step!r},{'  # ' + comment if comment else ''}")
        lines.append("]:\n    run.apply(step)")
        return "\n".join(lines) + "\n"


def _describe_bytes(data: bytes, versions: dict[int, ProtocolVersion | None], i: int) -> str:
    version = versions.get(i)
    decoder = Decoder(server_side=True)
    try:
        if version is not None:
            decoder.feed(PRIME[version])
        packets = decoder.feed(data)
        if packets and type(packets[0]) is Connect:
            versions[i] = packets[0].protocol_version
        return ", ".join(repr(p) for p in packets)
    except ProtocolError as exc:
        return f"ProtocolError: {exc}"


# ------------------------------------------------------------ core step generator

_CLIENT_IDS = ("a", "b", "c", "")
_TOPICS = ("a", "a/b", "a/b/c", "b", "$SYS/x", "x/y/z", "/", "a//b", "é/ü", "$share/g/a")
_BAD_TOPICS = ("", "a/+", "#", "a/\x00")
_FILTERS = ("a", "a/#", "+/b", "#", "+", "$SYS/#", "$share/g/a", "$share/g/#", "a/+/c", "a/b", "x/#",
            "+/+/+", "$SYS/x", "/")
_BAD_FILTERS = ("", "a/#/b", "$share//a", "a+", "$share/g")


def _topic(src: Source) -> str:
    return src.choice(_BAD_TOPICS) if src.chance(0.02) else src.choice(_TOPICS)


def _filter(src: Source) -> str:
    return src.choice(_BAD_FILTERS) if src.chance(0.02) else src.choice(_FILTERS)


def _v5_publish_props(src: Source) -> Properties:
    if not src.chance(0.4):
        return EMPTY_PROPERTIES
    values: dict = {}
    if src.chance(0.4):
        values["topic_alias"] = src.choice((1, 2, 4, 5, 100))
    if src.chance(0.3):
        values["message_expiry_interval"] = src.choice((0, 1, 5, 3600))
    if src.chance(0.2):
        values["payload_format_indicator"] = src.int(0, 1)
    if src.chance(0.2):
        values["response_topic"] = "r/t"
        values["correlation_data"] = b"c"
    if src.chance(0.2):
        values["user_properties"] = (("k", "v"),)
    if src.chance(0.01):
        values["subscription_identifiers"] = (1,)  # a client may not send one [MQTT-3.3.4-6]
    return Properties(**values)


def _connect_packet(src: Source) -> tuple[Connect, ProtocolVersion]:
    version = V5 if src.chance(0.5) else V311
    v5 = version is V5
    will = None
    if src.chance(0.3):
        will_props = Properties(will_delay_interval=src.choice((1, 3, 30))) if v5 and src.chance(0.5) \
            else EMPTY_PROPERTIES
        will = Will(src.choice(("a", "a/b", "w")), b"will", src.int(0, 2), src.chance(0.3), will_props)
    props = EMPTY_PROPERTIES
    if v5:
        values: dict = {}
        if src.chance(0.6):
            values["session_expiry_interval"] = src.choice((0, 2, 30, 0xFFFF_FFFF))
        if src.chance(0.4):
            values["receive_maximum"] = src.int(1, 5)
        if src.chance(0.3):
            values["maximum_packet_size"] = src.choice((20, 40, 80, 200, 100_000))
        if src.chance(0.2):
            values["topic_alias_maximum"] = src.int(0, 3)
        if src.chance(0.03):
            values["authentication_method"] = "SCRAM"
        props = Properties(**values)
    keepalive = src.choice((0, 1, 5, 60, 65535))
    return Connect(src.choice(_CLIENT_IDS), version, src.chance(0.5), keepalive, will=will,
                   properties=props), version


def _packet_id(src: Source, seen: list[int]) -> int:
    if seen and src.chance(0.7):
        return src.choice(seen[-8:])
    return src.choice((1, 2, 3, 7, 65535, 0)) if src.chance(0.95) else src.int(0, 65535)


def _client_bytes(src: Source, slot: Slot, tag: Callable[[], str]) -> bytes:
    """Bytes a (possibly misbehaving) client sends next."""
    version = slot.version
    v5 = version is V5
    if not slot.connected or src.chance(0.01):
        if src.chance(0.97) or slot.connected:
            packet, version = _connect_packet(src)
            if not slot.connected:
                slot.version, slot.connected = version, True
            try:
                return encode(packet, version)
            except ValueError:
                return encode(Connect("a", version, True, 60), version)
    if src.chance(0.005):
        return src.bytes(src.int(1, 12))
    kind = src.int(0, 99)
    if kind < 35:
        qos = src.int(0, 2)
        packet_id = _packet_id(src, []) if qos else None
        if packet_id == 0 and not src.chance(0.1):
            packet_id = 1
        props = _v5_publish_props(src) if v5 else EMPTY_PROPERTIES
        topic = _topic(src) if src.chance(0.5) else src.choice(_TOPICS[:4])
        payload = b"" if src.chance(0.05) else tag().encode("latin-1")
        retain = src.chance(0.15)
        dup = bool(qos) and src.chance(0.1)
        try:
            props_bytes = encode_properties(props) if v5 else b""
        except ValueError:
            props_bytes = b"\x00"
        return encode_publish(topic.encode(), payload, qos, retain, dup, packet_id or (None if not qos else 0),
                              props_bytes, version) if qos == 0 or packet_id else \
            bytes((0x30 | qos << 1, 5)) + b"\x00\x01a\x00\x00"  # QoS 1/2 with packet id 0
    if kind < 50:
        subs = []
        for _ in range(src.int(1, 3)):
            if v5:
                subs.append(Subscription(_filter(src), src.int(0, 2), src.chance(0.05), src.chance(0.2),
                                         src.int(0, 2)))
            else:
                subs.append(Subscription(_filter(src), src.int(0, 2)))
        props = Properties(subscription_identifiers=(src.int(1, 5),)) if v5 and src.chance(0.3) \
            else EMPTY_PROPERTIES
        return _encode_loose(Subscribe(_packet_id(src, []) or 1, tuple(subs), props), version)
    if kind < 56:
        filters = tuple(_filter(src) for _ in range(src.int(1, 2)))
        return _encode_loose(Unsubscribe(_packet_id(src, []) or 1, filters), version)
    if kind < 72:
        return encode(Puback(_packet_id(src, slot.seen_ids) or 1), version)
    if kind < 80:
        code = ReasonCode.UNSPECIFIED_ERROR if v5 and src.chance(0.15) else ReasonCode.SUCCESS
        return encode(Pubrec(_packet_id(src, slot.seen_qos2) or 1, code), version)
    if kind < 86:
        return encode(Pubcomp(_packet_id(src, slot.seen_qos2) or 1), version)
    if kind < 91:
        return encode(Pubrel(_packet_id(src, []) or 1), version)
    if kind < 95:
        return encode(Pingreq(), version)
    if kind < 99:
        if not v5:
            return encode(Disconnect(), version)
        code = ReasonCode.DISCONNECT_WITH_WILL_MESSAGE if src.chance(0.3) else ReasonCode.NORMAL_DISCONNECTION
        props = Properties(session_expiry_interval=src.choice((0, 5, 100))) if src.chance(0.4) \
            else EMPTY_PROPERTIES
        return encode(Disconnect(code, props), version)
    return encode(Auth(), V5) if v5 else b"\xf0\x00"


def _encode_loose(packet, version: ProtocolVersion) -> bytes:
    """Encode, or for a filter the encoder refuses (empty, misplaced '#'), build the bytes by hand."""
    try:
        return encode(packet, version)
    except ValueError:
        pass
    body = bytearray(packet.packet_id.to_bytes(2, "big"))
    if version is V5:
        body += b"\x00"
    if type(packet) is Subscribe:
        for sub in packet.subscriptions:
            raw = sub.topic_filter.encode()
            body += len(raw).to_bytes(2, "big") + raw + bytes((sub.qos,))
        return _frame(0x82, bytes(body))
    for topic_filter in packet.topic_filters:
        raw = topic_filter.encode()
        body += len(raw).to_bytes(2, "big") + raw
    return _frame(0xA2, bytes(body))


def generate_core_steps(src: Source, run: CoreRun, n_steps: int) -> Iterator[tuple]:
    """Steps chosen from ``src``, looking at the run's state (connections, packet ids seen)."""
    counter = itertools.count()

    def tag() -> str:
        return f"m{next(counter)}"

    for _ in range(n_steps):
        r = src.int(0, 99)
        i = src.int(0, CoreRun.SLOTS - 1)
        slot = run.slots[i]
        if slot is None or (slot.conn.closed and src.chance(0.8)):
            yield ("open", i)
        elif r < 55:
            yield ("send", i, _client_bytes(src, slot, tag))
        elif r < 66:
            yield ("seal",)
        elif r < 70:
            yield ("arm",)
        elif r < 84:
            yield ("commit",)
        elif r < 89:
            yield ("tick", src.choice((0.5, 1.0, 3.0, 10.0, 100.0)))
        elif r < 95 or slot.conn.close_reason is not None:
            yield ("lost", i)
        elif r < 98:
            yield ("blocked", i, not slot.conn.output_blocked)
        else:
            yield ("restart",)


def fuzz_core_once(src: Source, n_steps: int | None = None, tolerate: frozenset[str] = frozenset()) -> CoreRun:
    """Run one generated sequence; raises on a violated invariant (the run is on ``exc.run``)."""
    run = CoreRun(tolerate=tolerate)
    if n_steps is None:
        n_steps = src.int(5, 80)
    try:
        for step in generate_core_steps(src, run, n_steps):
            run.apply(step)
    except Exception as exc:
        exc.run = run  # type: ignore[attr-defined]
        raise
    return run


# ====================================================================== engines


@dataclass
class Report:
    target: str
    engine: str
    inputs: int = 0
    seconds: float = 0.0
    crashes: list[Crash] = field(default_factory=list)
    crash_count: int = 0
    signatures: dict[str, int] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        return self.inputs / self.seconds if self.seconds > 0 else 0.0

    def add(self, crash: Crash, keep: int = 20) -> bool:
        """Count a crash; True when it is a new kind (kept, up to ``keep``)."""
        self.crash_count += 1
        sig = crash.signature
        first = sig not in self.signatures
        self.signatures[sig] = self.signatures.get(sig, 0) + 1
        if first and len(self.crashes) < keep:
            self.crashes.append(crash)
        return first

    def summary(self) -> str:
        return (f"{self.target}: {self.inputs:,} inputs in {self.seconds:.1f} s ({self.rate:,.0f} inputs/s, "
                f"engine {self.engine}), {self.crash_count} crash(es) of {len(self.signatures)} kind(s)")


CODEC = "codec"
CORE = "core"

_CORPUS: list[Seed] | None = None


def corpus() -> list[Seed]:
    global _CORPUS
    if _CORPUS is None:
        _CORPUS = codec_corpus()
    return _CORPUS


def run_one(target: str, src: Source, index: int, tolerate: frozenset[str] = frozenset()) -> Crash | None:
    """Generate one input for ``target`` from ``src`` and check it; the crash, if any."""
    if target == CODEC:
        try:
            inp = make_codec_input(src, corpus())
        except Exception as exc:  # a bug of the mutator, not of the codec: still reported
            return Crash(target, index, f"generator {_describe(exc)}", traceback.format_exc(),
                         "(the input generator failed: run this seed and index again)")
        try:
            check_codec(inp)
        except Exception as exc:  # anything but a ProtocolError is a crash
            return Crash(target, index, _describe(exc), traceback.format_exc(), inp.reproducer())
        return None
    try:
        fuzz_core_once(src, tolerate=tolerate)
    except Exception as exc:
        run = getattr(exc, "run", None)
        reproducer = run.reproducer() if run is not None else "(no run)"
        return Crash(target, index, _describe(exc), traceback.format_exc(), reproducer)
    return None


@contextlib.contextmanager
def quiet_logs() -> Iterator[None]:
    """The core logs a warning per refused client; a fuzz run refuses thousands a second."""
    logger = logging.getLogger("ferry")
    level = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def input_rng(seed: int, index: int) -> random.Random:
    """The generator of input ``index`` of a run with ``seed``: any input can be run alone again."""
    return random.Random(seed * 1_000_003 + index)


def run_random(target: str, inputs: int, seed: int, *, start: int = 0, time_limit_s: float | None = None,
               progress: Callable[[Report], None] | None = None, progress_every_s: float = 10.0,
               on_crash: Callable[[Crash], None] | None = None, tolerate: frozenset[str] = frozenset()
               ) -> Report:
    """The seeded random engine: input ``k`` is made from ``input_rng(seed, k)``."""
    report = Report(target, "random")
    started = last = time.perf_counter()
    deadline = None if time_limit_s is None else started + time_limit_s
    check_every = 0xFF if target == CODEC else 0x0F
    with quiet_logs():
        for index in range(start, start + inputs):
            crash = run_one(target, RandomSource(input_rng(seed, index)), index, tolerate)
            report.inputs += 1
            if crash is not None and report.add(crash) and on_crash is not None:
                on_crash(crash)
            if report.inputs & check_every == 0:
                now = time.perf_counter()
                if progress is not None and now - last >= progress_every_s:
                    report.seconds = now - started
                    progress(report)
                    last = now
                if deadline is not None and now >= deadline:
                    break
    report.seconds = time.perf_counter() - started
    return report


def run_hypothesis(target: str, inputs: int, seed: int, *, on_crash: Callable[[Crash], None] | None = None,
                   tolerate: frozenset[str] = frozenset()) -> Report:
    """Hypothesis drives the generators; a failure is shrunk, then reported once."""
    from hypothesis import HealthCheck, given, settings
    from hypothesis import strategies as st

    report = Report(target, "hypothesis")
    failures: list[Crash] = []

    @settings(max_examples=inputs, deadline=None, database=None, derandomize=False, print_blob=False,
              suppress_health_check=list(HealthCheck))
    @given(st.data())
    def prop(data) -> None:
        report.inputs += 1
        crash = run_one(target, HypothesisSource(data), report.inputs, tolerate)
        if crash is not None:
            failures.append(crash)
            raise FuzzFailure(crash.error)

    from hypothesis import seed as hypothesis_seed

    started = time.perf_counter()
    try:
        with quiet_logs():
            hypothesis_seed(seed)(prop)()
    except FuzzFailure:
        crash = failures[-1]  # the last failure is the shrunk one
        report.add(crash)
        if on_crash is not None:
            on_crash(crash)
    report.seconds = time.perf_counter() - started
    return report


def atheris_available() -> bool:
    try:
        import atheris  # noqa: F401
    except ImportError:
        return False
    return True


def run_atheris(target: str, inputs: int, seed: int, tolerate: frozenset[str] = frozenset(),
                corpus_dir: str | None = None) -> int:
    """Coverage-guided fuzzing with atheris (libFuzzer), which exits the process when done: its final
    stats (``stat::number_of_executed_units``, ``stat::average_exec_per_sec``) are the counts.

    The codec target decodes atheris's bytes directly (first byte: which decoder, chunking and a small
    maximum packet size), starting from the valid corpus; the core target reads its choices from them.
    A failure prints our reproducer, then libFuzzer saves the input as ``crash-<sha1>``.
    """
    import os
    import tempfile

    import atheris

    sides = ("server", "client-v311", "client-v5")
    count = itertools.count(1)

    def codec_input(data: bytes) -> CodecInput:
        if not data:
            return CodecInput("server", b"")
        head, rest = data[0], data[1:]
        cuts = tuple(range(1, len(rest))) if head & 0x80 else (len(rest) // 2,) if head & 0x40 else ()
        return CodecInput(sides[head % 3], rest, cuts, 64 if head & 0x20 else MAX_VBI)

    def test_one(data: bytes) -> None:
        index = next(count)
        if target == CODEC:
            inp = codec_input(data)
            try:
                check_codec(inp)
            except Exception as exc:
                print(Crash(target, index, _describe(exc), traceback.format_exc(), inp.reproducer()).render(),
                      file=sys.stderr, flush=True)
                raise
        else:
            crash = run_one(CORE, ProviderSource(atheris.FuzzedDataProvider(data)), index, tolerate)
            if crash is not None:
                print(crash.render(), file=sys.stderr, flush=True)
                raise FuzzFailure(crash.error, "core")

    argv = [sys.argv[0], f"-runs={inputs}", f"-seed={seed or 1}", "-print_final_stats=1"]
    if target == CODEC:
        seeds_dir = corpus_dir or os.path.join(tempfile.gettempdir(), "ferry-fuzz-codec-corpus")
        os.makedirs(seeds_dir, exist_ok=True)
        for n, s in enumerate(corpus()):
            with open(os.path.join(seeds_dir, f"seed{n}"), "wb") as f:
                f.write(bytes((sides.index(s.side),)) + b"".join(s.frames))
        argv.append(seeds_dir)  # libFuzzer adds what raises coverage to it
    logging.getLogger("ferry").setLevel(logging.CRITICAL)
    atheris.instrument_all()
    atheris.Setup(argv, test_one)
    atheris.Fuzz()
    return 0  # pragma: no cover - libFuzzer exits the process


# ====================================================================== command line


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="ferry bench fuzz", description=(
        "Fuzz the MQTT codec (random and mutated valid packets, any chunking: only ProtocolError may "
        "come out, decoded packets round-trip) and the broker core (packet sequences from several "
        "connections, commits, time, lost connections, restarts, with invariants checked after every "
        "step). Exits 1 when an input fails, printing a reproducer."))
    parser.add_argument("--target", choices=(*TARGETS, "all"), default="all",
                        help="what to fuzz (default all: codec, then core)")
    parser.add_argument("--inputs", type=int, default=1_000_000, metavar="N",
                        help="inputs per target (core: one input is a sequence of 5-80 steps; default 1,000,000)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="seed of the run (default 0)")
    parser.add_argument("--start", type=int, default=0, metavar="K",
                        help="first input index (random engine): --start K --inputs 1 runs input K alone again")
    parser.add_argument("--engine", choices=ENGINES, default="random",
                        help="random (seeded mutator, default), hypothesis (shrinks failures) or "
                             "atheris (coverage-guided, when installed)")
    parser.add_argument("--time-limit", type=float, metavar="S",
                        help="stop each target after S seconds even if fewer inputs ran (random engine)")
    parser.add_argument("--tolerate", action="append", default=[], metavar="KIND",
                        help="count, but do not fail on, core failures of this kind (repeatable; "
                             f"known and reported: {', '.join(sorted(KNOWN_CORE_DEFECTS)) or 'none'})")
    parser.add_argument("--quiet", action="store_true", help="no progress lines")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.inputs < 1:
        print("ferry bench fuzz: --inputs must be positive", file=sys.stderr)
        return 2
    targets = TARGETS if args.target == "all" else (args.target,)
    if args.engine == "atheris":
        if not atheris_available():
            print("ferry bench fuzz: --engine atheris needs the atheris package, which is not installed "
                  "(atheris 3.1.0 ships wheels for CPython 3.12+ only; 3.0.0 has CPython 3.11 wheels)",
                  file=sys.stderr)
            return 2
        if len(targets) != 1:
            print("ferry bench fuzz: --engine atheris runs one --target at a time", file=sys.stderr)
            return 2
        return run_atheris(targets[0], args.inputs, args.seed, frozenset(args.tolerate))

    def on_crash(crash: Crash) -> None:
        rerun = ""
        if args.engine == "random":
            rerun = (f"run it alone: ferry bench fuzz --target {crash.target} --seed {args.seed} "
                     f"--start {crash.index} --inputs 1\n")
        print(crash.render() + rerun, flush=True)

    def progress(report: Report) -> None:
        if not args.quiet:
            print(f"  {report.summary()}", file=sys.stderr, flush=True)

    failed = False
    for target in targets:
        print(f"fuzzing {target} with the {args.engine} engine, seed {args.seed}, {args.inputs:,} inputs",
              flush=True)
        if args.engine == "hypothesis":
            report = run_hypothesis(target, args.inputs, args.seed, on_crash=on_crash,
                                    tolerate=frozenset(args.tolerate))
        else:
            report = run_random(target, args.inputs, args.seed, start=args.start, time_limit_s=args.time_limit,
                                progress=progress, on_crash=on_crash, tolerate=frozenset(args.tolerate))
        print(report.summary(), flush=True)
        for sig, count in report.signatures.items():
            print(f"  {count:>8,} x {sig}", flush=True)
        failed = failed or bool(report.crash_count)
    return 1 if failed else 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
