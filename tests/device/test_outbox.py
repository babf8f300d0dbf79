"""device/outbox.py on the real MicroPython interpreter: order, CRC, ring, drops, restarts, RTC fallback.

Each test runs MicroPython code in a fresh interpreter (a new process is a
reset of the device) and checks the JSON it prints. `fs` runs a test on the
unix port's plain file system (VfsPosix) and on littlefs (vfs.VfsLfs2 over a
block device in a file), the ESP32's file system.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.device.helpers import lfs_setup, run_mp

pytestmark = pytest.mark.integration


@dataclass(frozen=True, slots=True)
class Fs:
    """Where the outbox lives: MicroPython set-up lines and the outbox path prefix."""

    setup: str
    prefix: str
    rtc_path: str

    def code(self, body: str) -> str:
        return ("import json, gc, os, time\nimport outbox\nfrom fakertc import FileRTC\n"
                + self.setup + f"P = {self.prefix!r}\nRTC = FileRTC({self.rtc_path!r})\n" + body)


@pytest.fixture(params=["posix", "lfs"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Fs:
    rtc = str(tmp_path / "rtc.bin")
    if request.param == "posix":
        return Fs("", str(tmp_path / "ob"), rtc)
    return Fs(lfs_setup(tmp_path), "/fl/ob", rtc)


@pytest.fixture
def posix(tmp_path: Path) -> Fs:
    return Fs("", str(tmp_path / "ob"), str(tmp_path / "rtc.bin"))


# MicroPython: every pending reading as [boot, seq, payload].
DUMP = """
def dump(ob):
    buf = ob.record_buffer()
    out = []
    for i in range(ob.pending()):
        p = ob.read_into(i, buf)
        out.append(None if p is None else [ob.rec_boot, ob.rec_seq, bytes(p).decode()])
    return out
def counters(ob):
    return {"pending": ob.pending(), "staged": ob.staged(), "head": ob.head, "tail": ob.tail,
            "dropped": ob.dropped, "corrupt": ob.corrupt, "lost": ob.lost_unflushed,
            "unknown": ob.loss_unknown, "last_loss": ob.last_loss, "from": ob.recovered_from}
"""


def test_append_flush_read_ack_in_order(fs: Fs) -> None:
    out = run_mp(fs.code(DUMP + """
ob = outbox.Outbox(P, capacity=100, flush_every=10, flush_interval_ms=60000)
for s in range(25):
    ob.append(7, s, b'{"seq":%d}' % s)
before = counters(ob)
first = dump(ob)
acks = [ob.ack_oldest(), ob.ack_oldest()]
ob.flush()
print(json.dumps({"before": before, "first": first, "acks": acks, "after": counters(ob), "rest": dump(ob)}))
"""))
    assert out["before"]["pending"] == 20 and out["before"]["staged"] == 5  # staged readings are not sendable
    assert out["first"] == [[7, s, '{"seq":%d}' % s] for s in range(20)]
    assert out["acks"] == [True, True]  # in order: the session checks the record number (rec_lsn) itself
    assert out["after"]["pending"] == 23 and out["after"]["staged"] == 0
    assert [r[1] for r in out["rest"]] == list(range(2, 25))


def test_time_based_flush_and_poll_deadline(posix: Fs) -> None:
    out = run_mp(posix.code("""
ob = outbox.Outbox(P, capacity=10, flush_every=10, flush_interval_ms=40)
ob.append(1, 0, b'x')
left = ob.poll()
idle = ob.pending()
time.sleep_ms(left + 5)
after = ob.poll()
print(json.dumps({"left": left, "idle": idle, "after": after, "pending": ob.pending(), "nothing": ob.poll()}))
"""))
    assert 0 < out["left"] <= 40 and out["idle"] == 0
    assert out["after"] == -1 and out["pending"] == 1 and out["nothing"] == -1


def test_payload_bigger_than_a_slot_is_rejected(posix: Fs) -> None:
    out = run_mp(posix.code(DUMP + """
ob = outbox.Outbox(P, capacity=10, slot_size=64, flush_every=1)
ob.append(1, 0, b'a' * ob.max_payload)
try:
    ob.append(1, 1, b'a' * (ob.max_payload + 1))
    err = None
except ValueError as e:
    err = str(e)
print(json.dumps({"max": ob.max_payload, "err": err, "c": counters(ob)}))
"""))
    assert out["max"] == 44 and "too big" in out["err"]
    assert out["c"]["pending"] == 1 and out["c"]["head"] == 1


def test_restart_finds_pending_readings_in_order(fs: Fs) -> None:
    first = run_mp(fs.code("""
ob = outbox.Outbox(P, capacity=64, segment_slots=8, flush_every=5)
for s in range(30):
    ob.append(3, s, b'r%d' % s)
for _ in range(4):
    ob.ack_oldest()
ob.close()
print(json.dumps({"ok": 1}))
"""))
    assert first == {"ok": 1}
    out = run_mp(fs.code(DUMP + """
ob = outbox.Outbox(P, capacity=64, segment_slots=8, flush_every=5)
c = counters(ob)
for s in range(3):
    ob.append(4, s, b'n%d' % s)
ob.flush()
print(json.dumps({"c": c, "all": dump(ob)}))
"""))
    assert out["c"]["from"] == "flash" and out["c"]["lost"] == 0 and out["c"]["unknown"] == 0
    assert out["all"] == ([[3, s, "r%d" % s] for s in range(4, 30)] + [[4, s, "n%d" % s] for s in range(3)])


def test_ring_wraps_around_without_drops_when_acked(fs: Fs) -> None:
    out = run_mp(fs.code(DUMP + """
ob = outbox.Outbox(P, capacity=16, segment_slots=4, flush_every=3)
buf = ob.record_buffer()
got = []
for s in range(201):
    ob.append(1, s, b'%d' % s)
    while ob.pending():
        ob.read_into(0, buf)
        got.append(ob.rec_seq)
        ob.ack_oldest()
ob.close()
files = sorted(n for n in os.listdir(P.rsplit('/', 1)[0]) if n.startswith('ob.'))
sizes = [os.stat(P.rsplit('/', 1)[0] + '/' + n)[6] for n in files]
print(json.dumps({"got": got, "files": files, "sizes": sizes, "dropped": ob.dropped, "head": ob.head}))
"""))
    assert out["got"] == list(range(201)) and out["dropped"] == 0 and out["head"] == 201
    # capacity 16 in segments of 4: ceil(16/4) + 1 = 5 segment files and the state file
    assert out["files"] == ["ob.0", "ob.1", "ob.2", "ob.3", "ob.4", "ob.st"]
    assert max(out["sizes"][:5]) <= 4 * 256


def test_full_outbox_drops_oldest_and_counts(fs: Fs) -> None:
    out = run_mp(fs.code(DUMP + """
ob = outbox.Outbox(P, capacity=16, segment_slots=4, flush_every=2)
for s in range(41):
    ob.append(1, s, b'%d' % s)
ob.flush()
c = counters(ob)
ob.close()
ob = outbox.Outbox(P, capacity=16, segment_slots=4, flush_every=2)
print(json.dumps({"c": c, "again": counters(ob), "all": dump(ob)}))
"""))
    c = out["c"]
    assert 16 <= c["pending"] <= 20  # whole segments are dropped: between capacity and K*S
    assert c["dropped"] == 41 - c["pending"]
    assert [r[1] for r in out["all"]] == list(range(41 - c["pending"], 41))  # the newest survive, in order
    assert out["again"]["dropped"] == c["dropped"]  # the counter survives a restart


def test_a_corrupt_slot_fails_its_crc(posix: Fs, tmp_path: Path) -> None:
    run_mp(posix.code("""
ob = outbox.Outbox(P, capacity=32, segment_slots=8, flush_every=8)
for s in range(8):
    ob.append(1, s, b'reading-%d' % s)
ob.close()
print(json.dumps({}))
"""))
    seg = tmp_path / "ob.0"
    data = bytearray(seg.read_bytes())
    data[3 * 256 + 25] ^= 0x01  # one bit of reading 3's payload
    data[0 * 256 + 30] ^= 0x80  # and one of reading 0's
    seg.write_bytes(bytes(data))
    out = run_mp(posix.code(DUMP + """
ob = outbox.Outbox(P, capacity=32, segment_slots=8, flush_every=8)
buf = ob.record_buffer()
third = ob.read_into(3, buf)
p0 = ob.read_into(0, buf)
print(json.dumps({"third": third is None, "first": [ob.rec_seq, bytes(p0).decode()], "c": counters(ob),
                  "all": dump(ob)}))
"""))
    assert out["third"] is True  # a corrupt reading further on reads as None
    assert out["first"] == [1, "reading-1"]  # the corrupt oldest is skipped ...
    assert out["c"]["corrupt"] == 1 and out["c"]["pending"] == 7  # ... and counted
    assert out["all"][2] is None and [r[1] for r in out["all"] if r] == [1, 2, 4, 5, 6, 7]


def test_a_torn_last_write_is_found_by_scanning_and_counted(posix: Fs, tmp_path: Path) -> None:
    run_mp(posix.code("""
ob = outbox.Outbox(P, capacity=32, segment_slots=8, flush_every=6)
for s in range(6):
    ob.append(2, s, b'reading-%d' % s)
print(json.dumps({"head": ob.head}))
"""))
    seg = tmp_path / "ob.0"
    seg.write_bytes(seg.read_bytes()[: 5 * 256 + 100])  # power died inside slot 5
    out = run_mp(posix.code(DUMP + """
ob = outbox.Outbox(P, capacity=32, segment_slots=8, flush_every=6)
c = counters(ob)
ob.append(3, 0, b'next')
ob.flush()
print(json.dumps({"c": c, "all": dump(ob)}))
"""))
    assert out["c"]["head"] == 5 and out["c"]["lost"] == 1 and out["c"]["last_loss"] == [2, 5, 5]
    assert [r[:2] for r in out["all"]] == [[2, s] for s in range(5)] + [[3, 0]]


def test_rtc_memory_keeps_the_exact_tail_and_flash_is_the_fallback(posix: Fs, tmp_path: Path) -> None:
    life = """
ob = outbox.Outbox(P, capacity=64, flush_every=5, ack_persist_every=4, rtc=RTC, count_losses=False)
c = counters(ob)
"""
    run_mp(posix.code(DUMP + life + """
for s in range(20):
    ob.append(1, s, b'%d' % s)
for _ in range(11):
    ob.ack_oldest()
print(json.dumps(c))
"""))  # no close(): the process ends as a reset would end it
    rtc, state = tmp_path / "rtc.bin", tmp_path / "ob.st"
    flash_state = state.read_bytes()
    after_reset = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert after_reset["from"] == "rtc" and after_reset["tail"] == 11  # exact: no duplicates
    state.write_bytes(flash_state)  # back to the moment of the reset ...
    rtc.unlink()  # ... but now the power is cut, which clears RTC memory
    after_cut = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert after_cut["from"] == "flash" and after_cut["tail"] == 8  # acks persisted every 4: 3 resent
    rtc.write_bytes(b"\x00" * 52)  # garbage in RTC memory is not believed
    garbage = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert garbage["from"] == "flash" and garbage["tail"] == 8


def test_rtc_memory_of_another_outbox_is_ignored(posix: Fs, tmp_path: Path) -> None:
    code = posix.code(DUMP + """
ob = outbox.Outbox(P, capacity=16, flush_every=1, rtc=RTC)
c = counters(ob)
for s in range(3):
    ob.append(1, s, b'%d' % s)
ob.ack_oldest()
print(json.dumps(c))
""")
    run_mp(code)
    for f in tmp_path.glob("ob.*"):
        f.unlink()  # the flash was wiped; RTC memory still holds the old outbox's state
    fresh = run_mp(code)
    assert fresh["from"] == "new" and fresh["tail"] == 0 and fresh["head"] == 0


@pytest.mark.parametrize(("count_losses", "rtc", "lost", "unknown"), [
    (True, False, 5, 0),   # the state on flash marks every append: exact after a power cut
    (False, True, 5, 0),   # RTC memory marks every append: exact after a reset
    (False, False, 0, 1),  # neither: the device says it cannot know
])
def test_readings_lost_unflushed_are_counted_by_the_device(posix: Fs, count_losses: bool, rtc: bool,
                                                           lost: int, unknown: int) -> None:
    life = f"""
ob = outbox.Outbox(P, capacity=64, flush_every=10, flush_interval_ms=60000,
                   rtc={'RTC' if rtc else 'None'}, count_losses={count_losses})
c = counters(ob)
"""
    run_mp(posix.code(DUMP + life + """
for s in range(15):
    ob.append(9, s, b'%d' % s)
print(json.dumps(c))
"""))  # 10 flushed, 5 staged in RAM when the "power" goes
    out = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert out["pending"] == 10
    assert out["lost"] == lost and out["unknown"] == unknown
    assert out["last_loss"] == ([9, 10, 14] if lost else None)
    again = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert again["lost"] == lost and again["unknown"] == unknown  # counted once, not per restart


def test_a_clean_close_loses_nothing_even_without_marks(posix: Fs) -> None:
    life = """
ob = outbox.Outbox(P, capacity=64, flush_every=10, count_losses=False)
c = counters(ob)
"""
    run_mp(posix.code(DUMP + life + """
for s in range(15):
    ob.append(9, s, b'%d' % s)
ob.close()
print(json.dumps(c))
"""))
    out = run_mp(posix.code(DUMP + life + "print(json.dumps(c))"))
    assert out["pending"] == 15 and out["lost"] == 0 and out["unknown"] == 0


def test_a_failed_flush_keeps_its_readings_for_the_next_try(posix: Fs) -> None:
    out = run_mp(posix.code(DUMP + """
class Failing:  # the head file, failing its next two syncs like a full or worn-out flash
    def __init__(self, f):
        self.f, self.fail = f, 2
    def seek(self, pos):
        return self.f.seek(pos)
    def write(self, b):
        return self.f.write(b)
    def readinto(self, b):
        return self.f.readinto(b)
    def close(self):
        self.f.close()
    def flush(self):
        if self.fail:
            self.fail -= 1
            raise OSError(28)  # ENOSPC
        self.f.flush()
ob = outbox.Outbox(P, capacity=64, segment_slots=32, flush_every=4, flush_interval_ms=60000)
for s in range(6):
    ob.append(1, s, b'%d' % s)
ob._head_file = Failing(ob._head_file)
refused = []
s = 6
while s < 10:
    try:
        ob.append(1, s, b'%d' % s)
        s += 1
    except OSError as e:  # not accepted: the app tries the same reading again
        refused.append([s, e.args[0], ob.staged(), ob.pending()])
ob.flush()
print(json.dumps({"refused": refused, "errors": ob.flush_errors, "c": counters(ob),
                  "all": dump(ob)}))
"""))
    # seq 7 filled the stage and was accepted though its flush failed (counted); seq 8 found
    # the stage still full, retried the flush, failed again and was refused; its retry went in.
    assert out["errors"] == 1
    assert out["refused"] == [[8, 28, 4, 4]]
    assert out["c"]["pending"] == 10 and out["c"]["staged"] == 0
    assert [r[1] for r in out["all"]] == list(range(10))  # each once, in order
