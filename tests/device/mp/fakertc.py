# A stand-in for machine.RTC's memory() kept in a host file (MicroPython code).
# It survives the process (a reset or a SIGKILL); a test deletes the file to
# model a power cut, which clears the ESP32's RTC memory.
import os


class FileRTC:
    def __init__(self, path):
        self._path = path
        self._tmp = path + ".tmp"

    def memory(self, data=None):
        if data is None:
            try:
                with open(self._path, "rb") as f:
                    return f.read()
            except OSError:
                return b""
        # Write aside and rename: a kill leaves the old or the new blob, as RTC
        # memory (one memcpy) would.
        with open(self._tmp, "wb") as f:
            f.write(data)
        os.rename(self._tmp, self._path)
