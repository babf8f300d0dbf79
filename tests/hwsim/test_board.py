"""Virtual ESP32 boards: real MicroPython with the hw-sim shims, supervised by the host."""

from __future__ import annotations

import importlib.util
import time
from pathlib import Path

import pytest

from ferry.hwsim.board import SHIMS_DIR, BoardConfig, VirtualBoard


def load_sensor_model():
    spec = importlib.util.spec_from_file_location("sensor_model", SHIMS_DIR / "sensor_model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def make_board(tmp_path: Path):
    boards: list[VirtualBoard] = []

    def make(main_py: str, **config) -> VirtualBoard:
        board = VirtualBoard(tmp_path / f"board{len(boards)}", BoardConfig(**config))
        (board.flash_dir / "main.py").write_text(main_py)
        boards.append(board)
        return board

    yield make
    for board in boards:
        board.stop()


def lines(board: VirtualBoard) -> list[str]:
    return [line for line in board.console().splitlines() if line.startswith("out ")]


def test_identity_reset_cause_and_private_flash(make_board) -> None:
    board = make_board(
        "import machine, os, ubinascii\n"
        "print('out', ubinascii.hexlify(machine.unique_id()).decode(), machine.reset_cause())\n"
        "open('/written.txt', 'w').write('on flash')\n"
        "print('out', sorted(os.listdir('/')))\n",
        uid=bytes.fromhex("240ac4123456"))
    board.power_on()
    assert board.wait_for(lambda: "halted" in [e.kind for e in board.events])
    assert lines(board) == ["out 240ac4123456 1", "out ['lib', 'main.py', 'written.txt']"]
    assert (board.flash_dir / "written.txt").read_text() == "on flash"


def test_rtc_memory_survives_reset_and_deep_sleep_not_power_cut(make_board) -> None:
    board = make_board(
        "import machine\n"
        "rtc = machine.RTC()\n"
        "n = int(rtc.memory() or b'0')\n"
        "print('out', machine.reset_cause(), n)\n"
        "rtc.memory(str(n + 1).encode())\n"
        "if n == 0:\n    machine.reset()\n"
        "elif n == 1:\n    machine.deepsleep(300)\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 3)
    assert lines(board) == ["out 1 0", "out 2 1", "out 4 2"]
    assert board.boots() == ["pwron", "hard", "deepsleep"]
    slept = [e for e in board.events if e.kind == "deepsleep"]
    assert slept and slept[0].detail == "0.300 s"
    board.wait_for(lambda: not board.running)
    board.power_cut()
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 5)
    assert lines(board)[3] == "out 1 0"  # RTC memory lost with the power


def test_watchdog_resets_a_board_that_stops_feeding_it(make_board) -> None:
    board = make_board(
        "import machine, time\n"
        "print('out', machine.reset_cause())\n"
        "if machine.reset_cause() != machine.WDT_RESET:\n"
        "    wdt = machine.WDT(timeout=1500)\n"
        "    for _ in range(5):\n"
        "        time.sleep_ms(100)\n"
        "        wdt.feed()\n"
        "    print('out hung')\n"
        "    time.sleep(60)\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 3, timeout_s=20)
    assert lines(board) == ["out 1", "out hung", "out 3"]
    assert board.boots() == ["pwron", "wdt"]


def test_clock_starts_at_2000_until_ntp_and_ntp_needs_wifi(make_board) -> None:
    board = make_board(
        "import time, ntptime, network\n"
        "wlan = network.WLAN(network.STA_IF)\n"
        "wlan.active(True)\n"
        "wlan.connect('ferry-sim', 'pw')\n"
        "print('out', time.gmtime(0)[0], time.gmtime()[0])\n"
        "try:\n    ntptime.settime()\nexcept OSError as e:\n    print('out ntp failed', e.args[0])\n"
        "print('out', time.gmtime()[0])\n")
    board.set_wifi(False)
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 3)
    assert lines(board) == ["out 2000 2000", "out ntp failed 110", "out 2000"]
    board.stop()
    board.set_wifi(True)
    board.power_on()
    year = time.gmtime().tm_year
    assert board.wait_for(lambda: len(lines(board)) == 5)
    assert lines(board)[3:] == ["out 2000 2000", f"out {year}"]


def test_wifi_follows_the_host(make_board) -> None:
    board = make_board(
        "import network, time\n"
        "w = network.WLAN(network.STA_IF)\n"
        "w.active(True)\n"
        "w.connect('ferry-sim', 'pw')\n"
        "print('out', w.isconnected(), w.status('rssi'))\n"
        "while w.isconnected():\n    time.sleep_ms(50)\n"
        "print('out', w.isconnected(), w.status())\n", rssi_dbm=-71)
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 1)
    board.set_wifi(False)
    assert board.wait_for(lambda: len(lines(board)) == 2)
    assert lines(board) == ["out True -71", "out False 201"]


def test_sht31_reads_match_the_host_sensor_model(make_board) -> None:
    board = make_board(
        "import machine, time\n"
        "i2c = machine.I2C(0)\n"
        "print('out scan', i2c.scan())\n"
        "i2c.writeto(0x44, b'\\x24\\x00')\n"
        "d = i2c.readfrom(0x44, 6)\n"
        "t = -45 + 175 * (d[0] << 8 | d[1]) / 65535\n"
        "print('out', time.time() + 946684800 - 0, t)\n"
        "import utime\nprint('out host', utime.time(), t)\n", sensor_seed=7)
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 3)
    assert lines(board)[0] == "out scan [68, 118]"  # the SHT31 and the BME280 on every bus
    _, _, host_s, temperature = lines(board)[2].split()
    model = load_sensor_model()
    expected = model.temperature_c(7, float(host_s))
    assert abs(float(temperature) - expected) < 0.5


def test_reset_cannot_be_swallowed_by_a_bare_except(make_board) -> None:
    board = make_board(
        "import machine\n"
        "print('out', machine.reset_cause())\n"
        "if machine.reset_cause() == machine.PWRON_RESET:\n"
        "    try:\n        machine.reset()\n    except BaseException:\n        print('out survived')\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 2)
    assert lines(board) == ["out 1", "out 2"]


def test_rtc_memory_keeps_the_exact_bytes_of_any_buffer_up_to_2_kib(make_board) -> None:
    # The outbox writes its state as an array('I') of 13 words: RTC memory must keep its 52 bytes.
    board = make_board(
        "import machine\n"
        "from array import array\n"
        "rtc = machine.RTC()\n"
        "words = array('I', [0xF0B1_0000 + i for i in range(13)])\n"
        "if machine.reset_cause() == machine.PWRON_RESET:\n"
        "    rtc.memory(words)\n"
        "    machine.reset()\n"
        "data = rtc.memory()\n"
        "print('out', len(data), data == bytes(words))\n"
        "rtc.memory(bytes(range(256)) * 8)\n"
        "print('out', len(rtc.memory()), rtc.memory() == bytes(range(256)) * 8)\n"
        "try:\n    rtc.memory(bytes(2049))\nexcept ValueError as e:\n    print('out', e)\n"
        "print('out', len(rtc.memory()))\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 4)
    assert lines(board) == ["out 52 True", "out 2048 True", "out buffer too long", "out 2048"]


def test_watchdog_keeps_running_through_a_soft_reset_not_a_chip_reset(make_board) -> None:
    # On an ESP32 a soft reset restarts MicroPython only: the task watchdog keeps counting.
    # machine.reset() and deep sleep restart the chip, which stops it.
    board = make_board(
        "import machine, time\n"
        "cause = machine.reset_cause()\n"
        "print('out', cause)\n"
        "if cause == machine.PWRON_RESET:\n"
        "    machine.WDT(timeout=1500).feed()\n"
        "    machine.soft_reset()\n"
        "elif cause == machine.SOFT_RESET:\n"
        "    time.sleep(30)  # nobody feeds the watchdog started before the soft reset\n"
        "elif cause == machine.WDT_RESET:\n"
        "    machine.WDT(timeout=1500).feed()\n"
        "    machine.reset()\n"
        "else:\n"
        "    time.sleep_ms(2500)\n"
        "    print('out no watchdog after a chip reset')\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 5, timeout_s=20), board.console()[-2000:]
    assert lines(board) == ["out 1", "out 5", "out 3", "out 2", "out no watchdog after a chip reset"]
    assert board.boots() == ["pwron", "soft", "wdt", "hard"]


def test_frozen_modules_are_found_before_lib_and_are_read_only(make_board, tmp_path: Path) -> None:
    # A stock ESP32 image freezes umqtt.simple; sys.path is ['', '.frozen', '/lib'], so the
    # frozen copy shadows the one `ferry flash` puts in /lib.
    frozen = tmp_path / "image"
    (frozen / "umqtt").mkdir(parents=True)
    (frozen / "umqtt" / "simple.py").write_text("WHERE = 'frozen'\n")
    (frozen / "only_frozen.py").write_text("WHERE = 'frozen'\n")
    board = make_board(
        "import umqtt.simple, only_from_lib, only_frozen\n"
        "print('out', umqtt.simple.WHERE, only_from_lib.WHERE, only_frozen.WHERE)\n"
        "try:\n    open(only_frozen.__file__, 'w')\nexcept OSError as e:\n    print('out read-only', e.args[0])\n",
        frozen_dir=frozen)
    (board.flash_dir / "lib" / "umqtt").mkdir()
    (board.flash_dir / "lib" / "umqtt" / "simple.py").write_text("WHERE = 'lib'\n")
    (board.flash_dir / "lib" / "only_from_lib.py").write_text("WHERE = 'lib'\n")
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 2), board.console()[-2000:]
    assert lines(board) == ["out frozen lib frozen", "out read-only 30"]  # EROFS
    assert (frozen / "only_frozen.py").read_text() == "WHERE = 'frozen'\n"


@pytest.mark.parametrize(("chip", "expected"), [
    ("esp32", "out pin22 ok adc35 ok adc1 invalid pin pin48 invalid pin"),
    ("esp32s3", "out pin22 invalid pin adc35 invalid pin adc1 ok pin48 ok"),
    ("esp32c3", "out pin22 invalid pin adc35 invalid pin adc1 ok pin48 invalid pin"),
])
def test_chip_profile_decides_which_pins_exist_and_have_an_adc(make_board, chip: str, expected: str) -> None:
    board = make_board(
        "import machine\n"
        "def probe(make):\n"
        "    try:\n        make()\n        return 'ok'\n"
        "    except ValueError as e:\n        return str(e)\n"
        "print('out pin22', probe(lambda: machine.Pin(22)), 'adc35', probe(lambda: machine.ADC(machine.Pin(35))),\n"
        "      'adc1', probe(lambda: machine.ADC(machine.Pin(1))), 'pin48', probe(lambda: machine.Pin(48)))\n",
        chip=chip)
    board.power_on()
    assert board.wait_for(lambda: len(lines(board)) == 1), board.console()[-2000:]
    assert lines(board) == [expected]


def voluntary_switches(pid: int) -> int:
    status = open(f"/proc/{pid}/status").read()
    return int(next(line.split()[1] for line in status.splitlines() if line.startswith("voluntary_ctxt_switches")))


def test_a_sleeping_board_waits_once_rather_than_waking_every_half_millisecond(make_board) -> None:
    """The unix port's time.sleep_ms polls in 0.5 ms steps (~4,000 wake-ups in 2 s): 200 boards
    waiting to reconnect took both cores and few boards could finish a TLS handshake. The time shim
    sleeps in one poll(), and allocates nothing doing it (as an ESP32's sleep_ms: drivers sleep with
    the heap locked)."""
    board = make_board("import time, micropython\nprint('out', 'sleeping')\ntime.sleep_ms(2000)\n"
                       "print('out', 'awake')\nmicropython.heap_lock()\ntime.sleep_ms(20)\ntime.sleep_ms(0)\n"
                       "time.sleep_ms(-5)\nmicropython.heap_unlock()\nprint('out', 'done')\ntime.sleep_ms(60000)\n")
    board.power_on()
    assert board.wait_for(lambda: "out sleeping" in lines(board))
    pid = board.pid
    before = voluntary_switches(pid)
    assert board.wait_for(lambda: "out done" in lines(board))
    woke = voluntary_switches(pid) - before
    assert lines(board) == ["out sleeping", "out awake", "out done"]
    assert woke < 100, f"{woke} wake-ups in a 2 s sleep_ms"
