# hw-sim: stands in sys.modules for `onewire` and `ds18x20`, which stock ESP32 images freeze
# and the unix port lacks (MicroPython code). Their shims are imported at the first attribute a
# board uses (machine._import_shim): boards without a DS18B20 never load them.
import sys

import machine


def __getattr__(name):
    for module in ("onewire", "ds18x20"):
        if sys.modules.get(module) is sys.modules[__name__]:
            del sys.modules[module]  # the real shims take their place
    real = machine._import_shim("ds18x20" if name == "DS18X20" else "onewire")
    return getattr(real, name)
