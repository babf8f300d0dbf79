"""paho-mqtt clients for tests: connect synchronously and collect what arrives in a queue."""

from __future__ import annotations

import queue
import threading

import paho.mqtt.client as mqtt
from paho.mqtt.properties import Properties
from paho.mqtt.packettypes import PacketTypes

TIMEOUT_S = 10.0


class TestClient:
    """One paho client on its own network thread."""

    __test__ = False

    def __init__(self, port: int, client_id: str, *, v5: bool = False, clean: bool = True,
                 session_expiry_s: int | None = None, will: tuple[str, bytes, int, bool] | None = None,
                 keepalive_s: int = 60, host: str = "127.0.0.1", username: str | None = None,
                 password: str | None = None, tls: dict | None = None) -> None:
        self.v5 = v5
        protocol = mqtt.MQTTv5 if v5 else mqtt.MQTTv311
        kwargs = {} if v5 else {"clean_session": clean}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, protocol=protocol,
                                  **kwargs)
        self.messages: queue.Queue[mqtt.MQTTMessage] = queue.Queue()
        self.connack: queue.Queue[tuple] = queue.Queue()
        self.disconnects: queue.Queue[object] = queue.Queue()
        self.client.on_message = lambda c, u, msg: self.messages.put(msg)
        self.client.on_connect = lambda c, u, flags, rc, props: self.connack.put((flags, rc, props))
        self.client.on_disconnect = lambda c, u, flags, rc, props: self.disconnects.put(rc)
        if will is not None:
            self.client.will_set(*will)
        if username is not None:
            self.client.username_pw_set(username, password)
        if tls is not None:  # ca_certs=, certfile=, keyfile= of paho's tls_set
            self.client.tls_set(**tls)
        connect_props = None
        if v5:
            connect_props = Properties(PacketTypes.CONNECT)
            if session_expiry_s is not None:
                connect_props.SessionExpiryInterval = session_expiry_s
        self.client.connect(host, port, keepalive_s, clean_start=clean if v5 else mqtt.MQTT_CLEAN_START_FIRST_ONLY,
                            properties=connect_props)
        self.client.loop_start()
        self.flags, self.reason, self.connack_props = self.connack.get(timeout=TIMEOUT_S)

    @property
    def session_present(self) -> bool:
        return bool(self.flags.session_present)

    def subscribe(self, topic: str, qos: int = 1, **options) -> list:
        done = threading.Event()
        granted: list = []

        def on_subscribe(client, userdata, mid, reason_codes, props):
            granted.extend(reason_codes)
            done.set()

        self.client.on_subscribe = on_subscribe
        if self.v5:
            from paho.mqtt.subscribeoptions import SubscribeOptions
            props = options.pop("properties", None)
            self.client.subscribe(topic, options=SubscribeOptions(qos=qos, **options), properties=props)
        else:
            self.client.subscribe(topic, qos)
        assert done.wait(TIMEOUT_S), f"no SUBACK for {topic}"
        return granted

    def publish(self, topic: str, payload: bytes, qos: int = 1, retain: bool = False, properties=None) -> None:
        info = self.client.publish(topic, payload, qos, retain, properties=properties)
        info.wait_for_publish(TIMEOUT_S)
        assert info.is_published(), f"publish to {topic} not acknowledged"

    def expect(self, count: int = 1, timeout_s: float = TIMEOUT_S) -> list[mqtt.MQTTMessage]:
        return [self.messages.get(timeout=timeout_s) for _ in range(count)]

    def expect_nothing(self, wait_s: float = 0.5) -> None:
        try:
            message = self.messages.get(timeout=wait_s)
        except queue.Empty:
            return
        raise AssertionError(f"unexpected message on {message.topic}: {message.payload!r}")

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> "TestClient":
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()
