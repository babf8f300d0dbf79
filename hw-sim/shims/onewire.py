# hw-sim: MicroPython's `onewire` module (frozen into ESP32 images from micropython-lib) on
# the unix port, which has neither it nor its C half `_onewire`. The same class and methods,
# over a modelled bus with one DS18B20 on every pin (until the host unplugs it,
# VirtualBoard.set_sensor_faults): reset and presence pulse, the ROM commands SKIP ROM and
# MATCH ROM, and the DS18B20's function commands CONVERT T (0x44, 750 ms at 12 bits) and
# READ SCRATCHPAD (0xBE, nine bytes, the last a CRC-8). Byte level only: no bit timing, no
# parasite power, SEARCH ROM answered by scan() directly instead of bit by bit.
import utime

import _board
import sensor_signals

_CONVERT_MS = 750


class OneWireError(Exception):
    pass


def _crc8(data):
    """Maxim/Dallas CRC-8 (x^8 + x^5 + x^4 + 1, reflected): 0 over data followed by its CRC."""
    crc = 0
    for byte in data:
        for _ in range(8):
            mix = (crc ^ byte) & 1
            crc >>= 1
            if mix:
                crc ^= 0x8C
            byte >>= 1
    return crc


class _DS18B20:
    """The probe: 64-bit ROM (family 0x28, serial, CRC) and its scratchpad."""

    def __init__(self, pin_id):
        serial = bytes(_board.uid[:5]) + bytes((pin_id,))
        rom = b"\x28" + serial
        self.rom = rom + bytes((_crc8(rom),))
        self.raw = 0x0550  # 85 degC: the power-on value, before any conversion
        self.pending = None  # (ready at ticks_ms, raw)

    def convert(self):
        c = sensor_signals.water_temperature_c(_board.sensor_seed, utime.time())
        raw = int(round(c * 16)) & 0xFFFF
        self.pending = (utime.ticks_add(utime.ticks_ms(), _CONVERT_MS), raw)

    def scratchpad(self):
        if self.pending is not None and utime.ticks_diff(utime.ticks_ms(), self.pending[0]) >= 0:
            self.raw = self.pending[1]
            self.pending = None
        pad = bytes((self.raw & 0xFF, self.raw >> 8, 0x4B, 0x46, 0x7F, 0xFF, 0x0C, 0x10))
        crc = _crc8(pad)
        if _board.fault("ds18b20_crc"):  # a noisy line: one bit flipped on the way
            crc ^= 0x01
        return pad + bytes((crc,))


_devices = {}  # pin -> its probe (kept across OneWire objects, like the hardware)


class OneWire:
    SEARCH_ROM = 0xF0
    MATCH_ROM = 0x55
    SKIP_ROM = 0xCC

    def __init__(self, pin):
        self.pin = pin
        self.pin.init(pin.OPEN_DRAIN, pin.PULL_UP)
        if pin.id not in _devices:
            _devices[pin.id] = _DS18B20(pin.id)
        self._dev = _devices[pin.id]
        self._state = "idle"  # after reset: "rom"; "match" (8 ROM bytes), "function", "read"
        self._selected = False
        self._out = b""
        self._rom_in = b""

    def _present(self):
        return not _board.fault("ds18b20")

    def reset(self, required=False):
        present = self._present()
        self._state = "rom" if present else "idle"
        self._selected = False
        self._out = b""
        if required and not present:
            raise OneWireError
        return present

    def writebyte(self, value):
        state = self._state
        if state == "rom":
            if value == self.SKIP_ROM:
                self._state, self._selected = "function", True
            elif value == self.MATCH_ROM:
                self._state, self._rom_in = "match", b""
            else:
                self._state = "idle"
        elif state == "match":
            self._rom_in += bytes((value,))
            if len(self._rom_in) == 8:
                self._selected = self._rom_in == self._dev.rom
                self._state = "function"
        elif state == "function" and self._selected:
            if value == 0x44:
                self._dev.convert()
                self._state = "idle"
            elif value == 0xBE:
                self._out = self._dev.scratchpad()
                self._state = "read"
            else:
                self._state = "idle"

    def write(self, buf):
        for b in buf:
            self.writebyte(b)

    def readbyte(self):
        if self._state != "read" or not self._out or not self._present():
            return 0xFF  # nobody pulls the line low: all ones
        b = self._out[0]
        self._out = self._out[1:]
        return b

    def readinto(self, buf):
        for i in range(len(buf)):
            buf[i] = self.readbyte()

    def readbit(self):
        return self.readbyte() & 1

    def writebit(self, value):
        pass

    def select_rom(self, rom):
        self.reset()
        self.writebyte(self.MATCH_ROM)
        self.write(rom)

    def scan(self):
        return [bytearray(self._dev.rom)] if self._present() else []

    def crc8(self, data):
        return _crc8(data)
