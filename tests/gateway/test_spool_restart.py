"""A 200,000-message spool, with real processes: it fills during an uplink outage, the gateway is
SIGKILLed and restarted, and its memory stays bounded throughout; then it drains into Kafka with
every reading there. (1M and 10M are `ferry bench bridge`'s business.)"""

from __future__ import annotations

import socket
import time
from pathlib import Path

from ferry.gateway.mqtt import Connect, ProtocolVersion, Publish, encode
from ferry.gateway.process import GatewayProcess
from ferry.process import free_port, wait_until
from tests.gateway.test_bridge import (
    Uplink, bridge_toml, consume, create_topics, metrics, naming, reading, readings_by_device, uplink,
)

__all__ = ["uplink"]  # the fixture, used below

V311 = ProtocolVersion.V311
MESSAGES = 200_000
DEVICES = 20
RSS_BOUND_BYTES = 150 * 1024 * 1024
"""The issue's bound for a 10M spool; at 200,000 the gateway must be far below it."""


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def publish_pipelined(port: int, messages: list[tuple[str, bytes]]) -> None:
    """MQTT 3.1.1 QoS 1 publishes sent back to back on one socket; returns once every PUBACK came."""
    with socket.create_connection(("127.0.0.1", port)) as sock:
        sock.sendall(encode(Connect("loader", V311, True, 600), V311))
        assert sock.recv(4) == b"\x20\x02\x00\x00"
        chunk = []
        for n, (topic, payload) in enumerate(messages):
            chunk.append(encode(Publish(topic, payload, 1, packet_id=n % 65535 + 1), V311))
            if len(chunk) == 5000:
                sock.sendall(b"".join(chunk))
                chunk = []
        sock.sendall(b"".join(chunk))
        expected = 4 * len(messages)
        received = 0
        sock.settimeout(120)
        while received < expected:
            data = sock.recv(1 << 20)
            assert data, "the gateway closed the connection"
            received += len(data)


def test_a_200k_spool_survives_a_kill_with_bounded_memory_and_drains(uplink: Uplink, tmp_path: Path) -> None:
    names = naming()
    create_topics(uplink.bootstrap, names)
    uplink.down()
    # One loader publishes the 200,000 back to back: above the default broker.max_publish_rate.
    gateway = GatewayProcess(tmp_path / "gw", config_text=bridge_toml(names, uplink.bootstrap)
                             + "\n[broker]\nmax_publish_rate = 0\n", metrics_port=free_port())
    gateway.start()
    try:
        messages = [(f"ferry/s/dev-{n % DEVICES}/telemetry", reading(f"dev-{n % DEVICES}", n // DEVICES))
                    for n in range(MESSAGES)]
        publish_pipelined(gateway.port, messages)
        assert metrics(gateway)["ferry_bridge_spool_messages"] == MESSAGES
        filled_rss = rss_bytes(gateway.process.pid)

        gateway.kill()
        started = time.monotonic()
        gateway.start()
        restart_s = time.monotonic() - started
        restarted_rss = rss_bytes(gateway.process.pid)
        assert metrics(gateway)["ferry_bridge_spool_messages"] == MESSAGES
        print(f"200,000 spooled: RSS {filled_rss / 2**20:.1f} MiB filled, {restarted_rss / 2**20:.1f} MiB after "
              f"a SIGKILL and restart, which took {restart_s:.2f} s")
        assert filled_rss < RSS_BOUND_BYTES and restarted_rss < RSS_BOUND_BYTES

        uplink.up()
        assert wait_until(lambda: metrics(gateway)["ferry_bridge_spool_messages"] == 0, 180, poll_s=0.5)
        drained_rss = rss_bytes(gateway.process.pid)
        print(f"drained: RSS {drained_rss / 2**20:.1f} MiB")
        assert drained_rss < RSS_BOUND_BYTES
        spool_files = list((tmp_path / "gw" / "store" / "spool").glob("*.spool"))
        assert len(spool_files) <= 1  # drained files are deleted (the one being written stays)
    finally:
        gateway.stop()
    records = consume(uplink.bootstrap, [names.telemetry_topic],
                      lambda r: len(r) >= MESSAGES, timeout_s=120, linger_s=1.0)
    seen = readings_by_device(records)
    assert {dev: sorted(set(seqs)) for dev, seqs in seen.items()} == \
        {f"dev-{d}": list(range(MESSAGES // DEVICES)) for d in range(DEVICES)}

