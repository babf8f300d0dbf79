"""The local Kafka-compatible broker fixture: a real produce and consume through it."""

from __future__ import annotations

import uuid

from confluent_kafka import Consumer, Producer

from ferry.local_kafka import LocalKafka, metadata_answers
from ferry.process import free_port


def test_record_round_trips_through_the_local_broker(kafka: LocalKafka) -> None:
    topic = f"roundtrip-{uuid.uuid4().hex[:8]}"
    producer = Producer({"bootstrap.servers": kafka.bootstrap_servers, "enable.idempotence": True,
                         "acks": "all"})
    delivered = []
    producer.produce(topic, key=b"dev-1", value=b'{"seq":0}', headers=[("ferry-site", b"s")],
                     on_delivery=lambda err, msg: delivered.append((err, msg)))
    assert producer.flush(30) == 0
    assert delivered and delivered[0][0] is None

    consumer = Consumer({"bootstrap.servers": kafka.bootstrap_servers, "group.id": f"g-{topic}",
                         "auto.offset.reset": "earliest", "session.timeout.ms": 6000})
    try:
        consumer.subscribe([topic])
        message = None
        for _ in range(60):
            message = consumer.poll(0.5)
            if message is not None and message.error() is None:
                break
        assert message is not None and message.error() is None
        assert (message.key(), message.value()) == (b"dev-1", b'{"seq":0}')
        assert message.headers() == [("ferry-site", b"s")]
    finally:
        consumer.close()


def test_broker_stops_and_frees_its_port(tmp_path) -> None:
    broker = LocalKafka(tmp_path).start()
    assert metadata_answers(broker.host, broker.port)
    broker.stop()
    assert broker.process.poll() is not None
    assert not metadata_answers(broker.host, broker.port)


def test_probe_says_no_when_nothing_listens() -> None:
    assert not metadata_answers("127.0.0.1", free_port())
