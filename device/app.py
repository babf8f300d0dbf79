# Ferry firmware: the application (MicroPython, ESP32 v1.22+ and the unix port).
#
#   sample -> encode (ReadingEncoder) -> outbox.append -> publish from the outbox tail
#   -> outbox ack on PUBACK -> feed the watchdog -> sleep in poll() until the next deadline
#
# Over-the-air updates (docs/ota.md): main.py's boot_select chose the app folder this start
# runs; an update's first start runs on trial (ota_trial: confirmed once healthy, else rolled
# back). An offer resets the board into update mode (ota_request.py, ota_mode.py): a download
# does not fit beside this module's heap.
#
# Two modes (settings.mode):
# - always_on: sample every sample_ms, stay connected, reconnect with backoff.
# - duty_cycle: every wake is a boot: sample once, connect, send the backlog and take
#   commands within wake_budget_ms, say "offline", deep-sleep until the next sample.
# Each start takes the next boot number from flash before its first reading, and seq
# counts that boot's readings from 0: (device, boot, seq) is never reused.
#
# Heap (docs/device.md, "Heap"): the modules, the outbox's and the session's buffers and
# the settings stay for the whole run; everything else is short-lived. MicroPython's
# allocator does not move objects and, between collections, goes on from where its last
# allocation ended: long-lived objects made right after a burst of garbage (an import, a
# JSON parse, the outbox's recovery) end up scattered over the heap, and later a buffer of
# a few hundred bytes finds no hole big enough although tens of KB are free. So the
# firmware collects before each group of long-lived allocations (the next ones then fill
# the heap from its lowest free block), allocates the big buffers early, and imports
# `commands` only when the first command arrives.
import gc
import os
import sys
import time

import micropython

# The update state first (a trial start, the birth's "ota"): its module comes and, unless this start
# is a trial, goes before anything long-lived is allocated. A board that never took an update (no
# /ota) does not load it at all: its qstrs would stay (~1 KB of the heap, docs/ota.md "Heap").
try:
    os.stat("/ota")
    import ota_trial  # noqa: I001 - order matters, see above

    _TRIAL, _OTA_STATUS = ota_trial.start()
    del ota_trial
except OSError:
    _TRIAL, _OTA_STATUS = None, '"ota":{"slot":"","state":"confirmed","ver":"","last":""}'
gc.collect()
# The biggest modules first: compiling a .py needs the most free heap.
from session import Session, Topics  # noqa: I001 - order matters, see above
gc.collect()
from outbox import Outbox  # noqa: E402
gc.collect()
from settings import Settings, SettingsError  # noqa: E402
from reading import MetricSet, ReadingEncoder  # noqa: E402
from hw import Hardware, log  # noqa: E402
import identity  # noqa: E402
gc.collect()
_FREE_AFTER_IMPORTS = gc.mem_free()

FW_VERSION = "0.1.0"
DATA_DIR = "/data"
_EPOCH_2000_UNIX_MS = 946684800000
_TRIAL_ACKS = 3  # ota_trial.MIN_ACKED: readings a trial start must see acknowledged
_SLEEP_CAP_MS = 60000  # never sleep longer than this (or half the watchdog) at once
_HEAP_CHECK_ACKS = 100  # with log_stats_every: heap_check() and a log line every this many PUBACKs too


class App:
    def __init__(self, hw, cfg):
        self.hw = hw
        self.cfg = cfg
        self.heap_low = _FREE_AFTER_IMPORTS  # lowest gc.mem_free() after a collection (heap_check)
        self.reset_cause = hw.reset_cause()
        self.boot = identity.next_boot()
        self.seq = 0
        self.dev = identity.device_id(cfg.device_id, hw.unique_id_hex())
        self.boot_failures = identity.failed_starts()
        self.faults = ",".join(['"%s"' % name for name in hw.faults])  # the status' JSON list
        self.t0 = time.ticks_ms()
        self.trial = _TRIAL  # None, or (a trial start) the outbox's corrupt count at the switch
        self.ota_status = _OTA_STATUS  # the birth's "ota" member
        try:
            os.mkdir(DATA_DIR)
        except OSError:
            pass
        # Long-lived allocations, biggest first, each group right after a collection.
        gc.collect()
        self.ob = Outbox(DATA_DIR + "/ob", capacity=cfg.outbox_capacity, flush_every=cfg.outbox_flush_every,
                         flush_interval_ms=cfg.outbox_flush_interval_ms, rtc=hw.rtc_memory())
        free_ob = self.heap_check()  # also clears the recovery's garbage
        self.session = Session(cfg, self.dev, Topics(cfg.site, self.dev), self.ob, self.on_cmd, None, hw.feed)
        self.enc = ReadingEncoder(self.dev.encode())
        self.full = MetricSet(hw.names, hw.decimals)  # every sensor's metrics: sample() writes here
        hw.names = hw.decimals = None  # MetricSet keeps its own
        self.part = None  # the metrics of the sensors that gave values, when some did not (made then)
        self.metrics = self.full  # what the next reading encodes
        self.t = [0, 0, 0]  # hw.now() output: seconds, ms, synced
        self.bat = self.rssi = None
        self._heap_acked = 0  # session.acked at the last heap_check
        self.will = ('{"v":1,"dev":"%s","state":"offline","boot":%d}' % (self.dev, self.boot)).encode()
        self.reported_lost = self.birth_lost = self.ob.lost_total()
        self.reported_erroring = self.birth_erroring = 0  # hw.erroring as the last status said it
        self.next_sample = time.ticks_ms()
        self.next_connect = self.next_sample
        self.ntp_at_s = 0  # next NTP attempt, in RTC seconds (days away: beyond ticks_ms' range)
        self.ntp_retry_s = cfg.ntp_retry_s  # after a failure; doubles up to ntp_resync_s
        self.ntp_check = self.next_sample
        self.stats_seq = 0
        self.stats_alloc = 0
        half = cfg.wdt_timeout_ms // 2
        self.max_sleep_ms = half if half < _SLEEP_CAP_MS else _SLEEP_CAP_MS
        log("boot %d (%s), device %s, fw %s, mode %s, sample %d ms; outbox %d pending, %d lost%s" % (
            self.boot, self.reset_cause, self.dev, FW_VERSION, cfg.mode, cfg.sample_ms, self.ob.pending(),
            self.ob.lost_total(), "" if self.ob.last_loss is None else " %r" % (self.ob.last_loss,)))
        log("mqtt: gateway %s:%d, %s, %s" % (cfg.broker_host, cfg.port(), "tls, CA pinned" if cfg.tls else
                                             "plain (tls false)", "password" if cfg.mqtt_password else "anonymous"))
        log("heap: free after imports %d, outbox %d, session %d" % (_FREE_AFTER_IMPORTS, free_ob,
                                                                    self.heap_check()))

    def heap_check(self):
        """gc.collect(), then gc.mem_free(); keeps the lowest value in heap_low. Returns it."""
        gc.collect()
        f = gc.mem_free()
        if f < self.heap_low:
            self.heap_low = f
        return f

    # ---- readings -------------------------------------------------------
    # The per-reading methods are small on purpose: MicroPython puts a call's frame on
    # the heap when its locals + stack pass 11 words (a try block counts too).
    def sample(self):
        """Take one reading into the outbox; False when the sensor failed (no seq is used)."""
        if not self._measure():
            return False
        try:
            self._append()
        except OSError:
            log("outbox: append failed, reading %d not taken" % self.seq)
            return False
        self.seq += 1
        return True

    def _measure(self):
        hw = self.hw
        if not hw.sample(self.full.values):
            return False
        self.metrics = self._present(hw.failed) if hw.failed else self.full
        hw.now(self.t)
        self.bat = hw.battery_mv()
        self.rssi = hw.rssi()
        return True

    def _present(self, failed):
        """self.part holding the metrics of the sensors that gave values (no allocation after the first)."""
        full = self.full
        part = self.part
        if part is None:
            part = self.part = MetricSet([b""] * full.count, full.decimals)
        owner = self.hw.owner
        n = 0
        for i in range(full.count):
            if not failed >> owner[i] & 1:
                part.keys[n] = full.keys[i]
                part.decimals[n] = full.decimals[i]
                part.values[n] = full.values[i]
                n += 1
        part.count = n
        return part

    def _append(self):
        self.ob.append(self.boot, self.seq, self.enc.view[:self._encode()])

    def _encode(self):
        # Only `self` as a local: with one more, this frame (8 arguments on the stack)
        # would go to the heap.
        return self.enc.encode(self.boot, self.seq, self.t[0], self.t[1], self.t[2] == 1, self.metrics,
                               self.bat, self.rssi)

    # ---- status and commands --------------------------------------------
    def birth(self):
        """The retained "online" status: boot, firmware, reset cause, outbox counters, failed
        starts before this one, the sensors this board runs without, each sensor's errors and the
        update state (ota_trial.status())."""
        hw = self.hw
        t = [0, 0, 0]
        hw.now(t)
        ts = t[0] * 1000 + t[1] + (_EPOCH_2000_UNIX_MS if t[2] else 0)
        self.birth_lost = self.ob.lost_total()
        self.birth_erroring = hw.erroring
        errors = ",".join(['"%s":%d' % (hw.labels[i], hw.drivers[i].errors) for i in range(len(hw.labels))
                           if hw.drivers[i] is not None])
        return ('{"v":1,"dev":"%s","state":"online","boot":%d,"fw":"%s","reset":"%s","ts":%d,"sync":%s,'
                '"outbox":{"queued":%d,"dropped":%d},"boot_failures":%d,"faults":[%s],"sensor_errors":{%s},%s}' % (
                    self.dev, self.boot, FW_VERSION, self.reset_cause, ts, "true" if t[2] else "false",
                    self.ob.pending() + self.ob.staged(), self.birth_lost, self.boot_failures,
                    self.faults, errors, self.ota_status)).encode()

    def on_cmd(self, payload, size, pid):
        """A command from the cmd topic: always answered, so the session can PUBACK it (after the
        reply's PUBACK). A command that raised would come back from the persistent session
        after every reset: a reset loop."""
        try:
            reply, changed = self._command(payload, size)
        except Exception as e:  # a bug, MemoryError: answered all the same
            reply, changed = ('{"v":1,"id":null,"ok":false,"error":"internal: %s"}' % type(e).__name__).encode(), False
        if changed:
            self.next_sample = time.ticks_add(time.ticks_ms(), self.cfg.sample_ms)
        self.session.reply(reply, pid)

    def _command(self, payload, size):
        import commands  # rare: loaded for each command, its heap given back after it (an update's room)

        try:
            reply, changed = commands.handle(self.cfg, payload, size, self._ota_offer)
        finally:
            del sys.modules["commands"]
        log("cmd: %d bytes -> %s" % (size, reply.decode()))
        return reply, changed

    def _ota_offer(self, cid, args):
        """The `ota` command (docs/ota.md): ota_request resets into update mode (or answers, on a trial)."""
        import ota_request

        try:
            return ota_request.request(self, cid, args)
        finally:
            del sys.modules["ota_request"]

    # ---- connecting -----------------------------------------------------
    def connect(self, wifi_wait_ms):
        """Wi-Fi (waiting at most wifi_wait_ms for it), NTP when due, MQTT; True when the session is up.
        app_connect.py's, imported for the call and dropped after it (as session_connect: heap back)."""
        import app_connect

        try:
            up = app_connect.connect(self, wifi_wait_ms)
        finally:
            del sys.modules["app_connect"]
        del app_connect
        if up and self.session.connects == 1:
            log("heap: free %d after the first connect" % self.heap_check())
        return up

    def sync_clock(self):
        """NTP now (app_connect.sync_clock); backed off after a failure."""
        import app_connect

        try:
            app_connect.sync_clock(self)
        finally:
            del sys.modules["app_connect"]

    def retry_later(self):
        delay = self.session.backoff.next_ms()
        self.next_connect = time.ticks_add(time.ticks_ms(), delay)
        log("mqtt: reconnect in %d ms (attempt %d)" % (delay, self.session.backoff.attempt))
        return delay

    # ---- always on --------------------------------------------------------
    def run(self):
        self.hw.watchdog(self.cfg.wdt_timeout_ms)
        log("watchdog: started, %d ms" % self.cfg.wdt_timeout_ms)
        s = self.session
        was_up = False
        while True:
            self.hw.feed()
            now = time.ticks_ms()
            if time.ticks_diff(now, self.next_sample) >= 0:
                self._sample_due(now)
            flush_in = self._flush_due()
            if s.up:
                s.service(time.ticks_ms())
            elif was_up:  # just lost: the first retry after a short delay
                self.retry_later()
            elif time.ticks_diff(time.ticks_ms(), self.next_connect) >= 0:
                # Association goes on in the background: waiting for it never holds up a sample.
                if not self.connect(time.ticks_diff(self.next_sample, time.ticks_ms())):
                    self.retry_later()
            was_up = s.up
            if was_up:
                self._housekeeping()
            if self.trial is not None and self._trial_due():
                self._trial_verdict()
            self._sleep(flush_in)

    def _trial_due(self):
        """ota_trial.check() may give its verdict: enough readings acknowledged, the outbox's corrupt count
        moved, or the deadline passed."""
        return (self.session.acked >= _TRIAL_ACKS or self.ob.corrupt != self.trial
                or time.ticks_diff(time.ticks_ms(), self.t0) >= self.cfg.ota_confirm_s * 1000)

    def _trial_verdict(self):
        # A method, not inline in run(): a module imported there would stay referenced by run()'s frame.
        import ota_trial  # only for the verdict: a trial start is the firmware's tightest heap

        ota_trial.tick(self)

    def _sample_due(self, now):
        self.sample()
        nxt = time.ticks_add(self.next_sample, self.cfg.sample_ms)
        if time.ticks_diff(nxt, now) <= 0:  # fell behind (a long connect): start again from now
            nxt = time.ticks_add(now, self.cfg.sample_ms)
        self.next_sample = nxt
        if self.cfg.log_stats_every and self.seq % self.cfg.log_stats_every == 0:
            self.log_stats()

    def _flush_due(self):
        """Flush the outbox if due; ms until it is next due (-1: nothing staged)."""
        try:
            return self.ob.poll()
        except OSError:
            log("outbox: flush failed")
            return 1000

    def _housekeeping(self):
        if self.cfg.log_stats_every and self.session.acked - self._heap_acked >= _HEAP_CHECK_ACKS:
            self._heap_watch()  # a backlog replay acks many readings between two samples
        # The server must hear of losses, and of a sensor that stops or starts answering again.
        if self.ob.lost_total() != self.reported_lost or self.hw.erroring != self.reported_erroring:
            if self.session.publish_status(self.birth()):
                self.reported_lost = self.birth_lost
                self.reported_erroring = self.birth_erroring
        now = time.ticks_ms()
        # The RTC is read once a minute (or per retry, if sooner); NTP is asked only while nothing is in
        # flight, so a slow or silent server never holds up a PUBACK the session waits for.
        if time.ticks_diff(now, self.ntp_check) >= 0 and self.session.idle():
            self.ntp_check = time.ticks_add(now, 1000 * min(60, self.ntp_retry_s))
            if time.time() >= self.ntp_at_s:
                self.sync_clock()

    def _heap_watch(self):
        s = self.session
        self._heap_acked = s.acked
        log("heap: free %d low %d (after gc; seq %d, acked %d, pending %d)" % (
            self.heap_check(), self.heap_low, self.seq, s.acked, self.ob.pending()))

    def _sleep(self, flush_in):
        """Until the next deadline: sample, outbox flush, session check, reconnect; never busy."""
        now = time.ticks_ms()
        s = self.session
        d = time.ticks_diff(self.next_sample, now)
        if d > self.max_sleep_ms:
            d = self.max_sleep_ms
        if 0 <= flush_in < d:
            d = flush_in
        if s.up:
            if s.can_send():
                d = 0
            else:
                d = min(d, s.deadline_ms(now))
        else:
            d = min(d, time.ticks_diff(self.next_connect, now))
        if d < 0:
            d = 0
        if s.up:
            s.wait(d)
        elif d:
            time.sleep_ms(d)

    def log_stats(self):
        """Heap and counters (log_stats_every): free heap after a collection, bytes allocated per reading."""
        total = micropython.mem_total() if hasattr(micropython, "mem_total") else 0
        per = (total - self.stats_alloc) // (self.seq - self.stats_seq) if self.stats_alloc else -1
        self.stats_alloc = total
        self.stats_seq = self.seq
        free = self.heap_check()
        s = self.session
        log("stats seq %d free %d alloc_per_reading %d pending %d sent %d resent %d acked %d links_lost %d "
            "heap_low %d" % (self.seq, free, per, self.ob.pending(), s.sent, s.resent, s.acked, s.links_lost,
                             self.heap_low))
        self.stats_alloc = micropython.mem_total() if total else 0


def main():
    """Run the firmware; returns only when the configuration is bad. Anything it raises goes to
    main.py, which logs it, backs off and resets (crashlog.py)."""
    try:
        cfg = Settings.load()
    except SettingsError as e:
        log("config: %s" % e)
        return
    app = App(Hardware(cfg.i2c_scl_pin, cfg.i2c_sda_pin, cfg.sensors), cfg)
    try:
        if cfg.mode == "duty_cycle":
            import duty_cycle  # only a duty-cycle board has this code on its heap

            duty_cycle.wake(app)
        else:
            app.run()
    except BaseException:  # a crash or Ctrl-C: the readings staged in RAM go to flash first
        try:
            app.ob.close()
        except Exception:
            pass
        raise
