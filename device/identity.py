# Ferry firmware: who the device is, which boot this is and how many starts failed before
# it (MicroPython). Every reading carries (device id, boot, seq) (docs/contract.md): the
# boot counter lives on flash and goes up by one on every start (reset, power-on,
# deep-sleep wake) before the first reading of that boot exists, so a (boot, seq) is
# never reused. A start that fails before that takes no number; crashlog.py counts it.
from flashfs import replace

BOOT_PATH = "/ferry_boot"
CRASH_PATH = "/ferry_crash"  # crashlog.py's: "failures N", then the last traceback
MAX_BOOT = 0xFFFFFFFF


def device_id(configured, uid_hex):
    """The configured id, else "esp32-" + the unique id in lowercase hex (the contract's rule)."""
    return configured if configured else "esp32-" + uid_hex.lower()


def _read(name):
    try:
        with open(name) as f:
            return int(f.read().strip())
    except (OSError, ValueError):
        return 0


def next_boot(path=BOOT_PATH):
    """Persist and return this start's boot number (1 on the first start).

    Written as path.tmp, then renamed over path. A cut between the two leaves the
    newer number in .tmp, so the larger of both files is the last boot: a number is
    never handed out twice, at worst one is skipped.
    """
    last = last_boot(path)
    boot = last + 1 if last < MAX_BOOT else 1
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        f.write("%d\n" % boot)
    replace(tmp, path)
    return boot


def last_boot(path=BOOT_PATH):
    """The number the last start took, 0 before the first (update mode takes none: it makes no readings)."""
    return max(_read(path), _read(path + ".tmp"))


def failed_starts():
    """Starts in a row before this one that failed with an exception (the crash file's first line)."""
    try:
        with open(CRASH_PATH) as f:
            return int(f.readline().split()[1])
    except (OSError, ValueError, IndexError):  # never failed, or a torn file
        return 0
