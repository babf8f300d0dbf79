"""The link simulator between a Kafka client and the Kafka-protocol broker (the gateway → Kafka hop).

The broker advertises the link's port, so after bootstrap every connection the
client makes goes through the link too; an outage holds the records back and
the client delivers them, each once, when the link comes back.
"""

from __future__ import annotations

import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer
from confluent_kafka.admin import AdminClient, NewTopic

from ferry.local_kafka import LocalKafka
from ferry.process import free_port
from ferry.hwsim.link import LinkConfig, LinkProcess, resolve_profile

pytestmark = pytest.mark.integration


def test_records_ride_out_an_outage_of_the_link_to_kafka(tmp_path: Path) -> None:
    link_port = free_port()
    with LocalKafka(tmp_path, advertised_port=link_port) as kafka, \
            LinkProcess([LinkConfig("127.0.0.1", kafka.port, name="uplink", listen_port=link_port,
                                    profile=resolve_profile("wifi-good"))], tmp_path) as link:
        through_link = f"127.0.0.1:{link_port}"
        topic = f"uplink-{uuid.uuid4().hex[:8]}"
        admin = AdminClient({"bootstrap.servers": through_link})
        admin.create_topics([NewTopic(topic, 1, 1)])[topic].result(30)
        producer = Producer({"bootstrap.servers": through_link, "enable.idempotence": True, "acks": "all",
                             "message.timeout.ms": 120_000, "reconnect.backoff.max.ms": 500})
        for i in range(50):
            producer.produce(topic, b"before-%d" % i, b"dev")
        assert producer.flush(30) == 0
        before = link.stats("uplink")["uplink"]
        assert before.bytes_upstream > 0 and before.bytes_downstream > 0

        link.set_profile("outage", "uplink")
        for i in range(50):
            producer.produce(topic, b"during-%d" % i, b"dev")
        assert producer.flush(3) > 0, "records must not reach the broker while the link is down"
        assert link.stats("uplink")["uplink"].cuts >= 1

        link.set_profile("wifi-good", "uplink")
        assert producer.flush(60) == 0

        consumer = Consumer({"bootstrap.servers": through_link, "group.id": f"check-{uuid.uuid4().hex}",
                             "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
        consumer.subscribe([topic])
        values: list[bytes] = []
        deadline = time.monotonic() + 60
        try:
            while len(values) < 100 and time.monotonic() < deadline:
                message = consumer.poll(0.5)
                if message is not None and message.error() is None:
                    values.append(message.value())
        finally:
            consumer.close()
        expected = [b"before-%d" % i for i in range(50)] + [b"during-%d" % i for i in range(50)]
        assert values == expected  # all of them, in order, each once (the producer is idempotent)
