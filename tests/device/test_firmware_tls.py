"""Devices with credentials: the firmware on a virtual board (the real MicroPython unix port,
its mbedTLS) connecting to a real `ferry gateway` over its TLS listener with the password
`ferry passwd` provisioned, and what happens when anything about that is wrong.

The gateway lets no anonymous client in: a password file, one operator (the collector,
on the plain listener) and a TLS listener with a certificate from a test CA; the board
gets that CA as /ferry_ca.der (pinned) and its device id as user name.

- right CA, right password: connected over TLS, readings reach the collector;
- wrong password: CONNACK 4, logged as such, backed off (a handful of attempts, not a hot
  loop), no reading accepted, all kept in the outbox: once the gateway's password file holds
  the board's password (SIGHUP), every reading arrives;
- another CA, or a certificate for another name: the board refuses the gateway, its
  password never leaves it;
- plain MQTT only when `"tls": false` says so: without the CA file the firmware does not
  start (no connection at all), and TLS against a plain listener fails rather than falling
  back.
"""

from __future__ import annotations

import re
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.certs import CertificateAuthority
from ferry.gateway.auth.passwords import PasswordFile
from ferry.hwsim.board import VirtualBoard
from ferry.hwsim.fleet import ca_der
from tests.device.fw_support import (
    FAST_SETTINGS, Delivery, TlsGateway, console_lines, device_id, install_firmware, make_board, read_config,
    start_tls_gateway, write_config,
)

pytestmark = pytest.mark.integration

FAST = {**FAST_SETTINGS, "log_stats_every": 5}
STATS = re.compile(r"stats seq (\d+) .* pending (\d+) ")


@pytest.fixture
def tls_gateway(tmp_path: Path) -> Iterator[TlsGateway]:
    with start_tls_gateway(tmp_path) as tg:
        yield tg


@pytest.fixture
def boards() -> Iterator[list[VirtualBoard]]:
    made: list[VirtualBoard] = []
    yield made
    for b in made:
        b.stop()


def tls_board(tmp_path: Path, firmware: Path, made: list[VirtualBoard], tg: TlsGateway, *, password: str | None,
              ca: bytes | None = None, name: str = "tls", **settings: object) -> VirtualBoard:
    """A board with the firmware, the CA (default: the gateway's) and, as its MQTT password, `password`.

    broker_port (plain) is 1, where nothing listens: the board can only get in over TLS."""
    b = make_board(tmp_path, name, uid_last=len(made) + 1)
    config = {**FAST, "broker_port": 1, "broker_tls_port": tg.tls_port, **settings}
    if password is not None:
        config["mqtt_password"] = password
    install_firmware(b, firmware, ca=tg.ca_der if ca is None else ca, **config)
    made.append(b)
    return b


def connect_attempts(b: VirtualBoard) -> list[str]:
    return [m for m in console_lines(b, "mqtt: conn") if m.startswith(("mqtt: connect ", "mqtt: connected"))]


def test_board_connects_over_tls_with_its_provisioned_password(tmp_path: Path, firmware: Path,
                                                               tls_gateway: TlsGateway, boards: list) -> None:
    b = tls_board(tmp_path, firmware, boards, tls_gateway, password=None)
    dev = device_id(b)
    # What `ferry flash --password-file` does: the device id is the user name.
    write_config(b, {**read_config(b), "mqtt_password": tls_gateway.provision(dev)})
    collector = tls_gateway.collector()
    try:
        b.power_on()
        ok = collector.wait_for(lambda: len(collector.readings(dev)) >= 5, 15)
    finally:
        b.stop()
        collector.close()
    console = b.console()
    assert ok, console[-3000:]
    assert f"mqtt: gateway 127.0.0.1:{tls_gateway.tls_port}, tls, CA pinned, password" in console
    connected = [m for m in console_lines(b, "mqtt: connected") if m.endswith(", tls")]
    assert connected, console[-3000:]
    assert not console_lines(b, "mqtt: connect failed") and not console_lines(b, "mqtt: connect refused")
    got = Delivery.of(collector.readings(dev))
    assert got.gaps(1) == [] and got.duplicates() == 0
    births = [s for s in collector.statuses(dev) if s.state.value == "online"]
    assert births and births[0].boot == 1
    # The gateway knows it as the device it authenticated (user name = client id).
    assert f"connect {dev} from 127.0.0.1" in tls_gateway.gateway.log_text()
    heap = re.search(r"heap: free after imports (\d+), outbox (\d+), session (\d+)", console)
    first = re.search(r"heap: free (\d+) after the first connect", console)
    print(f"\nTLS board: {connected[0]}; heap after imports {heap.group(1)}, outbox {heap.group(2)}, session "
          f"(TLS context included) {heap.group(3)}, after the first connect {first.group(1)}; "
          f"{got.count(1)} readings")


def test_wrong_password_is_refused_backed_off_and_the_readings_wait(tmp_path: Path, firmware: Path,
                                                                    tls_gateway: TlsGateway, boards: list) -> None:
    b = tls_board(tmp_path, firmware, boards, tls_gateway, password="not-the-provisioned-one")
    dev = device_id(b)
    tls_gateway.provision(dev)  # the gateway knows the device, with another password
    collector = tls_gateway.collector()
    window_s = 4.0
    try:
        b.power_on()
        assert b.wait_for(lambda: console_lines(b, "mqtt: connect refused"), 10), b.console()[-3000:]
        before = len(console_lines(b, "mqtt: connect refused"))
        time.sleep(window_s)
        refused = console_lines(b, "mqtt: connect refused")
        in_window = len(refused) - before
        delays = [int(m.group(1)) for m in (re.match(r"mqtt: reconnect in (\d+) ms", x)
                                            for x in console_lines(b, "mqtt: reconnect in")) if m]
        accepted_meanwhile = len(collector.readings(dev))
        connected_meanwhile = console_lines(b, "mqtt: connected")
        stats = [tuple(map(int, m.groups())) for m in map(STATS.search, console_lines(b, "stats")) if m]
        # The gateway's password file now holds the board's password: the next attempt gets in,
        # and everything the board kept meanwhile arrives.
        passwords = PasswordFile.load(tls_gateway.password_file)
        passwords.set(dev, "not-the-provisioned-one")
        passwords.save(tls_gateway.password_file)
        tls_gateway.reload_passwords()
        fixed_at = time.monotonic()
        seq_then = stats[-1][0] if stats else 0
        delivered = collector.wait_for(lambda: Delivery.of(collector.readings(dev)).count(1) > seq_then, 15)
        after_fix_s = time.monotonic() - fixed_at
    finally:
        b.stop()
        collector.close()
    console = b.console()
    assert all(m.startswith("mqtt: connect refused: bad user name or password (CONNACK return code 4)")
               for m in refused), refused
    # Backed off like any failed connect: a few attempts in the window, not a hot loop, growing delays.
    assert 1 <= in_window <= 8, (in_window, refused)
    assert len(delays) >= 3 and delays[-1] >= FAST["backoff_min_ms"] and max(delays) > delays[0], delays
    assert accepted_meanwhile == 0 and connected_meanwhile == []
    # The readings were kept: the outbox's pending (on flash; up to outbox_flush_every more staged in RAM)
    # grew with seq while refused.
    assert stats and stats[-1][0] >= 10 and stats[-1][1] >= stats[-1][0] - FAST["outbox_flush_every"], stats
    assert delivered, console[-3000:]
    got = Delivery.of(collector.readings(dev))
    assert got.gaps(1) == [] and got.first_arrival_order_ok(1)
    print(f"\nwrong password: {in_window} refusals in {window_s:.0f} s, reconnect delays {delays} ms; "
          f"{seq_then} readings kept, all delivered {after_fix_s:.1f} s after the password file was fixed")


@pytest.mark.parametrize("case", ["another CA", "another name"])
def test_board_refuses_a_gateway_its_ca_does_not_vouch_for(tmp_path: Path, firmware: Path, tls_gateway: TlsGateway,
                                                           boards: list, case: str) -> None:
    """Another CA's certificate, or the right CA's certificate for another host name: no session,
    and the password never leaves the board (the gateway sees no CONNECT)."""
    if case == "another CA":
        ca = ca_der(CertificateAuthority(tmp_path / "other-ca", name="Another CA").pair.cert)
        server = None
        port = tls_gateway.tls_port
        reason = "The certificate is not correctly signed by the trusted CA"
    else:
        ca = None
        server = TlsServer(tls_gateway.ca.server(("gateway.invalid",), stem="other-name"))
        port = server.port
        reason = "The certificate Common Name (CN) does not match with the expected CN"
    dev = None
    try:
        b = tls_board(tmp_path, firmware, boards, tls_gateway, password="pw", ca=ca, broker_tls_port=port)
        dev = device_id(b)
        b.power_on()
        assert b.wait_for(lambda: len(console_lines(b, "mqtt: connect failed")) >= 2, 10), b.console()[-3000:]
        b.stop()
    finally:
        if server is not None:
            server.close()
    failed = console_lines(b, "mqtt: connect failed")
    assert all(f"tls: certificate refused: {reason}" in m for m in failed), failed
    assert not console_lines(b, "mqtt: connected")
    assert f"connect {dev}" not in tls_gateway.gateway.log_text()
    if server is not None:
        assert server.handshakes_failed and server.received == b""  # not a byte of MQTT
    print(f"\n{case}: {failed[0]}")


def test_plain_mqtt_only_when_the_settings_say_so(tmp_path: Path, firmware: Path, tls_gateway: TlsGateway,
                                                  boards: list) -> None:
    listener = CountingListener()
    try:
        # No CA on flash and no "tls": false: the firmware does not start, and never dials.
        silent = make_board(tmp_path, "no-ca", uid_last=9)
        install_firmware(silent, firmware, broker_port=listener.port, broker_tls_port=listener.port, **FAST)
        settings = (silent.flash_dir / "ferry_config.json").read_text()
        (silent.flash_dir / "ferry_config.json").write_text(settings.replace('"tls": false, ', ""))
        assert '"tls"' not in (silent.flash_dir / "ferry_config.json").read_text()
        boards.append(silent)
        # TLS on, pointed at the gateway's plain listener: the handshake fails; no fall-back, no CONNECT.
        wrong_port = tls_board(tmp_path, firmware, boards, tls_gateway, password="pw", name="tls-at-plain",
                               broker_tls_port=tls_gateway.gateway.port)
        silent.power_on()
        wrong_port.power_on()
        assert silent.wait_for(lambda: "config: " in silent.console(), 10), silent.console()[-2000:]
        assert wrong_port.wait_for(lambda: len(console_lines(wrong_port, "mqtt: connect failed")) >= 2, 10), \
            wrong_port.console()[-2000:]
        time.sleep(1.0)
    finally:
        for b in boards:
            b.stop()
        listener.close()
    assert "tls: no CA certificate at /ferry_ca.der" in silent.console()
    assert listener.accepted == 0
    assert not console_lines(wrong_port, "mqtt: connected")
    assert f"connect {device_id(wrong_port)}" not in tls_gateway.gateway.log_text()
    print(f"\nno CA: {silent.console().split('config: ')[1].splitlines()[0]}\nTLS against the plain listener: "
          f"{console_lines(wrong_port, 'mqtt: connect failed')[0]}")

    # Said explicitly, plain MQTT works (with the password, to the plain listener).
    plain = make_board(tmp_path, "plain", uid_last=10)
    dev = device_id(plain)
    install_firmware(plain, firmware, broker_port=tls_gateway.gateway.port, mqtt_password=tls_gateway.provision(dev),
                     **FAST)
    boards.append(plain)
    collector = tls_gateway.collector()
    try:
        plain.power_on()
        ok = collector.wait_for(lambda: len(collector.readings(dev)) >= 2, 15)
    finally:
        plain.stop()
        collector.close()
    assert ok, plain.console()[-3000:]
    assert f"mqtt: gateway 127.0.0.1:{tls_gateway.gateway.port}, plain (tls false), password" in plain.console()
    assert all(not m.endswith(", tls") for m in console_lines(plain, "mqtt: connected"))


class TlsServer:
    """A TLS listener with the given certificate that completes no MQTT: records handshakes and bytes."""

    def __init__(self, pair) -> None:
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(pair.cert, pair.key)
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.handshakes_failed = 0
        self.received = b""
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            conn.settimeout(5)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    self.received += tls.recv(1024)
            except (OSError, ssl.SSLError):
                self.handshakes_failed += 1
            finally:
                conn.close()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(5)


class CountingListener:
    """Accepts TCP connections and counts them (a board that must not dial at all)."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.accepted = 0
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.accepted += 1
            conn.close()

    def close(self) -> None:
        self.listener.close()
        self._thread.join(5)
