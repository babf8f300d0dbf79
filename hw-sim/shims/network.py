# hw-sim: network.WLAN on a virtual board (MicroPython code). The host writes the
# link state into the board's `wlan` file: "up <rssi> <ssid>" or "down".
import _board

STA_IF = 0
AP_IF = 1
STAT_IDLE = 1000
STAT_CONNECTING = 1001
STAT_GOT_IP = 1010
STAT_NO_AP_FOUND = 201
STAT_WRONG_PASSWORD = 202


def _link():
    _board.wlan_file.seek(0)
    return _board.wlan_file.read().split()


_interfaces = {}


class _Interface:
    def __init__(self):
        self.active = False
        self.ssid = None


class WLAN:
    """Every WLAN(STA_IF) shares one interface, as on the ESP32."""

    def __init__(self, interface=STA_IF):
        state = _interfaces.get(interface)
        if state is None:
            state = _interfaces[interface] = _Interface()
        self._state = state

    def active(self, value=None):
        if value is None:
            return self._state.active
        self._state.active = bool(value)
        if not value:
            self._state.ssid = None

    def connect(self, ssid=None, key=None):
        if not self._state.active:
            raise OSError("Wifi Not Started")
        self._state.ssid = ssid

    def disconnect(self):
        self._state.ssid = None

    def isconnected(self):
        ssid = self._state.ssid
        if not self._state.active or ssid is None:
            return False
        link = _link()
        return bool(link) and link[0] == b"up" and (len(link) < 3 or link[2].decode() == ssid)

    def status(self, param=None):
        link = _link()
        if param == "rssi":
            return int(link[1]) if link and link[0] == b"up" else -127
        if self.isconnected():
            return STAT_GOT_IP
        if not link or link[0] != b"up":
            return STAT_NO_AP_FOUND
        return STAT_WRONG_PASSWORD if self._state.ssid is not None else STAT_IDLE

    def ifconfig(self, config=None):
        return ("127.0.0.1", "255.0.0.0", "127.0.0.1", "127.0.0.1")

    def config(self, name=None, **kwargs):
        if name == "mac":
            return _board.uid
        if name == "ssid":
            return self._state.ssid
        return None
