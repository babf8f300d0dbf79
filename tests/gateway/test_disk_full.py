"""A small filesystem filling up during an uplink outage, with real processes: below
`store.min_free_disk_bytes` the gateway refuses what it cannot keep (no acknowledgement, so devices
keep it), never crashes or crash-loops, starts again in that state, drains its spool when Kafka is
back, accepts publishes again once the space returned, and loses nothing it acknowledged."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.gateway.mqtt import Connect, ProtocolVersion, Publish, encode
from ferry.gateway.process import GatewayProcess
from ferry.process import free_port, wait_until
from tests.gateway.test_bridge import Uplink, bridge_toml, consume, create_topics, metrics, naming, uplink

__all__ = ["uplink"]  # the fixture, used below

V311 = ProtocolVersion.V311
FILESYSTEM_BYTES = 24 * 1024 * 1024
FLOOR_BYTES = 8 * 1024 * 1024
PADDING = b"x" * 8000


@pytest.fixture
def small_filesystem(tmp_path: Path) -> Iterator[Path]:
    """A tmpfs of 24 MiB the test mounts (and always unmounts); skipped where mounting is not allowed."""
    mount_point = tmp_path / "small"
    mount_point.mkdir()
    result = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={FILESYSTEM_BYTES}", "tmpfs", str(mount_point)],
                            capture_output=True, text=True)
    if result.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here (needs root): {result.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=False)


def reading(seq: int) -> bytes:
    """A large message (so the small filesystem fills fast); off the contract, so Kafka gets it on
    the dead-letter topic, which is as good as any for counting."""
    return (b'{"v":1,"dev":"dev-1","boot":1,"seq":%d,"ts":%d,"sync":true,"m":{"temp_c":21.5},"pad":"%s"}'
            % (seq, 1_732_480_000_000 + seq, PADDING))


def publish_until_refused(port: int, first_seq: int, limit: int) -> int:
    """QoS 1 readings one at a time, each waiting for its PUBACK; returns how many were acknowledged
    before the gateway refused one (closed the connection without a PUBACK)."""
    acked = 0
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.settimeout(10)
        sock.sendall(encode(Connect("dev-1", V311, True, 600), V311))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        for n in range(limit):
            sock.sendall(encode(Publish("ferry/s/dev-1/telemetry", reading(first_seq + n), 1,
                                        packet_id=n % 65535 + 1), V311))
            answer = sock.recv(4)
            if not answer:
                return acked
            assert answer == b"\x40\x02" + (n % 65535 + 1).to_bytes(2, "big")
            acked += 1
    return acked


def test_low_disk_refuses_then_drains_and_recovers_without_a_restart(uplink: Uplink, small_filesystem: Path,
                                                                   tmp_path: Path) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()
    config = f"[store]\nmin_free_disk_bytes = {FLOOR_BYTES}\n\n" + bridge_toml(names, uplink.bootstrap)
    gateway = GatewayProcess(small_filesystem / "gw", config_text=config, metrics_port=free_port())
    gateway.start()
    try:
        acked = publish_until_refused(gateway.port, 0, 20_000)
        assert 0 < acked < 20_000
        assert gateway.process.poll() is None, gateway.log_text()[-3000:]
        values = metrics(gateway)
        assert values["ferry_store_disk_low"] == 1
        assert values['ferry_publishes_refused_total{reason="disk_low"}'] >= 1
        assert values["ferry_bridge_spool_messages"] == acked
        assert "free disk below" in gateway.log_text()

        # A restart in this state starts (no crash loop) and still refuses.
        gateway.stop()
        gateway.start()
        assert publish_until_refused(gateway.port, acked, 10) == 0

        # Kafka back: the spool drains, its files go, and publishes are accepted again.
        uplink.up()
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, 120, poll_s=0.5)
        assert wait_until(lambda: metrics(gateway)["ferry_store_disk_low"] == 0, 30, poll_s=0.5)
        assert publish_until_refused(gateway.port, acked, 10) == 10
        assert "accepting publishes" in gateway.log_text()
        assert gateway.process.poll() is None
    finally:
        gateway.stop()
    records = consume(uplink.bootstrap, [names.telemetry_topic, names.deadletter_topic],
                      lambda r: len(r) >= acked + 10, timeout_s=60, linger_s=1.0)
    assert sorted({json.loads(r.value())["seq"] for r in records}) == list(range(acked + 10))
