"""A virtual board's serial line driven by the real `mpremote` (and by pyserial, as a terminal).

Every bridge is closed by its fixture, which stops the interpreter; every mpremote run has a
timeout that kills it.
"""

from __future__ import annotations

import hashlib
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest
import serial

from ferry.hwsim.board import BoardConfig, board_setup
from ferry.hwsim.serial_bridge import SerialBridge, serial_bootstrap
from ferry.hwsim.serial_line import SOFT_REBOOT, ReplMode

MPREMOTE = Path(sys.executable).parent / "mpremote"
BUSY_MAIN = "print('main running')\nn = 0\nwhile True:\n    n += 1\n"
SLEEPY_MAIN = "import time\nprint('main running')\nwhile True:\n    time.sleep_ms(20)\n"


def mpremote(url: str, *args: str, timeout_s: float = 20.0) -> str:
    result = subprocess.run([str(MPREMOTE), "connect", url, *args], capture_output=True, text=True,
                            timeout=timeout_s)
    assert result.returncode == 0, (args, result.stdout, result.stderr)
    return result.stdout


@pytest.fixture
def make_bridge(tmp_path: Path):
    bridges: list[SerialBridge] = []

    def make(files: dict[str, str] | None = None, **config) -> SerialBridge:
        bridge = SerialBridge(tmp_path / f"board{len(bridges)}", BoardConfig(**config))
        bridges.append(bridge)
        for name, text in (files or {}).items():
            (bridge.flash_dir / name).write_text(text)
        bridge.power_on()
        return bridge

    yield make
    for bridge in bridges:
        bridge.close()


def url_of(bridge: SerialBridge, kind: str) -> str:
    url = bridge.pty_path if kind == "pty" else bridge.socket_url
    assert url is not None
    return url


def read_until(port: serial.Serial, marker: bytes, timeout_s: float = 10.0) -> bytes:
    data = b""
    deadline = time.monotonic() + timeout_s
    while not data.endswith(marker) and time.monotonic() < deadline:
        data += port.read(1)
    assert data.endswith(marker), data
    return data


def test_serial_boot_runs_the_boards_own_setup() -> None:
    config = BoardConfig(frozen_dir=Path("image"))
    setup = board_setup(config, Path("F"))
    assert "image" in setup and "VfsPosix('F')" in setup
    code = serial_bootstrap(config, Path("F"), ("boot.py",))
    for line in filter(None, (line.strip() for line in setup.splitlines())):
        assert line in code


@pytest.mark.parametrize("kind", ["pty", "socket"])
def test_fs_ls_cp_and_hash_across_sequential_mpremote_runs(make_bridge, tmp_path: Path, kind: str) -> None:
    bridge = make_bridge({"boot.py": "print('boot.py ran')\n"})
    url = url_of(bridge, kind)
    data = bytes(random.Random(7).randrange(256) for _ in range(3000))  # \r \n \x03 \x04 included
    local = tmp_path / "data.bin"
    local.write_bytes(data)

    listing = mpremote(url, "fs", "ls").split()
    assert listing[:2] == ["ls", ":"] and listing[3::2] == ["boot.py", "lib/"]  # VfsPosix gives no sizes
    mpremote(url, "fs", "cp", str(local), ":data.bin")
    assert (bridge.flash_dir / "data.bin").read_bytes() == data
    assert hashlib.sha256(data).hexdigest() in mpremote(url, "fs", "sha256sum", ":data.bin")
    mpremote(url, "fs", "cp", ":data.bin", str(tmp_path / "back.bin"))
    assert (tmp_path / "back.bin").read_bytes() == data
    assert mpremote(url, "fs", "cat", ":boot.py") == "print('boot.py ran')\n"
    assert bridge.boots() == ["pwron"] + ["soft"] * 5  # mpremote soft-reboots before its first command


def test_exec_and_run_see_the_board_hardware(make_bridge, tmp_path: Path) -> None:
    bridge = make_bridge(uid=bytes.fromhex("240ac4123456"))
    assert mpremote(bridge.pty_path, "exec", "print(1+1)") == "2\n"
    script = tmp_path / "script.py"
    script.write_text("import machine, os, ubinascii\n"
                      "print(ubinascii.hexlify(machine.unique_id()).decode(), os.getcwd(), os.listdir())\n")
    assert mpremote(bridge.pty_path, "run", str(script)).split() == ["240ac4123456", "/", "['lib']"]


@pytest.mark.parametrize("kind", ["pty", "socket"])
def test_ctrl_c_interrupts_a_running_main_py_so_fs_cp_works(make_bridge, tmp_path: Path, kind: str) -> None:
    bridge = make_bridge({"main.py": BUSY_MAIN})
    assert bridge.wait_for(lambda: "main running" in bridge.console(), timeout_s=10)
    local = tmp_path / "config.json"
    local.write_text('{"interval_s": 5}')

    mpremote(url_of(bridge, kind), "fs", "cp", str(local), ":config.json")

    assert (bridge.flash_dir / "config.json").read_text() == '{"interval_s": 5}'
    assert bridge.stats().interrupts == 1
    console = bridge.console()
    assert 'Traceback (most recent call last):\n  File "main.py", line 4, in <module>\nKeyboardInterrupt' in console


def test_reset_reboots_the_board_and_it_answers_again(make_bridge) -> None:
    bridge = make_bridge({"main.py": SLEEPY_MAIN})
    assert bridge.wait_for(lambda: "main running" in bridge.console(), timeout_s=10)

    mpremote(bridge.pty_path, "reset")
    # `reset` runs `time.sleep_ms(100); machine.reset()` and leaves: a Ctrl-C from the next
    # mpremote inside those 100 ms would cancel it, on a real board too.
    assert bridge.wait_for(lambda: "hard" in bridge.boots(), timeout_s=10)
    assert mpremote(bridge.socket_url, "exec", "import machine; print(machine.reset_cause())") == "2\n"
    assert bridge.boots() == ["pwron", "soft", "hard", "soft"]


def test_soft_reset_runs_boot_py_again_not_main_py(make_bridge) -> None:
    bridge = make_bridge({"boot.py": "open('boots.log', 'a').write('b')\n",
                          "main.py": "open('boots.log', 'a').write('m')\n" + SLEEPY_MAIN})
    assert bridge.wait_for(lambda: "main running" in bridge.console(), timeout_s=10)

    mpremote(bridge.pty_path, "soft-reset")
    out = mpremote(bridge.pty_path, "exec", "import machine; print(open('boots.log').read(), machine.reset_cause())")

    assert out == "bmbb 1\n"  # a soft reboot is no chip reset: still the power-on cause
    assert bridge.boots() == ["pwron", "soft", "soft"]
    assert bridge.repl_mode is ReplMode.FRIENDLY  # mpremote leaves with Ctrl-B


def test_a_terminal_on_the_pty_gets_a_board_like_friendly_repl(make_bridge) -> None:
    bridge = make_bridge({"main.py": BUSY_MAIN})
    assert bridge.wait_for(lambda: "main running" in bridge.console(), timeout_s=10)
    with serial.Serial(bridge.pty_path, timeout=0.2) as port:
        port.write(b"\x03")
        out = read_until(port, b">>> ")
        assert b'  File "main.py", line 4, in <module>\r\nKeyboardInterrupt: \r\n' in out

        port.write(b"print(6 * 7)\r")
        assert read_until(port, b">>> ").endswith(b"print(6 * 7)\r\n42\r\n>>> ")

        port.write(b"\x04")  # Ctrl-D on an empty line: soft reboot, main.py runs again
        out = read_until(port, b"main running\r\n")
        assert out.startswith(b"\r\n" + SOFT_REBOOT)

        port.write(b"\x03")
        read_until(port, b">>> ")
        port.write(b"import machine; machine.deepsleep(200)\r")
        out = read_until(port, b"main running\r\n")
        assert b"rst:0x5 (DEEPSLEEP_RESET)" in out
    assert bridge.boots() == ["pwron", "soft", "deepsleep"]
