# A flash block device in a host file, for vfs.VfsLfs2 (real littlefs, as on
# the ESP32) on the unix port (MicroPython code). It counts erases and
# programs, so tests can report flash cost per reading; `delay_ms` slows every
# erase/program down so that a SIGKILL lands inside a flush.
import time
import vfs

ERASE_BYTE = 0xFF


class FileBlockDevice:
    def __init__(self, path, block_size=4096, blocks=256, delay_ms=0):
        self.block_size = block_size
        self.blocks = blocks
        self.delay_ms = delay_ms
        self.erases = 0
        self.progs = 0
        self.prog_bytes = 0
        try:
            self._f = open(path, "r+b")
            self.fresh = False
        except OSError:
            self._f = open(path, "w+b")
            blank = bytes([ERASE_BYTE]) * block_size
            for _ in range(blocks):
                self._f.write(blank)
            self.fresh = True

    def readblocks(self, block, buf, offset=0):
        self._f.seek(block * self.block_size + offset)
        self._f.readinto(buf)

    def writeblocks(self, block, buf, offset=None):
        # littlefs erases through ioctl(6) and programs with an offset (extended interface).
        if offset is None:
            self._erase(block)
            offset = 0
        if self.delay_ms:
            time.sleep_ms(self.delay_ms)
        self.progs += 1
        self.prog_bytes += len(buf)
        self._f.seek(block * self.block_size + offset)
        self._f.write(buf)

    def _erase(self, block):
        if self.delay_ms:
            time.sleep_ms(self.delay_ms)
        self.erases += 1
        self._f.seek(block * self.block_size)
        self._f.write(bytes([ERASE_BYTE]) * self.block_size)

    def ioctl(self, op, arg):
        if op == 4:  # block count
            return self.blocks
        if op == 5:  # block size
            return self.block_size
        if op == 6:  # erase
            self._erase(arg)
            return 0
        return None


def mount(image, mountpoint, blocks=256, delay_ms=0):
    """Mount littlefs from `image` at `mountpoint` (formatting a new image); the device."""
    bd = FileBlockDevice(image, blocks=blocks, delay_ms=delay_ms)
    if bd.fresh:
        vfs.VfsLfs2.mkfs(bd)
    vfs.mount(vfs.VfsLfs2(bd), mountpoint)
    return bd
