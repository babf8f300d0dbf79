"""The peer's Kafka forwarder: `python -m ferry.bench.forwarder --mqtt H:P --kafka H:P --status FILE`.

What users build today next to Mosquitto: a paho-mqtt client with a
persistent session (clean session 0, QoS 1 subscription to `ferry/#`) that
produces every message with confluent-kafka and acknowledges it to Mosquitto
only from Kafka's delivery report (paho's `manual_ack=True` and
`client.ack(mid, qos)`), so Mosquitto keeps what Kafka has not taken yet.
For a fair comparison it makes the same records as Ferry's bridge
(`ferry.contract.kafka_record`) with the same producer settings (idempotent,
acks=all, murmur2, `message.timeout.ms` 0: `ferry.gateway.bridge.producer`).

Threads, as paho and confluent-kafka are usually combined: paho's network
loop (`loop_start`) receives and produces; the main thread polls the producer,
whose delivery reports send the PUBACKs (`ack` is thread-safe), and writes the
counters to `--status` every 0.1 s for the bench to read.
"""

from __future__ import annotations

import argparse
import logging
import signal
import sys
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt
from confluent_kafka import KafkaError, Producer

from ferry.bench.bridge_model import PROGRESS_INTERVAL_S, ForwarderStatus, write_json_atomic
from ferry.contract import BridgeNaming, kafka_record
from ferry.gateway.bridge.config import BridgeConfig
from ferry.gateway.bridge.producer import producer_settings

log = logging.getLogger(__name__)

CLIENT_ID = "kafka-forwarder"
TOPIC_FILTER = "ferry/#"
KEEPALIVE_S = 60
STOP_FLUSH_S = 5.0


class Forwarder:
    """Mosquitto → Kafka, one PUBACK per record Kafka acknowledged."""

    def __init__(self, mqtt_host: str, mqtt_port: int, kafka: str, gateway_id: str, status_path: Path) -> None:
        self.naming = BridgeNaming(gateway_id)
        self.status_path = status_path
        settings = producer_settings(BridgeConfig(kafka=kafka, gateway_id=gateway_id))
        settings["client.id"] = CLIENT_ID
        self.producer = Producer({**settings, "error_cb": self._on_kafka_error})
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, clean_session=False,
                                  protocol=mqtt.MQTTv311, manual_ack=True)
        self.client.on_connect = self._on_connect
        self.client.on_subscribe = self._on_subscribe
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message
        self.mqtt_address = (mqtt_host, mqtt_port)
        self.received = 0
        self.acked = 0
        self.errors = 0
        self.connected = False
        self.failed = False
        """The producer failed fatally: the forwarder stops and exits with 1."""
        self.generation = 0
        """Bumped on every (re)connect: a delivery report from an older connection must not PUBACK
        a packet id the new connection reuses (Mosquitto redelivers that message anyway)."""
        self.stopping = threading.Event()

    # ------------------------------------------------------------------ paho's thread

    def _on_connect(self, client, userdata, flags, reason_code, properties) -> None:
        if reason_code.is_failure:
            log.error("Mosquitto refused the connection: %s", reason_code)
            return
        self.generation += 1
        log.info("connected to Mosquitto (session present: %s)", flags.session_present)
        # Subscribing again on every connect: a broker that lost the session (a crash with
        # nothing saved) would otherwise never send anything again.
        client.subscribe(TOPIC_FILTER, qos=1)

    def _on_subscribe(self, client, userdata, mid, reason_codes, properties) -> None:
        if any(code.is_failure for code in reason_codes):
            log.error("Mosquitto refused the subscription: %s", reason_codes)
        else:
            self.connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties) -> None:
        self.connected = False
        if not self.stopping.is_set():
            log.warning("disconnected from Mosquitto (%s); paho reconnects", reason_code)

    def _on_message(self, client, userdata, message: mqtt.MQTTMessage) -> None:
        self.received += 1
        record = kafka_record(self.naming, message.topic, message.payload, int(time.time() * 1000))
        generation, mid, qos = self.generation, message.mid, message.qos
        self.producer.produce(record.topic, record.value, record.key, headers=list(record.headers),
                              timestamp=record.timestamp_ms,
                              on_delivery=lambda error, _record: self._on_delivery(error, generation, mid, qos))

    # ------------------------------------------------------------------ main thread (producer.poll)

    def _on_delivery(self, error: KafkaError | None, generation: int, mid: int, qos: int) -> None:
        if error is not None:
            # Not acknowledged: Mosquitto delivers it again after the next reconnect.
            self.errors += 1
            log.warning("Kafka did not take a record: %s", error.str())
            return
        self.acked += 1
        if qos and generation == self.generation:
            self.client.ack(mid, qos)

    def _on_kafka_error(self, error: KafkaError) -> None:
        if error.fatal():
            log.error("Kafka producer failed fatally: %s", error.str())
            self.failed = True
            self.stopping.set()
        else:
            log.debug("kafka: %s", error.str())

    def run(self) -> int:
        self.client.connect_async(*self.mqtt_address, keepalive=KEEPALIVE_S)
        self.client.loop_start()
        next_status = 0.0
        try:
            while not self.stopping.is_set():
                self.producer.poll(0.01)
                now = time.monotonic()
                if now >= next_status:
                    self._write_status(now)
                    next_status = now + PROGRESS_INTERVAL_S
            left = self.producer.flush(STOP_FLUSH_S)
            if left:
                log.info("stopped with %d record(s) not acknowledged by Kafka; Mosquitto keeps them", left)
            self._write_status(time.monotonic())
        finally:
            self.client.disconnect()
            self.client.loop_stop()
        return 1 if self.failed else 0

    def _write_status(self, now: float) -> None:
        write_json_atomic(ForwarderStatus(now, self.received, self.acked, self.errors, self.connected),
                          self.status_path)


def _address(text: str) -> tuple[str, int]:
    host, _, port = text.rpartition(":")
    return host, int(port)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m ferry.bench.forwarder", description=__doc__.split("\n\n")[0])
    parser.add_argument("--mqtt", type=_address, required=True, metavar="HOST:PORT")
    parser.add_argument("--kafka", required=True, metavar="HOST:PORT")
    parser.add_argument("--status", type=Path, required=True, metavar="FILE")
    parser.add_argument("--gateway-id", default="bench-peer")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s")
    forwarder = Forwarder(*args.mqtt, args.kafka, args.gateway_id, args.status)
    signal.signal(signal.SIGTERM, lambda signum, frame: forwarder.stopping.set())
    return forwarder.run()


if __name__ == "__main__":
    sys.exit(main())
