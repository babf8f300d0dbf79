"""`ferry bench fuzz` in the normal suite: a short run of each target, Hypothesis properties over the same
generators, proof that a broken decoder or core is caught, and the core defects known today.

The long runs are `ferry bench fuzz --inputs 1000000` (see bench/fuzz.py).
"""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ferry.bench import fuzz, fuzz_codec, fuzz_core
from ferry.bench.fuzz_codec import CodecInput
from ferry.bench.fuzz_core import CoreRun
from ferry.bench.fuzz_input import FuzzFailure, HypothesisSource
from ferry.bench.main import main as bench_main
from ferry.gateway.broker.core import Broker
from ferry.gateway.mqtt import (
    Connect, Decoder, Properties, ProtocolError, ProtocolVersion, Puback, Publish, Subscribe, Subscription,
    Unsubscribe, Will,
    encode,
)

V311 = ProtocolVersion.V311
V5 = ProtocolVersion.V5
CODEC_INPUTS = 20_000
CORE_SEQUENCES = 2_000
PROPERTY = settings(max_examples=300, deadline=None, database=None,
                    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _no_crashes(report: fuzz.Report) -> None:
    assert report.crash_count == 0, "\n".join(c.render() for c in report.crashes)


# ------------------------------------------------------------------ short runs


def test_codec_short_run() -> None:
    report = fuzz.run_random(fuzz.CODEC, CODEC_INPUTS, seed=20_240_601)
    assert report.inputs == CODEC_INPUTS
    _no_crashes(report)


def test_core_short_run() -> None:
    report = fuzz.run_random(fuzz.CORE, CORE_SEQUENCES, seed=20_240_601, tolerate=fuzz_core.KNOWN_CORE_DEFECTS)
    assert report.inputs == CORE_SEQUENCES
    _no_crashes(report)


def test_the_corpus_is_valid_and_has_every_packet_type_for_both_versions() -> None:
    types: dict[ProtocolVersion, set[str]] = {V311: set(), V5: set()}
    for seed in fuzz_codec.corpus():
        if seed.side == "server":
            decoder = Decoder(server_side=True)
        else:
            decoder = Decoder(server_side=False, protocol_version=V5 if seed.side == "client-v5" else V311)
        packets = decoder.feed(b"".join(seed.frames))
        assert len(packets) == len(seed.frames) and decoder.buffered == 0
        types[decoder.protocol_version].update(type(p).__name__ for p in packets)
    assert len(types[V311]) == 14 and "Auth" not in types[V311]
    assert len(types[V5]) == 15


# ------------------------------------------------------------------ Hypothesis over the same generators


@PROPERTY
@given(st.data())
def test_mutated_packets_only_raise_protocol_error_and_round_trip(data: st.DataObject) -> None:
    """Decode a mutated stream (whole and chunked): only ProtocolError, and every decoded packet
    re-encodes and decodes to an equal packet."""
    fuzz_codec.check_codec(fuzz_codec.make_codec_input(HypothesisSource(data), fuzz_codec.corpus()))


@PROPERTY
@given(st.sampled_from(["server", "client-v311", "client-v5"]), st.binary(max_size=200),
       st.lists(st.integers(0, 200), max_size=6))
def test_random_bytes_decode_the_same_in_any_chunking(side: str, data: bytes, cuts: list[int]) -> None:
    prefix = fuzz_codec.PRIME[V5] if side == "server" and data[:1] != b"\x10" else b""
    stream = prefix + data
    fuzz_codec.check_codec(CodecInput(side, stream, tuple(sorted({c % (len(stream) + 1) for c in cuts}))))


@settings(max_examples=40, deadline=None, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(st.data())
def test_core_invariants_hold_for_hypothesis_sequences(data: st.DataObject) -> None:
    with fuzz.quiet_logs():
        fuzz_core.fuzz_core_once(HypothesisSource(data), tolerate=fuzz_core.KNOWN_CORE_DEFECTS)


# ------------------------------------------------------------------ the fuzzer can fail


class IndexErrorOnFF(Decoder):
    """A decoder with a planted bug: any 0xFF byte is an IndexError instead of a ProtocolError."""

    __slots__ = ()

    def feed(self, data: bytes) -> list:
        if b"\xff" in bytes(data):
            raise IndexError("planted bug")
        return super().feed(data)


class DropsRetainFlag(Decoder):
    """A decoder with a planted bug that only the round trip sees: PUBLISH loses its retain flag."""

    __slots__ = ()

    def feed(self, data: bytes) -> list:
        return [Publish(p.topic, p.payload, p.qos, False, p.dup, p.packet_id, p.properties)
                if type(p) is Publish and p.retain else p for p in super().feed(data)]


@pytest.mark.parametrize("broken, expected", [(IndexErrorOnFF, "IndexError: planted bug"),
                                              (DropsRetainFlag, "FuzzFailure: [property]")])
def test_a_broken_decoder_is_reported_with_a_reproducer(monkeypatch: pytest.MonkeyPatch, broken: type,
                                                        expected: str) -> None:
    monkeypatch.setattr(fuzz_codec, "Decoder", broken)
    report = fuzz.run_random(fuzz.CODEC, 2_000, seed=1)
    assert report.crash_count > 0
    crash = report.crashes[0]
    assert crash.error.startswith(expected), crash.error
    assert "check_codec(CodecInput(" in crash.reproducer and "bytes.fromhex(" in crash.reproducer
    # The reproducer runs the failing input again (with the broken decoder still in place).
    with pytest.raises((IndexError, FuzzFailure)):
        exec(crash.reproducer, {})


def test_the_command_exits_1_and_prints_the_reproducer(monkeypatch: pytest.MonkeyPatch,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setattr(fuzz_codec, "Decoder", IndexErrorOnFF)
    assert bench_main(["fuzz", "--target", "codec", "--inputs", "500", "--seed", "3", "--quiet"]) == 1
    out = capsys.readouterr().out
    assert "codec crash at input #" in out and "IndexError: planted bug" in out
    assert "bytes.fromhex(" in out
    assert "500 inputs in" in out and "inputs/s" in out


def test_the_command_exits_0_on_a_clean_run(capsys: pytest.CaptureFixture[str]) -> None:
    assert bench_main(["fuzz", "--target", "all", "--inputs", "200", "--quiet",
                       *[a for kind in fuzz_core.KNOWN_CORE_DEFECTS for a in ("--tolerate", kind)]]) == 0
    out = capsys.readouterr().out
    assert "codec: 200 inputs" in out and "core: 200 inputs" in out


def test_acknowledging_before_the_commit_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """A core that sends PUBACK/SUBACK/CONNACK without waiting for its records' batch."""
    monkeypatch.setattr(Broker, "_wait_batch", lambda self, appends_before: 0)
    report = fuzz.run_random(fuzz.CORE, 300, seed=1, tolerate=fuzz_core.KNOWN_CORE_DEFECTS)
    assert "FuzzFailure[ack-before-commit]" in report.signatures, report.signatures
    assert "run.apply(step)" in report.crashes[0].reproducer


def test_waiting_for_the_batch_pending_after_the_appends_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    """The gateway's old rule: an acknowledgement waited for `journal.pending_batch` read after its
    records were appended. The writer thread may seal the batch in between (a flush asked for while
    it wrote), and the acknowledgement then waits for a batch nothing seals: a CONNACK that never
    came in a fresh-clone CI run. The model journal's `arm` step makes that seal happen."""
    monkeypatch.setattr(Broker, "_wait_batch",
                        lambda self, appends_before: self.journal.pending_batch if self._appends != appends_before else 0)
    report = fuzz.run_random(fuzz.CORE, 300, seed=1, tolerate=fuzz_core.KNOWN_CORE_DEFECTS)
    assert "FuzzFailure[stuck-ack]" in report.signatures, report.signatures


def test_a_session_left_on_a_lost_connection_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Broker, "_detach", lambda self, conn, now: None)
    report = fuzz.run_random(fuzz.CORE, 300, seed=1, tolerate=fuzz_core.KNOWN_CORE_DEFECTS)
    assert "FuzzFailure[session-on-closed-connection]" in report.signatures, report.signatures


def test_an_exception_in_the_core_is_caught(monkeypatch: pytest.MonkeyPatch) -> None:
    handle_packet = Broker.handle_packet

    def broken(self, conn, packet, now):
        if type(packet) is Unsubscribe:
            raise KeyError("planted")
        return handle_packet(self, conn, packet, now)

    monkeypatch.setattr(Broker, "handle_packet", broken)
    report = fuzz.run_random(fuzz.CORE, 300, seed=1, tolerate=fuzz_core.KNOWN_CORE_DEFECTS)
    assert any(sig.startswith("KeyError") for sig in report.signatures), report.signatures


# ------------------------------------------------------------------ known core defects (reported)


def _steps(*steps: tuple) -> list[tuple]:
    return list(steps)


def _connect(client_id: str, version: ProtocolVersion, clean: bool, **props) -> bytes:
    return encode(Connect(client_id, version, clean, 60, properties=Properties(**props)), version)


def test_a_resumed_session_resends_no_more_than_the_new_receive_maximum() -> None:
    """Found by the fuzzer: all in-flight deliveries were resent to a client that came back with a
    smaller Receive Maximum [MQTT-3.3.4-9]."""
    run = CoreRun()
    steps = _steps(
        ("open", 0), ("send", 0, _connect("s", V5, True, session_expiry_interval=300)),
        ("send", 0, encode(Subscribe(1, (Subscription("t", 1),)), V5)), ("seal",), ("commit",),
        ("open", 1), ("send", 1, _connect("p", V5, True)),
        *[("send", 1, encode(Publish("t", b"m%d" % i, 1, packet_id=i), V5)) for i in (1, 2, 3)],
        ("seal",), ("commit",), ("lost", 0),
        ("open", 2), ("send", 2, _connect("s", V5, False, session_expiry_interval=300, receive_maximum=1)),
    )
    for step in steps:
        run.apply(step)


def test_no_record_refers_to_a_session_deleted_from_the_store() -> None:
    """Found by the fuzzer: a persistent session resumed by an MQTT 5 CONNECT without Session Expiry
    was deleted from the store, but its deliveries stayed durable and later records named it."""
    run = CoreRun()
    steps = _steps(
        ("open", 0), ("send", 0, _connect("s", V311, False)),
        ("send", 0, encode(Subscribe(1, (Subscription("t", 1),)), V311)), ("seal",), ("commit",), ("lost", 0),
        ("open", 1), ("send", 1, _connect("p", V311, True)),
        ("send", 1, encode(Publish("t", b"queued", 1, packet_id=1), V311)), ("seal",), ("commit",),
        ("open", 2), ("send", 2, _connect("s", V5, False)),
    )
    for step in steps:
        run.apply(step)


def test_nothing_new_is_queued_for_a_connection_the_core_closed() -> None:
    """Found by the fuzzer: deliveries went on being queued for a connection after the core closed it
    (the network layer had half-closed the socket, and its flush raised)."""
    run = CoreRun()
    steps = _steps(
        ("open", 0), ("send", 0, _connect("s", V5, True)),
        ("send", 0, encode(Subscribe(1, (Subscription("t", 0),)), V5)),
        ("open", 1), ("send", 1, _connect("p", V5, True)),
        ("send", 0, bytes.fromhex("36 05 00 01 74 00 01")),  # PUBLISH with QoS 3: DISCONNECT 0x81
        ("send", 1, encode(Publish("t", b"after the close", 0), V5)),
    )
    for step in steps:
        run.apply(step)


def test_a_retained_message_is_queued_once_per_session() -> None:
    """Found by the fuzzer: one SUBSCRIBE naming `#` three times queued the retained will three
    times for a persistent session; the store keeps one entry per session and message, so the
    first PUBACK's Dequeued left the later copies' InflightAssigned pointing at nothing."""
    run = CoreRun()
    for step in [
        ("open", 1), ("open", 0),
        ("send", 0, _connect("c", V5, True, receive_maximum=3)),
        ("send", 0, encode(Publish("a/b", b"m0", 2, retain=True, packet_id=1), V5)),
        ("send", 1, encode(Connect("", V5, True, 1, will=Will("w", b"will", 1, True, Properties(will_delay_interval=1)),
                                   properties=Properties(receive_maximum=2)), V5)),
        ("open", 3), ("lost", 1),
        ("send", 3, _connect("a", V311, False)),
        ("send", 3, encode(Subscribe(7, (Subscription("#", 2), Subscription("#", 0), Subscription("#", 2))), V311)),
        ("send", 3, encode(Puback(2), V311)),
    ]:
        run.apply(step)


def test_protocol_error_is_the_only_exception_of_the_reproducer_helpers() -> None:
    """`check_codec` itself: a ProtocolError input passes, and the decoded packets are returned."""
    assert fuzz_codec.check_codec(CodecInput("server", fuzz_codec.PRIME[V5] + b"\xc0\x00")) != []
    assert fuzz_codec.check_codec(CodecInput("server", b"\x30\x00")) == []
    with pytest.raises(ProtocolError):
        Decoder(server_side=True).feed(b"\x30\x00")
