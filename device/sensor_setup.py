# Ferry firmware: the board's sensor drivers made from settings' list (MicroPython). hw.Hardware
# imports this module at start-up and drops it after: its code holds no heap while the firmware
# runs. Each driver module (sensor_<type>.py) is imported only when the list names its type.
import machine
from micropython import const

_PMS5003_BAUD = const(9600)


def open_all(hw, sensors):
    buses = {}  # I2C id -> the bus: sensors on one bus share it
    for spec in sensors:
        _add(hw, spec, buses)


def _add(hw, spec, buses):
    kind = spec["type"]
    label = spec["prefix"] + kind
    module = __import__("sensor_" + kind)
    driver = None
    try:
        driver = module.Sensor(_bus(kind, spec, buses), spec)
    except Exception as e:  # ValueError("invalid pin"), no such UART, ...: run without it
        hw._fault(label, e)
    n = len(hw.labels)
    hw.offsets.append(len(hw.names))
    hw.labels.append(label)
    hw.drivers.append(driver)
    for i in range(len(module.NAMES)):
        hw.names.append((spec["prefix"] + module.NAMES[i]).encode())
        hw.decimals.append(module.DECIMALS[i])
        hw.owner.append(n)


def _bus(kind, spec, buses):
    if kind == "ds18b20":
        import ds18x20  # frozen into ESP32 images (micropython-lib), with onewire
        import onewire

        return ds18x20.DS18X20(onewire.OneWire(machine.Pin(spec["pin"])))
    if kind == "pms5003":
        return machine.UART(spec["uart"], baudrate=_PMS5003_BAUD, tx=spec["tx"], rx=spec["rx"], timeout=0)
    i2c = buses.get(spec["i2c"])
    if i2c is None:
        i2c = machine.I2C(spec["i2c"], scl=machine.Pin(spec["scl"]), sda=machine.Pin(spec["sda"]), freq=100000)
        buses[spec["i2c"]] = i2c
    return i2c
