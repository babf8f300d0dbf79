"""`ferry gateway` as a systemd service: readiness and watchdog on NOTIFY_SOCKET, journald log lines,
the unit and the sample config it ships."""

from __future__ import annotations

import dataclasses
import logging
import os
import re
import shutil
import socket
import subprocess
import sys
import tomllib
import typing
from pathlib import Path

import pytest

from ferry.gateway import systemd
from ferry.gateway.auth.passwords import PasswordFile
from ferry.gateway.config import GatewayConfig
from ferry.gateway.main import SAMPLE_CONFIG, SYSTEMD_UNIT
from ferry.gateway.process import GatewayProcess, accepts_connections
from ferry.process import wait_until


class NotifySocket:
    """A fake service manager: the datagram socket systemd names in NOTIFY_SOCKET."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.1)
        self.messages: list[str] = []

    def receive(self) -> list[str]:
        while True:
            try:
                self.messages.append(self.sock.recv(4096).decode())
            except (TimeoutError, BlockingIOError):
                return self.messages

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def notify_socket(tmp_path: Path):
    fake = NotifySocket(tmp_path / "notify")
    yield fake
    fake.close()


def test_notify_sends_one_datagram(notify_socket: NotifySocket) -> None:
    assert systemd.notify("READY=1", {"NOTIFY_SOCKET": str(notify_socket.path)})
    assert notify_socket.receive() == ["READY=1"]


def test_notify_abstract_socket() -> None:
    name = f"ferry-test-{os.getpid()}"
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.bind("\0" + name)
        assert systemd.notify("READY=1", {"NOTIFY_SOCKET": "@" + name})
        assert sock.recv(100) == b"READY=1"


def test_notify_without_a_service_manager_does_nothing(tmp_path: Path, caplog) -> None:
    assert not systemd.notify("READY=1", {})
    with caplog.at_level(logging.WARNING):
        assert not systemd.notify("READY=1", {"NOTIFY_SOCKET": str(tmp_path / "absent")})
    assert "cannot notify" in caplog.text


def test_watchdog_interval_is_half_the_timeout() -> None:
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000"}) == 15.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": str(os.getpid())}) == 15.0
    assert systemd.watchdog_interval_s({"WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1"}) is None
    assert systemd.watchdog_interval_s({}) is None


def test_journal_lines_carry_the_syslog_priority() -> None:
    formatter = systemd.JournalFormatter()
    record = logging.LogRecord("ferry.gateway", logging.WARNING, __file__, 1, "spool %d%% full", (90,), None)
    assert formatter.format(record) == "<4>ferry.gateway: spool 90% full"
    record = logging.LogRecord("x", logging.ERROR, __file__, 1, "two\nlines", (), None)
    assert formatter.format(record) == "<3>x: two\n<3>lines"
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "m", (), None)
    assert formatter.format(record).startswith("<6>")


def test_journal_stream_is_recognised_by_device_and_inode(tmp_path: Path, monkeypatch) -> None:
    stderr = open(tmp_path / "stderr", "w")
    monkeypatch.setattr(sys, "stderr", stderr)
    stat = os.fstat(stderr.fileno())
    try:
        assert systemd.stderr_is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino}"})
        assert not systemd.stderr_is_journal({"JOURNAL_STREAM": f"{stat.st_dev}:{stat.st_ino + 1}"})
        assert not systemd.stderr_is_journal({})
    finally:
        stderr.close()


def test_gateway_says_ready_once_listening_and_stopping_on_sigterm(tmp_path: Path,
                                                                   notify_socket: NotifySocket) -> None:
    gateway = GatewayProcess(tmp_path / "gw", env={"NOTIFY_SOCKET": str(notify_socket.path),
                                                   "WATCHDOG_USEC": "200000"})
    with gateway:
        assert wait_until(lambda: any(m.startswith("READY=1") for m in notify_socket.receive()), 10)
        ready = next(m for m in notify_socket.messages if m.startswith("READY=1"))
        assert f"STATUS=listening on 127.0.0.1:{gateway.port}" in ready.split("\n")
        assert accepts_connections("127.0.0.1", gateway.port)
        # The event loop feeds the watchdog every WATCHDOG_USEC / 2.
        assert wait_until(lambda: notify_socket.receive().count("WATCHDOG=1") >= 3, 10)
    assert gateway.process.poll() == 0
    assert "STOPPING=1" in notify_socket.receive()


def test_unit_is_accepted_by_systemd_analyze(tmp_path: Path) -> None:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.skip("systemd-analyze is not installed here")
    text = SYSTEMD_UNIT.read_text()
    assert "/opt/ferry/bin/ferry gateway --config /etc/ferry/ferry.toml" in text
    # verify checks that ExecStart's program exists: point it at this environment's `ferry`.
    ferry = Path(sys.executable).with_name("ferry")
    unit = tmp_path / "ferry-gateway.service"
    unit.write_text(text.replace("/opt/ferry/bin/ferry", str(ferry)))
    result = subprocess.run([tool, "verify", str(unit)], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stderr
    assert result.stderr.strip() == ""


def test_unit_settings() -> None:
    settings = {}
    for line in SYSTEMD_UNIT.read_text().splitlines():
        if "=" in line and not line.startswith("#"):
            key, _, value = line.partition("=")
            settings[key] = value
    assert settings["Type"] == "notify"
    assert settings["User"] == "ferry" and settings["StateDirectory"] == "ferry"
    assert settings["Restart"] == "on-failure"
    assert settings["RestartPreventExitStatus"] == "2"  # a bad config is not retried in a loop
    assert settings["ProtectSystem"] == "strict" and settings["NoNewPrivileges"] == "yes"
    assert "WatchdogSec" in settings


def run_ferry(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "ferry", "gateway", *args], capture_output=True, text=True,
                          timeout=60)


def test_sample_config_passes_check_config(tmp_path: Path) -> None:
    result = run_ferry("--config", str(SAMPLE_CONFIG), "--check-config")
    assert result.returncode == 2 and "auth.password_file" in result.stderr  # /etc/ferry/passwd is missing
    passwords = PasswordFile.load(tmp_path / "passwd", missing_ok=True)
    passwords.set("dev-1", "secret", log2_n=10)
    passwords.save(tmp_path / "passwd")
    result = run_ferry("--config", str(SAMPLE_CONFIG), "--check-config", "--password-file", str(tmp_path / "passwd"))
    assert result.returncode == 0, result.stderr
    assert "data dir /var/lib/ferry" in result.stdout and "1 users" in result.stdout


def test_sample_config_lists_every_key() -> None:
    text = SAMPLE_CONFIG.read_text()
    sections = re.split(r"^#? ?\[\[?([a-z.]+)\]\]?\s*$", text, flags=re.M)
    listed = {sections[i]: sections[i + 1] for i in range(1, len(sections), 2)}
    hints = typing.get_type_hints(GatewayConfig)
    for section in dataclasses.fields(GatewayConfig):
        body = listed[section.name]
        table = typing.get_args(hints[section.name])[0] if section.default_factory is dataclasses.MISSING \
            else section.default_factory
        for key in dataclasses.fields(table):
            if key.name == "librdkafka":
                assert "[bridge.librdkafka]" in text
                continue
            assert re.search(rf"^(# )?{key.name} = ", body, flags=re.M), f"{section.name}.{key.name}"
    # Uncommenting every key keeps the file valid (each shows its default or a real example).
    uncommented = re.sub(r"^# ([a-z_]+ = .*|\[\[[a-z]+\]\])$", r"\1", text, flags=re.M)
    assert set(tomllib.loads(uncommented)) == {f.name for f in dataclasses.fields(GatewayConfig)}


def test_sample_and_unit_are_printed_for_a_wheel_install() -> None:
    assert run_ferry("--sample-config").stdout == SAMPLE_CONFIG.read_text()
    assert run_ferry("--systemd-unit").stdout == SYSTEMD_UNIT.read_text()


def test_check_config_names_the_bad_key(tmp_path: Path) -> None:
    config = tmp_path / "ferry.toml"
    config.write_text('[gateway]\ndata_dir = "/tmp/x"\nlisten = "nowhere"\n')
    result = run_ferry("--config", str(config), "--check-config")
    assert result.returncode == 2
    assert "gateway.listen" in result.stderr
    config.write_text('[broker]\nmax_inflight_messages = 0\n')
    result = run_ferry("--config", str(config), "--check-config", "--data-dir", str(tmp_path))
    assert result.returncode == 2 and "broker.max_inflight_messages" in result.stderr
    config.write_text("")
    result = run_ferry("--config", str(config), "--check-config")
    assert result.returncode == 2 and "gateway.data_dir" in result.stderr


def test_data_dir_and_listener_from_the_file(tmp_path: Path) -> None:
    from ferry.process import free_port
    port = free_port()
    config = tmp_path / "ferry.toml"
    config.write_text(f'[gateway]\ndata_dir = "{tmp_path / "data"}"\nlisten = "127.0.0.1:{port}"\n'
                      '[auth]\nallow_anonymous = true\n')
    process = subprocess.Popen([sys.executable, "-m", "ferry", "gateway", "--config", str(config)],
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        assert wait_until(lambda: accepts_connections("127.0.0.1", port), 20)
        assert (tmp_path / "data" / "store").is_dir()
    finally:
        process.terminate()
        assert process.wait(timeout=30) == 0
