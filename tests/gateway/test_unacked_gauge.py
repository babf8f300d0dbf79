"""`ferry_bridge_unacked_records`: every record Kafka has not acknowledged, wherever the bridge holds it.

One real Gateway with Kafka replaced by a fake producer that answers nothing until the test says
so (Kafka down, as far as acknowledgements go), read through its real metrics endpoint.
"""

from __future__ import annotations

import asyncio
import urllib.request
from pathlib import Path

import pytest

from ferry.gateway.bridge import bridge as bridge_module
from ferry.gateway.metrics import MetricsServer
from ferry.gateway.mqtt import Puback
from ferry.server.pipeline import parse_exposition
from tests.gateway.test_bridge_flow import FakeKafka, until
from tests.gateway.test_bridge_rejected import Device, started


def reading(seq: int) -> bytes:
    return b'{"v":1,"dev":"dev1","boot":1,"seq":%d,"ts":1732480000123,"sync":true,"m":{"t_c":1}}' % seq


async def scrape(port: int) -> dict[str, float]:
    """The gateway's /metrics over HTTP, unlabelled samples by name."""
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            return response.read().decode()
    families = parse_exposition(await asyncio.get_running_loop().run_in_executor(None, get))
    return {name: family.value() for name, family in families.items() if family.value() is not None}


def test_every_record_kafka_has_not_acknowledged_is_counted(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """QoS 0 readings never enter the spool: `ferry_bridge_spool_messages` does not see them while
    they wait for Kafka; the new gauge counts them with the spooled ones."""
    monkeypatch.setattr(bridge_module, "KafkaSide", FakeKafka)
    qos1, qos0 = 7, 5

    async def main() -> None:
        gateway, port = await started(tmp_path, "inflight = 3\n")
        server = MetricsServer(gateway.server.broker, gateway.server, gateway.journal, gateway.bridge,
                               gateway.disk_guard)
        _, metrics_port = await server.start("127.0.0.1", 0)
        try:
            kafka: FakeKafka = gateway.bridge.kafka
            device = await Device.connect(port)
            for seq in range(qos1):
                device.publish("ferry/s/dev1/telemetry", reading(seq), packet_id=seq + 1)
            for seq in range(qos1, qos1 + qos0):
                device.publish("ferry/s/dev1/telemetry", reading(seq), qos=0)
            for seq in range(qos1):
                assert await device.next_packet() == Puback(seq + 1)  # spooled: acknowledged to the device
            # 3 spooled in flight (bridge.inflight) + 5 QoS 0: handed to "Kafka", none acknowledged.
            await until(lambda: len(kafka.produced) == 3 + qos0)
            values = await scrape(metrics_port)
            assert values["ferry_bridge_spool_messages"] == qos1  # the QoS 0 readings are not in it
            assert values["ferry_bridge_qos0_pending"] == qos0
            assert values["ferry_bridge_unacked_records"] == qos1 + qos0
            assert values["ferry_bridge_acked_total"] == 0
            assert (values["ferry_client_connections"], values["ferry_connections"]) == (1, 2)  # + the bridge's

            delivered = 0
            while delivered < qos1 + qos0:  # Kafka answers: the spool drains, 3 in flight at a time
                await until(lambda: len(kafka.produced) > delivered)
                kafka.deliver(delivered)
                delivered += 1
            await until(lambda: gateway.bridge.unacknowledged() == 0)
            values = await scrape(metrics_port)
            assert values["ferry_bridge_unacked_records"] == 0
            assert values["ferry_bridge_acked_total"] == qos1 + qos0
            assert values["ferry_store_free_bytes"] > 0  # the free disk the pipeline view shows
        finally:
            await server.stop()
            await gateway.stop()

    asyncio.run(main())

