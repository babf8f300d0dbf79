"""Sensors chosen by settings, on virtual ESP32s (real MicroPython) talking to a real `ferry gateway`:
a board with a BME280 (I2C), a DS18B20 (OneWire) and a PMS5003 (a UART: a host pty where the
pyserial model writes real frames) publishes all their metrics; a sensor that dies is counted in
the status' `sensor_errors` while the others go on publishing, and comes back by itself.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest

from ferry.gateway.process import GatewayProcess
from ferry.hwsim.board import VirtualBoard
from ferry.hwsim.pms5003_model import Pms5003Model
from ferry.hwsim.shims import sensor_model, sensor_signals
from tests.device.fw_support import (
    FAST_SETTINGS, Collector, console_lines, device_id, install_firmware, make_board,
)

pytestmark = pytest.mark.integration

FAST = {**FAST_SETTINGS, "sample_ms": 200}
SENSORS = [
    {"type": "bme280"},
    {"type": "ds18b20", "pin": 4, "prefix": "water_"},
    {"type": "pms5003", "uart": 2, "rx": 16, "tx": 17},
]
BME280 = {"temp_c", "rh_pct", "pressure_hpa"}
OTHERS = {"water_temp_c", "pm1_0_ugm3", "pm2_5_ugm3", "pm10_ugm3"}
SEED = 11
MODEL_HEAP = 160 * 1024
"""The board's heap in these tests: the simulator's sensor models (the BME280's registers, the OneWire
bus) run in the board's interpreter, ~9 KB of bytecode and ~20 KB more to compile them at first use;
on an ESP32 that is hardware. The firmware's own share is measured in test_sensors.py."""


@pytest.fixture
def sensor_board(tmp_path: Path, firmware: Path,
                 gateway: GatewayProcess) -> Iterator[tuple[VirtualBoard, Pms5003Model]]:
    """A powered-on board with SENSORS and the PMS5003 model on its UART 2 (a frame every 0.2 s)."""
    board = make_board(tmp_path, "sensors", sensor_seed=SEED, heap_bytes=MODEL_HEAP)
    model = Pms5003Model(board.attach_uart(2), seed=SEED, interval_s=0.2)
    install_firmware(board, firmware, broker_port=gateway.port, sensors=SENSORS, **FAST)
    model.start()
    board.power_on()
    try:
        yield board, model
    finally:
        board.stop()
        model.stop()


def births(collector: Collector, b: VirtualBoard) -> list[dict]:
    return [json.loads(m.payload) for m in collector.on(device_id(b), "status")
            if json.loads(m.payload)["state"] == "online"]


def model_range(f, t_s: float, window_s: float = 0.5) -> tuple[float, float]:
    values = [f(SEED, t_s + (i - 10) * window_s / 10) for i in range(21)]
    return min(values), max(values)


def test_a_board_publishes_its_bme280_ds18b20_and_pms5003_metrics(sensor_board, collector: Collector) -> None:
    b, model = sensor_board
    dev = device_id(b)
    every = BME280 | OTHERS

    def full() -> list:  # with every metric, sampled after NTP set the clock: ts is the host time of the sample
        return [r for r in collector.readings(dev) if set(r.metrics) == every and r.synced]

    assert collector.wait_for(lambda: len(full()) >= 8, 30), b.console()[-3000:]
    birth = births(collector, b)[0]
    assert birth["faults"] == [] and birth["sensor_errors"] == {"bme280": 0, "water_ds18b20": 0, "pms5003": 0}
    readings = full()
    sent = {pm for _, pm in model.sent if pm}
    for r in readings:
        t = r.ts_ms / 1000
        m = r.metrics
        lo, hi = model_range(sensor_model.temperature_c, t)
        assert lo - 0.05 <= m["temp_c"] <= hi + 0.05, (m, lo, hi)
        lo, hi = model_range(sensor_model.humidity_pct, t)
        assert lo - 0.1 <= m["rh_pct"] <= hi + 0.1, (m, lo, hi)
        lo, hi = model_range(sensor_signals.pressure_hpa, t)
        assert lo - 0.05 <= m["pressure_hpa"] <= hi + 0.05, (m, lo, hi)
        # The DS18B20's conversion started at the sample before (0.75 s at least).
        lo, hi = model_range(sensor_signals.water_temperature_c, t - 1.5, 3.0)
        assert lo - 0.07 <= m["water_temp_c"] <= hi + 0.07, (m, lo, hi)
        # PM values are what a frame the model wrote over the pty said.
        assert (m["pm1_0_ugm3"], m["pm2_5_ugm3"], m["pm10_ugm3"]) in sent, (m, sent)
    # The first reading is taken while the DS18B20's first conversion runs: no value yet, not an error.
    first = collector.readings(dev)[0]
    assert BME280 <= set(first.metrics) and "water_temp_c" not in first.metrics
    assert b.boots() == ["pwron"]
    print(f"\nBME280 + DS18B20 + PMS5003: {len(readings)} full readings, e.g. {readings[-1].metrics}; "
          f"first {first.metrics}; {len(model.sent)} frames written over the pty; birth {birth}")


def test_a_dead_sensor_is_counted_in_the_status_while_the_others_publish(sensor_board, collector: Collector) -> None:
    """Unplugged BME280: its metrics leave the readings, the others stay, the status says
    `sensor_errors.bme280` > 0 (published when the sensor fails, not only at the next connect);
    plugged back, its metrics return and a status says it answers again. A PMS5003 that goes
    silent is counted likewise. No reset on the way."""
    b, model = sensor_board
    dev = device_id(b)
    every = BME280 | OTHERS

    def full() -> int:
        return sum(set(r.metrics) == every for r in collector.readings(dev))

    def statuses() -> list[dict]:
        return births(collector, b)

    assert collector.wait_for(lambda: full() >= 3, 30), b.console()[-3000:]
    b.set_sensor_faults("bme280")
    assert collector.wait_for(lambda: sum(set(r.metrics) == OTHERS for r in collector.readings(dev)) >= 5, 20), \
        b.console()[-3000:]
    assert collector.wait_for(lambda: statuses()[-1]["sensor_errors"]["bme280"] >= 1, 10), statuses()
    dead = statuses()[-1]
    assert dead["sensor_errors"]["water_ds18b20"] == 0 and dead["sensor_errors"]["pms5003"] == 0
    n_status = len(statuses())
    b.set_sensor_faults()
    before = full()
    assert collector.wait_for(lambda: full() >= before + 5, 20), b.console()[-3000:]
    assert collector.wait_for(lambda: len(statuses()) > n_status, 10)  # "answering again"
    back = statuses()[-1]
    assert back["sensor_errors"]["bme280"] >= dead["sensor_errors"]["bme280"]
    # The statuses are not one per failed sample: one when it failed, one when it came back.
    assert len(statuses()) <= n_status + 1
    model.fault = "silent"
    assert collector.wait_for(lambda: statuses()[-1]["sensor_errors"]["pms5003"] >= 1, 15), statuses()
    quiet = [r for r in collector.readings(dev) if "pm2_5_ugm3" not in r.metrics and "temp_c" in r.metrics]
    assert collector.wait_for(lambda: len([r for r in collector.readings(dev) if "pm2_5_ugm3" not in r.metrics
                                           and {"temp_c", "water_temp_c"} <= set(r.metrics)]) > len(quiet) + 3, 10)
    assert b.boots() == ["pwron"]
    assert not console_lines(b, "fatal"), b.console()[-3000:]
    print(f"\ndead sensor: status {dead['sensor_errors']} -> {back['sensor_errors']} -> "
          f"{statuses()[-1]['sensor_errors']}; {len(statuses())} statuses in all")


def test_a_default_board_whose_sht31_dies_says_so_in_its_status(tmp_path: Path, firmware: Path,
                                                                  gateway: GatewayProcess,
                                                                  collector: Collector) -> None:
    """Today's default settings (no `sensors` key: the SHT31): unplugged, its failed reads are counted
    and a status with them is published at once; the board stays up and publishes again when it
    is back. (Before, `sensor_errors` was counted and never reported: a dead sensor went unnoticed.)"""
    b = make_board(tmp_path, "default")
    install_firmware(b, firmware, broker_port=gateway.port, **FAST)
    dev = device_id(b)
    b.power_on()
    try:
        assert collector.wait_for(lambda: len(collector.readings(dev)) >= 3, 20), b.console()[-3000:]
        assert births(collector, b)[0]["sensor_errors"] == {"sht31": 0}
        b.set_sensor_faults("sht31")
        assert collector.wait_for(lambda: births(collector, b)[-1]["sensor_errors"]["sht31"] >= 1, 10), \
            (births(collector, b), b.console()[-2000:])
        dead = births(collector, b)[-1]
        before = len(collector.readings(dev))
        b.set_sensor_faults()
        assert collector.wait_for(lambda: len(collector.readings(dev)) >= before + 3, 10), b.console()[-2000:]
        assert collector.wait_for(lambda: len(births(collector, b)) >= 3, 10)  # answering again
        assert b.boots() == ["pwron"]
        assert console_lines(b, "sensor sht31: OSError(19")  # logged once when it started failing
    finally:
        b.stop()
    print(f"\ndefault board, SHT31 unplugged: {dead['sensor_errors']}; then {births(collector, b)[-1]['sensor_errors']}")


def test_a_sensor_the_board_has_no_pin_for_is_a_fault_not_fatal(tmp_path: Path, firmware: Path,
                                                                   gateway: GatewayProcess,
                                                                   collector: Collector) -> None:
    """A DS18B20 on GPIO 30 and a PMS5003 on UART 2 of an ESP32-C3 (it has GPIO 0-21, UARTs 0 and
    1): both in `faults`, the BME280 publishes alone."""
    b = make_board(tmp_path, "c3", chip="esp32c3", heap_bytes=MODEL_HEAP)
    install_firmware(b, firmware, broker_port=gateway.port, i2c_scl_pin=9, i2c_sda_pin=8,
                     sensors=[{"type": "bme280"}, {"type": "ds18b20", "pin": 30, "prefix": "water_"},
                              {"type": "pms5003", "uart": 2, "rx": 20, "tx": 21}], **FAST)
    b.power_on()
    try:
        assert collector.wait_for(lambda: births(collector, b) and len(collector.readings(device_id(b))) >= 3, 20), \
            b.console()[-3000:]
        birth = births(collector, b)[0]
        assert birth["faults"] == ["water_ds18b20", "pms5003", "battery"]
        assert birth["sensor_errors"] == {"bme280": 0}
        assert all(set(r.metrics) == BME280 for r in collector.readings(device_id(b)))
        assert b.boots() == ["pwron"]
    finally:
        b.stop()
    print(f"\nno pin: birth {birth}; {console_lines(b, 'hw:')}")
