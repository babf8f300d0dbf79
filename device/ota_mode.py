# Ferry firmware: update mode (docs/ota.md, "Heap"). MicroPython.
#
# A download needs ~5 KB of the heap for as long as it runs and ~10 KB more at its rare
# moments (the manifest's checks, the read-back and the switch): more than a 64 KB board has
# free beside the running app (its outbox, encoder, sensor drivers and their modules). So an
# offer resets the board into this module instead of app (ota_request.py writes /ota/update;
# boot_select.module() then runs this module): the session and the download alone. No readings are taken; the outbox
# is not opened, so what it holds waits on flash untouched and the next app start sends it.
# No boot number is taken (no reading carries one) and no birth is published: the status says
# "offline" (the will) until the new version, or the app again, says "online".
#
# Update mode ends with a reset: into the new version once it is installed and its reply
# acknowledged; into the app when the download failed, the offered release is what runs, or
# nothing came for IDLE_MS (the stage stays: a later offer resumes it).
import gc
import os
import sys
import time

from micropython import const

import identity
from hw import Hardware, log
from session import RX_BYTES, Session, Topics
from settings import Settings, SettingsError

IDLE_MS = const(120000)  # no offer or chunk for this long: back to the app
REPLY_WAIT_MS = const(3000)  # the last reply's PUBACK, at most this long, before the reset
UPDATE = "/ota/update"


class NoReadings:
    """The outbox as the session sees it in update mode: nothing to publish."""

    tail = 0
    max_payload = 0

    @staticmethod
    def pending():
        return 0

    @staticmethod
    def record_buffer():
        return bytearray(0)


class Update:
    """Update mode's loop: the session, commands (the offer) and chunks to ota.py, the resets."""

    def __init__(self, hw, cfg):
        import ota_download as ota

        self.hw = hw
        self.cfg = cfg
        dev = identity.device_id(cfg.device_id, hw.unique_id_hex())
        self.will = ('{"v":1,"dev":"%s","state":"offline","boot":%d}' % (dev, max(1, identity.last_boot()))).encode()
        topics = Topics(cfg.site, dev)
        self.session = Session(cfg, dev, topics, NoReadings(), self.on_cmd, self.on_ota, hw.feed)
        self.ota = ota.Ota(ota.max_chunk(len(topics.ota), RX_BYTES), self.corrupt, ota.load_key())
        self.heard = time.ticks_ms()
        self.done_at = None
        self.heap_low = -1
        log("ota: update mode, device %s, heap free %d" % (dev, self.heap()))

    def heap(self):
        """gc.mem_free() after a collection, the lowest kept in heap_low."""
        gc.collect()
        f = gc.mem_free()
        if self.heap_low < 0 or f < self.heap_low:
            self.heap_low = f
        return f

    @staticmethod
    def corrupt():
        """The outbox's corrupt-record count when the app asked for update mode (the trial compares)."""
        try:
            with open(UPDATE) as f:
                return int(f.read())
        except (OSError, ValueError):
            return 0

    def on_cmd(self, payload, size, pid):
        """Commands as the app answers them (commands.py), the `ota` offer to ota_download.py."""
        self.heard = time.ticks_ms()
        import commands

        try:
            reply = commands.handle(self.cfg, payload, size, self.ota.offer)[0]
        except Exception as e:  # answered all the same: a command that raised would come back forever
            reply = ('{"v":1,"id":null,"ok":false,"error":"internal: %s"}' % type(e).__name__).encode()
        finally:
            del sys.modules["commands"]
        log("cmd: %d bytes -> %s" % (size, reply.decode()))
        self.session.reply(reply, pid)

    def on_ota(self, payload, size):
        """A chunk: written by ota_download.py before the session PUBACKs it; progress goes to .../reply."""
        self.heard = time.ticks_ms()
        try:
            r = self.ota.chunk(payload, size, self.heard)
        except MemoryError:  # a fragmented heap at a peak: start update mode again, fresh; it resumes from flash
            log("ota: out of memory at %d: reset" % self.ota.next)
            self.hw.reset()
            return
        except Exception as e:  # a flash error: dropped (PUBACKed), the operator resends
            log("ota: chunk not taken: %r" % (e,))
            return
        self.heap()
        if r is not None:
            self.session.reply(r, 0)

    def run(self):
        cfg = self.cfg
        hw = self.hw
        s = self.session
        hw.watchdog(cfg.wdt_timeout_ms)
        next_connect = time.ticks_ms()
        while True:
            hw.feed()
            now = time.ticks_ms()
            if s.up:
                s.service(now)
            elif time.ticks_diff(now, next_connect) >= 0:
                if not (hw.wifi_connect(cfg.wifi_ssid, cfg.wifi_password, cfg.wifi_timeout_ms, hw.feed)
                        and s.connect(None, self.will)):
                    next_connect = time.ticks_add(time.ticks_ms(), s.backoff.next_ms())
            if self.ota.state not in ("idle", "download") or time.ticks_diff(now, self.heard) >= IDLE_MS:
                self.finish(now)
            if s.up:
                s.wait(min(1000, s.deadline_ms(time.ticks_ms())))
            else:
                time.sleep_ms(max(0, min(1000, time.ticks_diff(next_connect, time.ticks_ms()))))

    def finish(self, now):
        """Installed, failed, current or idle: reset once the last reply is acknowledged (or a few s)."""
        s = self.session
        if self.done_at is None:
            self.done_at = now
            log("ota: update mode ends: %s %s (heap low %d, download's peaks %d)" % (
                self.ota.state, self.ota.error or self.ota.slot, self.heap_low, self.ota.heap_low))
        if s.up and s.in_flight() and time.ticks_diff(now, self.done_at) < REPLY_WAIT_MS:
            return
        try:
            os.remove(UPDATE)
        except OSError:
            pass
        s.close()
        self.hw.reset()


def main():
    """Run update mode until it resets the board; returns only when the configuration is bad."""
    try:
        cfg = Settings.load()
    except SettingsError as e:
        log("config: %s" % e)
        return
    Update(Hardware(cfg.i2c_scl_pin, cfg.i2c_sda_pin, ()), cfg).run()
