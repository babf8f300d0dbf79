"""docs/raspberry-pi.md's backup: stop the gateway, archive its data dir, and a gateway started on the
restored copy (another machine, another path) has every session, queued message and retained message."""

from __future__ import annotations

import tarfile
import threading
import time
from pathlib import Path

import paho.mqtt.client as mqtt

from ferry.gateway.process import GatewayProcess


def connect(port: int, client_id: str, clean: bool, subscribe: str | None = None
            ) -> tuple[mqtt.Client, list[mqtt.MQTTMessage]]:
    """A paho client, connected (and subscribed at QoS 1 with its SUBACK received, if asked)."""
    received: list[mqtt.MQTTMessage] = []
    connected, subscribed = threading.Event(), threading.Event()
    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv311,
                         clean_session=clean)
    client.on_message = lambda c, u, message: received.append(message)
    client.on_connect = lambda *args: connected.set()
    client.on_subscribe = lambda *args: subscribed.set()
    client.connect("127.0.0.1", port, 30)
    client.loop_start()
    assert connected.wait(10)
    if subscribe is not None:
        client.subscribe(subscribe, qos=1)
        assert subscribed.wait(10)
    return client, received


def wait_for(received: list, count: int) -> None:
    deadline = time.monotonic() + 10
    while len(received) < count and time.monotonic() < deadline:
        time.sleep(0.05)


def close(client: mqtt.Client) -> None:
    client.disconnect()
    client.loop_stop()


def test_a_restored_backup_holds_sessions_queues_and_retained(tmp_path: Path) -> None:
    data = tmp_path / "var-lib-ferry"
    with GatewayProcess(data) as gateway:
        subscriber, _ = connect(gateway.port, "operator-console", clean=False, subscribe="ferry/+/+/status")
        close(subscriber)  # offline: what follows is queued for it
        publisher, _ = connect(gateway.port, "dev-1", clean=True)
        for n in range(5):
            publisher.publish("ferry/site/dev-1/status", f"queued {n}".encode(), qos=1).wait_for_publish(10)
        publisher.publish("ferry/site/dev-1/status", b"retained", qos=1, retain=True).wait_for_publish(10)
        close(publisher)
    assert gateway.process.poll() == 0  # stopped first: the archive is a consistent copy

    archive = tmp_path / "ferry-backup.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:  # `tar -C /var/lib -czf ferry-backup.tgz ferry`
        tar.add(data, arcname="ferry")
    restored = tmp_path / "elsewhere"
    with tarfile.open(archive) as tar:
        tar.extractall(restored, filter="data")

    with GatewayProcess(restored / "ferry") as gateway:
        subscriber, received = connect(gateway.port, "operator-console", clean=False)
        wait_for(received, 6)
        close(subscriber)
        assert [m.payload for m in received] == [f"queued {n}".encode() for n in range(5)] + [b"retained"]
        late, late_received = connect(gateway.port, "late-reader", clean=True, subscribe="ferry/site/dev-1/status")
        wait_for(late_received, 1)
        close(late)
        assert [(m.payload, m.retain) for m in late_received] == [(b"retained", True)]
