"""The attacks of the security issue's first paragraph, made by real paho clients against a real
gateway with a password file, the default ACL and a TLS listener; each is refused.

Passwords are hashed with scrypt at log2(N) = 10 here to keep the suite fast; the gateway reads
the parameters from each hash.
"""

from __future__ import annotations

import os
import signal
import socket
import ssl
import urllib.request
from dataclasses import dataclass

import pytest

from ferry.certs import CertificateAuthority
from ferry.gateway.auth.passwords import PasswordFile
from ferry.gateway.config import ListenerConfig
from ferry.gateway.process import GatewayProcess
from ferry.gateway.tls import server_context
from ferry.process import free_port, wait_until
from tests.gateway.paho_client import TestClient

SITE = "farm"
USERS = {"dev-1": "pw-dev-1", "dev-2": "pw-dev-2", "ops": "pw-ops", "root": "pw-root"}
# paho reports a 3.1.1 CONNACK return code as the MQTT 5 reason code it maps to (4 → 0x86, 5 → 0x87, 2 → 0x85).
V311_BAD_CREDENTIALS, V311_NOT_AUTHORIZED, V311_IDENTIFIER_REJECTED = 0x86, 0x87, 0x85


@dataclass
class SecuredGateway:
    gateway: GatewayProcess
    tls_port: int
    ca: CertificateAuthority

    @property
    def port(self) -> int:
        return self.gateway.port

    def client(self, client_id: str, user: str | None = None, *, password: str | None = None,
               tls: dict | None = None, **kwargs) -> TestClient:
        """A client logged in as `user` with its own password unless `password` is given; over TLS
        (to the TLS listener, as localhost, the name in the server certificate) with `tls`."""
        if user is not None and password is None:
            password = USERS[user]
        if tls is not None:
            return TestClient(self.tls_port, client_id, username=user, password=password, tls=tls, host="localhost",
                              **kwargs)
        return TestClient(self.port, client_id, username=user, password=password, **kwargs)


@pytest.fixture(scope="module")
def secured(tmp_path_factory: pytest.TempPathFactory):
    folder = tmp_path_factory.mktemp("secured")
    passwords = PasswordFile.load(folder / "passwd", missing_ok=True)
    for user, password in USERS.items():
        passwords.set(user, password, log2_n=10)
    passwords.save(folder / "passwd")
    ca = CertificateAuthority(folder / "tls")
    server = ca.server()
    tls_port = free_port()
    config = f"""
[auth]
password_file = "{folder / 'passwd'}"
operators = ["ops"]
admins = ["root"]

[[listener]]
listen = "127.0.0.1:{tls_port}"
tls_cert = "{server.cert}"
tls_key = "{server.key}"
tls_client_ca = "{ca.pair.cert}"

[[acl]]
access = "deny"
action = "subscribe"
topic = "test/nosubscribe"
who = "everyone"
"""
    gateway = GatewayProcess(folder / "data", config_text=config, allow_anonymous=False,
                             metrics_port=free_port()).start()
    try:
        yield SecuredGateway(gateway, tls_port, ca)
    finally:
        gateway.stop()


def refused(secured: SecuredGateway, client_id: str, user: str | None, password: str | None = None,
            **kwargs) -> int:
    client = secured.client(client_id, user, password=password, **kwargs)
    try:
        return client.reason.value
    finally:
        client.close()


def test_anonymous_clients_are_refused(secured: SecuredGateway) -> None:
    assert refused(secured, "scanner", None) == V311_NOT_AUTHORIZED


def test_a_wrong_password_or_unknown_user_is_refused(secured: SecuredGateway) -> None:
    assert refused(secured, "dev-1", "dev-1", "guess") == V311_BAD_CREDENTIALS
    assert refused(secured, "nobody", "nobody", "x") == V311_BAD_CREDENTIALS


def test_nobody_takes_a_devices_client_id(secured: SecuredGateway) -> None:
    """Connecting as another device's client id would kick it off and take its session."""
    victim = secured.client("dev-1", "dev-1", clean=False)
    try:
        victim.subscribe(f"ferry/{SITE}/dev-1/cmd")
        assert refused(secured, "dev-1", "dev-2") == V311_IDENTIFIER_REJECTED
        assert refused(secured, "dev-1", "ops") == V311_IDENTIFIER_REJECTED
        assert refused(secured, "dev-2", "dev-1") == V311_IDENTIFIER_REJECTED  # a device is only itself
        with secured.client("console", "ops") as ops:
            ops.publish(f"ferry/{SITE}/dev-1/cmd", b'{"v":1,"id":"c1","op":"status"}')
        assert victim.expect(1)[0].payload.startswith(b'{"v":1,"id":"c1"')  # still connected, still its own
    finally:
        victim.close()


def test_a_device_publishes_only_its_own_topics(secured: SecuredGateway) -> None:
    with secured.client("watch", "ops") as watcher, secured.client("dev-1", "dev-1") as device:
        assert codes(watcher.subscribe("ferry/#")) == [1]
        device.publish(f"ferry/{SITE}/dev-1/telemetry", b"mine")
        assert watcher.expect(1)[0].topic == f"ferry/{SITE}/dev-1/telemetry"
        # Forged telemetry, a faked retained "offline" status, a command to another device, a $SYS
        # topic: each is acknowledged (3.1.1 has no negative PUBACK) and dropped.
        device.publish(f"ferry/{SITE}/dev-2/telemetry", b"forged")
        device.publish(f"ferry/{SITE}/dev-2/status", b'{"state":"offline"}', retain=True)
        device.publish(f"ferry/{SITE}/dev-2/cmd", b"reboot")
        device.publish("$SYS/broker/fake", b"x")
        watcher.expect_nothing(0.5)
    with secured.client("late", "ops") as late:
        late.subscribe(f"ferry/{SITE}/dev-2/status")
        late.expect_nothing(0.5)  # the forged retained status was never stored


def test_v5_publishers_are_told_not_authorized(secured: SecuredGateway) -> None:
    acks: list[int] = []
    with secured.client("dev-2", "dev-2", v5=True) as device, secured.client("console", "ops", v5=True) as ops:
        for client in (device, ops):
            client.client.on_publish = lambda c, u, mid, reason, props: acks.append(reason.value)
        device.client.publish(f"ferry/{SITE}/dev-1/telemetry", b"forged", qos=1).wait_for_publish(10)
        ops.client.publish(f"ferry/{SITE}/dev-2/telemetry", b"forged", qos=1).wait_for_publish(10)
        device.client.publish(f"ferry/{SITE}/dev-2/telemetry", b"mine", qos=1).wait_for_publish(10)
    assert acks[:2] == [0x87, 0x87] and acks[2] in (0x00, 0x10)


def codes(granted: list) -> list[int]:
    return [code.value if hasattr(code, "value") else int(code) for code in granted]


@pytest.mark.parametrize("user, topic_filter, granted", [
    ("dev-1", "#", 0x80),
    ("dev-1", "ferry/#", 0x80),
    ("dev-1", f"ferry/{SITE}/dev-2/cmd", 0x80),
    ("dev-1", f"ferry/{SITE}/dev-1/cmd", 1),
    ("dev-1", "$SYS/#", 0x80),
    ("ops", "$SYS/#", 0x80),
    ("ops", "#", 0x80),
    ("ops", "ferry/#", 1),
    ("root", "$SYS/#", 1),
    ("root", "#", 1),
    ("root", "test/nosubscribe", 0x80),  # one [[acl]] line denies it to everyone
    ("root", "test/+", 1),  # granted; its messages on test/nosubscribe are not delivered (below)
])
def test_subscriptions_follow_the_roles(secured: SecuredGateway, user: str, topic_filter: str,
                                        granted: int) -> None:
    client_id = user if user.startswith("dev-") else f"{user}-tool"
    with secured.client(client_id, user) as client:
        assert codes(client.subscribe(topic_filter)) == [granted]


def test_a_filter_overlapping_a_denied_one_gets_none_of_its_messages(secured: SecuredGateway) -> None:
    with secured.client("root-wide", "root") as reader, secured.client("root-pub", "root") as writer:
        assert codes(reader.subscribe("test/+")) == [1]
        writer.publish("test/nosubscribe", b"hidden")
        writer.publish("test/open", b"visible")
        assert [m.payload for m in reader.expect(1)] == [b"visible"]
        reader.expect_nothing(0.3)


def test_a_session_belongs_to_the_user_who_made_it(secured: SecuredGateway) -> None:
    """A non-device client id is not a user name, but its persistent session is still its maker's."""
    with secured.client("shared-console", "ops", clean=False) as console:
        console.subscribe("ferry/#")
    assert refused(secured, "shared-console", "root") == V311_NOT_AUTHORIZED
    assert refused(secured, "shared-console", "root", clean=True) == V311_NOT_AUTHORIZED  # nor end it
    with secured.client("shared-console", "ops", clean=False) as console:
        assert console.session_present


def test_will_topics_are_checked_too(secured: SecuredGateway) -> None:
    reason = refused(secured, "dev-1", "dev-1", will=(f"ferry/{SITE}/dev-2/status", b"offline", 1, True))
    assert reason == V311_NOT_AUTHORIZED


def tls(secured: SecuredGateway, **extra: str) -> dict:
    return {"ca_certs": str(secured.ca.pair.cert), **extra}


def test_tls_listener_with_password(secured: SecuredGateway) -> None:
    with secured.client("dev-1", "dev-1", tls=tls(secured)) as device, secured.client("watch", "ops") as watcher:
        watcher.subscribe(f"ferry/{SITE}/+/telemetry")
        device.publish(f"ferry/{SITE}/dev-1/telemetry", b"over tls")
        assert watcher.expect(1)[0].payload == b"over tls"


def test_a_client_certificate_names_the_user(secured: SecuredGateway) -> None:
    """No password: the certificate's common name is the user name, with that user's role."""
    pair = secured.ca.client("dev-2")
    with secured.client("dev-2", tls=tls(secured, certfile=str(pair.cert), keyfile=str(pair.key))) as device, \
            secured.client("watch2", "ops") as watcher:
        assert device.reason.value == 0
        watcher.subscribe(f"ferry/{SITE}/+/telemetry")
        device.publish(f"ferry/{SITE}/dev-1/telemetry", b"forged")  # dev-2 may not write dev-1's
        device.publish(f"ferry/{SITE}/dev-2/telemetry", b"by certificate")
        assert watcher.expect(1)[0].payload == b"by certificate"
    # The certificate proves dev-2, not the client id it would like.
    reason = refused(secured, "dev-1", None, tls=tls(secured, certfile=str(pair.cert), keyfile=str(pair.key)))
    assert reason == V311_IDENTIFIER_REJECTED


def test_tls_is_1_2_or_later_and_plain_mqtt_gets_nothing(secured: SecuredGateway) -> None:
    listener = ListenerConfig(listen="127.0.0.1:0", tls_cert=str(secured.ca.pair.cert), tls_key=str(secured.ca.pair.key))
    assert server_context("listener[0]", listener).minimum_version is ssl.TLSVersion.TLSv1_2
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    context.load_verify_locations(secured.ca.pair.cert)
    context.maximum_version = ssl.TLSVersion.TLSv1_2
    with socket.create_connection(("127.0.0.1", secured.tls_port), timeout=5) as raw:
        with context.wrap_socket(raw, server_hostname="localhost") as wrapped:
            assert wrapped.version() == "TLSv1.2"
    # A plain CONNECT on the TLS port gets no CONNACK.
    with socket.create_connection(("127.0.0.1", secured.tls_port), timeout=5) as raw:
        raw.sendall(bytes.fromhex("100c00044d5154540402003c0000"))
        try:
            answer = raw.recv(16)
        except ConnectionResetError:
            answer = b""
        assert not answer.startswith(b"\x20")


def test_denials_are_counted_in_the_metrics(secured: SecuredGateway) -> None:
    refused(secured, "scanner-2", None)
    with secured.client("dev-1", "dev-1") as device:
        device.subscribe("#")
        device.publish(f"ferry/{SITE}/dev-2/telemetry", b"forged")
    text = urllib.request.urlopen(f"http://127.0.0.1:{secured.gateway.metrics_port}/metrics", timeout=5).read().decode()
    counts = {line.split("{")[1].split("}")[0]: float(line.rsplit(" ", 1)[1])
              for line in text.splitlines() if line.startswith("ferry_access_denied_total{")}
    assert all(counts[f'action="{action}"'] >= 1 for action in ("connect", "publish", "subscribe")), counts


def test_a_password_file_change_applies_after_sighup(secured: SecuredGateway) -> None:
    path = secured.gateway.config_path.parent.parent / "passwd"
    passwords = PasswordFile.load(path)
    passwords.set("dev-3", "pw-dev-3", log2_n=10)
    passwords.save(path)
    assert refused(secured, "dev-3", "dev-3", "pw-dev-3") == V311_BAD_CREDENTIALS
    os.kill(secured.gateway.process.pid, signal.SIGHUP)
    assert wait_until(lambda: refused(secured, "dev-3", "dev-3", "pw-dev-3") == 0, 10)
