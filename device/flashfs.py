# Ferry firmware: replacing a small file on flash in one step (MicroPython).
import os


def replace(tmp, path):
    """Rename tmp over path: atomic on littlefs (ESP32) and POSIX.

    The new name is given relative to the current directory ("/" unless the firmware
    changed it, which it does not): the unix port's VfsPosix fails a rename whose two
    paths are both absolute (MicroPython 1.29). On a file system that cannot rename
    over an existing file (FAT), the old file is removed first; readers then fall back
    to tmp (see identity.next_boot and Settings.load).
    """
    new = path[1:] if path.startswith("/") and os.getcwd() == "/" else path
    try:
        os.rename(tmp, new)
    except OSError:
        try:
            os.remove(path)
        except OSError:
            pass
        os.rename(tmp, new)
