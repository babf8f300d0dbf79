"""The gateway as users run it: a real `ferry gateway` process and paho-mqtt clients (3.1.1 and 5)."""

from __future__ import annotations

import socket
import subprocess
import sys
import urllib.request

import pytest
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from ferry.process import free_port
from tests.gateway.paho_client import TestClient


def test_v311_qos0_1_2_round_trip(gateway) -> None:
    with TestClient(gateway.port, "sub") as sub, TestClient(gateway.port, "pub") as pub:
        assert [int(code.value) for code in sub.subscribe("ferry/+/+/telemetry", qos=2)] == [2]
        for qos in (0, 1, 2):
            pub.publish("ferry/s/d/telemetry", f"q{qos}".encode(), qos=qos)
        got = sorted((m.payload, m.qos) for m in sub.expect(3))
        assert got == [(b"q0", 0), (b"q1", 1), (b"q2", 2)]


def test_v5_properties_travel_and_no_local(gateway) -> None:
    with TestClient(gateway.port, "both", v5=True) as client:
        sub_props = Properties(PacketTypes.SUBSCRIBE)
        sub_props.SubscriptionIdentifier = 7
        client.subscribe("a/#", qos=1, properties=sub_props)
        client.subscribe("echo", qos=1, noLocal=True)
        props = Properties(PacketTypes.PUBLISH)
        props.ContentType = "application/json"
        props.UserProperty = [("k", "v")]
        props.ResponseTopic = "r/1"
        props.CorrelationData = b"\x01\x02"
        client.publish("a/b", b"{}", 1, properties=props)
        client.publish("echo", b"mine", 1)
        (message,) = client.expect(1)
        assert message.topic == "a/b"
        assert message.properties.ContentType == "application/json"
        assert message.properties.UserProperty == [("k", "v")]
        assert message.properties.ResponseTopic == "r/1"
        assert message.properties.CorrelationData == b"\x01\x02"
        assert message.properties.SubscriptionIdentifier == [7]
        client.expect_nothing()


def test_persistent_session_queues_while_offline(gateway) -> None:
    sub = TestClient(gateway.port, "dev-cmd", clean=False)
    sub.subscribe("ferry/s/dev/cmd", qos=1)
    sub.close()
    with TestClient(gateway.port, "operator") as op:
        for i in range(5):
            op.publish("ferry/s/dev/cmd", f"c{i}".encode(), 1)
    with TestClient(gateway.port, "dev-cmd", clean=False) as back:
        assert back.session_present
        assert [m.payload for m in back.expect(5)] == [f"c{i}".encode() for i in range(5)]


def test_retained_and_last_will_on_abrupt_close(gateway) -> None:
    device = TestClient(gateway.port, "dev", will=("ferry/s/dev/status", b'{"state":"offline"}', 1, True))
    device.publish("ferry/s/dev/status", b'{"state":"online"}', 1, retain=True)
    with TestClient(gateway.port, "dash") as dash:
        dash.subscribe("ferry/+/+/status", 1)
        assert dash.expect(1)[0].payload == b'{"state":"online"}'
        device.client.socket().close()  # no DISCONNECT: the broker must publish the will
        (will,) = dash.expect(1)
        assert will.payload == b'{"state":"offline"}'
        device.client.loop_stop()
    with TestClient(gateway.port, "late") as late:
        late.subscribe("ferry/s/dev/status", 1)
        (retained,) = late.expect(1)
        assert retained.retain and retained.payload == b'{"state":"offline"}'


def test_shared_subscription_splits_the_load(gateway) -> None:
    workers = [TestClient(gateway.port, f"w{i}") for i in range(2)]
    try:
        for worker in workers:
            worker.subscribe("$share/bridge/ferry/#", 1)
        with TestClient(gateway.port, "pub") as pub:
            for i in range(10):
                pub.publish("ferry/s/d/telemetry", str(i).encode(), 1)
        counts = [len(worker.expect(5)) for worker in workers]
        assert counts == [5, 5]
        for worker in workers:
            worker.expect_nothing(0.2)
    finally:
        for worker in workers:
            worker.close()


def test_session_takeover(gateway) -> None:
    first = TestClient(gateway.port, "same-id", v5=True)
    second = TestClient(gateway.port, "same-id", v5=True)
    try:
        reason = first.disconnects.get(timeout=10)
        assert getattr(reason, "value", reason) == 0x8E  # Session taken over
    finally:
        first.client.loop_stop()
        second.close()


def test_malformed_packet_closes_only_that_connection(gateway) -> None:
    with TestClient(gateway.port, "good") as good:
        good.subscribe("t", 1)
        with socket.create_connection(("127.0.0.1", gateway.port), timeout=5) as bad:
            bad.sendall(bytes.fromhex("100c00044d5154540402003c0000") + b"\x3f\x00")  # CONNECT, then QoS 3
            data = bad.recv(100)
            assert data[:2] == b"\x20\x02"  # CONNACK first
            assert bad.recv(100) == b""  # then closed
        with TestClient(gateway.port, "pub") as pub:
            pub.publish("t", b"still fine", 1)
        assert good.expect(1)[0].payload == b"still fine"
    assert "MQTT-3.3.1-4" in gateway.log_text()


def test_restart_keeps_sessions_and_retained(start_gateway, tmp_path) -> None:
    gateway = start_gateway(tmp_path / "data")
    sub = TestClient(gateway.port, "keeper", clean=False)
    sub.subscribe("jobs/#", 1)
    sub.close()
    with TestClient(gateway.port, "pub") as pub:
        pub.publish("jobs/1", b"queued", 1)
        pub.publish("cfg", b"retained", 1, retain=True)
    assert gateway.stop() == 0
    gateway.start()
    with TestClient(gateway.port, "keeper", clean=False) as back:
        assert back.session_present
        assert back.expect(1)[0].payload == b"queued"
        back.subscribe("cfg", 1)
        assert back.expect(1)[0].payload == b"retained"


def test_sigterm_exits_cleanly_and_logs(gateway) -> None:
    with TestClient(gateway.port, "c1"):
        pass
    assert gateway.stop() == 0
    log = gateway.log_text()
    assert "connect c1" in log and "disconnect c1" in log
    assert "stopped; store flushed" in log


def test_metrics_endpoint_and_sys_topics(start_gateway) -> None:
    gateway = start_gateway(metrics_port=free_port())
    with TestClient(gateway.port, "m") as client:
        client.subscribe("$SYS/broker/connections", 0)
        client.publish("x", b"1", 1)
        (sys_message,) = client.expect(1, timeout_s=15)
        assert int(float(sys_message.payload)) >= 1
        body = urllib.request.urlopen(f"http://127.0.0.1:{gateway.metrics_port}/metrics", timeout=10).read()
    text = body.decode()
    assert 'ferry_messages_received_total{qos="1"} 1' in text
    assert "ferry_store_commit_latency_seconds" in text
    assert 'ferry_dropped_messages_total{reason="queue_full"} 0' in text


@pytest.mark.parametrize("config, complaint", [
    ("[broker]\nmax_inflight = 5\n", "broker.max_inflight: unknown key"),
    ("[store]\ndurability = \"sometimes\"\n", "store.durability: 'sometimes' is not one of"),
    ("[broker]\nreceive_maximum = \"ten\"\n", "broker.receive_maximum: expected an integer"),
    ("[brokr]\n", "brokr: unknown section"),
    ("[broker\n", "not valid TOML"),
])
def test_bad_config_names_the_key_and_exits_nonzero(tmp_path, config, complaint) -> None:
    path = tmp_path / "ferry.toml"
    path.write_text(config)
    result = subprocess.run([sys.executable, "-m", "ferry", "gateway", "--data-dir", str(tmp_path),
                             "--config", str(path), "--listen", f"127.0.0.1:{free_port()}"],
                            capture_output=True, text=True, timeout=60)
    assert result.returncode != 0
    assert complaint in result.stderr


def test_keepalive_timeout_publishes_will(gateway) -> None:
    with TestClient(gateway.port, "watch") as watch:
        watch.subscribe("lwt", 1)
        raw = socket.create_connection(("127.0.0.1", gateway.port), timeout=5)
        # CONNECT v3.1.1, keepalive 1 s, will "lwt" = "gone" at QoS 0, then silence.
        raw.sendall(bytes.fromhex("101800044d5154540406000100016200036c77740004") + b"gone")
        assert raw.recv(4) == b"\x20\x02\x00\x00"
        (will,) = watch.expect(1, timeout_s=10)
        assert will.payload == b"gone"
        assert raw.recv(10) == b""  # the broker closed the silent connection
        raw.close()
    assert "keepalive timeout" in gateway.log_text()


def test_corrupt_store_still_starts_and_keeps_the_valid_part(start_gateway, tmp_path) -> None:
    gateway = start_gateway(tmp_path / "data")
    keeper = TestClient(gateway.port, "keeper", clean=False)
    keeper.subscribe("k", 1)
    keeper.close()
    with TestClient(gateway.port, "pub") as pub:
        for i in range(20):
            pub.publish("k", f"m{i}".encode(), 1)
    assert gateway.stop() == 0
    segments = [p for p in (tmp_path / "data" / "store").iterdir() if p.suffix in (".seg", ".snap")]
    victim = max(segments, key=lambda p: p.stat().st_size)
    data = bytearray(victim.read_bytes())
    data[len(data) * 3 // 4] ^= 0xFF  # one flipped byte
    victim.write_bytes(bytes(data[: len(data) - 7]))  # and a torn tail
    gateway.start()
    log = gateway.log_text()
    assert "corrupt" in log.lower() or "truncat" in log.lower()
    with TestClient(gateway.port, "keeper", clean=False) as back:
        assert back.session_present
        got = [m.payload for m in back.expect(10)]
        assert got[0] == b"m0"
