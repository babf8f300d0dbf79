# hw-sim: the few esp32 module functions Ferry's firmware may touch (MicroPython code).
WAKEUP_ALL_LOW = False
WAKEUP_ANY_HIGH = True


def mcu_temperature():
    return 45


def wake_on_ext0(pin, level):
    pass
