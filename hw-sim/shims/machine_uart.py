# hw-sim: machine.UART on the unix port (MicroPython code), imported by the machine shim at the
# first use of machine.UART (boards without a UART sensor never load it).
import vfs

import _board
from machine import Pin

_files = {}


def _file(uart_id):
    """The pty the host attached to this UART as a non-blocking file, or None (nothing wired)."""
    for pair in _board.uarts.split():
        u, fd = pair.split(b":")
        if int(u) == uart_id:
            if uart_id not in _files:
                _files[uart_id] = vfs.VfsPosix().open(int(fd), "r+b")  # an int: the inherited descriptor
            return _files[uart_id]
    return None


class UART:
    """A UART whose other end is a pty on the host (VirtualBoard.attach_uart), where a sensor model
    (e.g. hw-sim/pms5003_model.py, pyserial) reads and writes real bytes. Without one attached, the
    line is silent, as a UART with nothing wired to it. Baud rate and framing are not modelled:
    bytes arrive as fast as the host writes them."""

    def __init__(self, id, baudrate=115200, bits=8, parity=None, stop=1, tx=None, rx=None, timeout=0,
                 rxbuf=256, **kw):
        if not 0 <= id <= (1 if _board.chip == "esp32c3" else 2):
            raise ValueError("UART(%d) doesn't exist" % id)
        for pin in (tx, rx):
            if pin is not None:
                Pin(pin if isinstance(pin, int) else pin.id)
        self._file = _file(id)

    def init(self, *args, **kw):
        pass

    def deinit(self):
        pass

    def readinto(self, buf, nbytes=None):
        if self._file is None:
            return None
        try:
            return self._file.readinto(buf)  # non-blocking: None when nothing arrived
        except OSError:  # EIO: the host side closed
            return None

    def read(self, nbytes=256):
        buf = bytearray(nbytes)
        n = self.readinto(buf)
        return bytes(buf[:n]) if n else None

    def any(self):
        if self._file is None:
            return 0
        import select
        p = select.poll()
        p.register(self._file, select.POLLIN)
        return 1 if p.poll(0) else 0

    def write(self, buf):
        if self._file is None:
            return len(buf)
        try:
            return self._file.write(buf)
        except OSError:
            return None
