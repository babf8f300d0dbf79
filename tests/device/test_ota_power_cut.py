"""Power cuts during an over-the-air update: SIGKILL of the interpreter at random moments of the
download, the switch and the first boot, on real littlefs (a block device in a file, every erase
and program slowed to 1 ms so kills land inside them).

A life (mp/ota_life.py) selects the folder to run, says what runs, does the trial's first boot and
confirms it, then downloads the release from the offset it needs and installs it. After every cut
the next life must run either the old version or the new one, whole (app.py and util.py of one
version, the running folder's files exactly the release's), the outbox file byte for byte as it
was; once power stays on, the board ends on the new version, confirmed."""

from __future__ import annotations

import hashlib
import json
import random
import subprocess
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest

from ferry.hwsim.micropython import interpreter, prelude
from tests.device.helpers import MP_PATH
from tests.device.ota_support import Board, app_files, hashes, make

pytestmark = pytest.mark.integration

OLD = app_files("0.1.0")
# Four updates in a row: the board goes / -> a -> b -> a -> b, each switch removing the older folder;
# file sets differ (extra.py comes and goes), so a mix of two versions would show.
RELEASES = [("0.2.0", app_files("0.2.0", pad=300)),
            ("0.3.0", {**app_files("0.3.0", pad=200), "extra.py": b"E = 3\n" * 150}),
            ("0.4.0", app_files("0.4.0", pad=250)),
            ("0.5.0", {**app_files("0.5.0", pad=100), "extra.py": b"E = 5\n" * 90})]
LIVES = 80
CUTS_PER_UPDATE = 6  # lives cut short per update (4 updates), at a random moment of its first 200 ms
HEAP = 256 * 1024


@contextmanager
def life(board: Board, power_on: bool, seed: int, first: bool = False) -> Iterator[subprocess.Popen[str]]:
    args = [str(board.flash), str(board.host), str(board.root / "flash.img"), power_on, seed, first]
    code = prelude(MP_PATH) + f"import ota_life\nota_life.main(*{args!r})\n"
    proc = subprocess.Popen([interpreter(), "-X", f"heapsize={HEAP}", "-c", code], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True)
    try:
        yield proc
    finally:
        if proc.poll() is None:
            proc.kill()
        proc.communicate(timeout=30)


@pytest.mark.parametrize("run", range(3))
def test_power_cuts_leave_the_old_or_the_new_version_whole_and_the_outbox_untouched(tmp_path: Path, run: int) -> None:
    seed = random.randrange(1 << 30)
    rng = random.Random(seed)
    board = Board(tmp_path / "b")
    (board.host / "factory").mkdir()
    for n, d in OLD.items():
        (board.host / "factory" / n).write_bytes(d)
    outbox = bytes(rng.getrandbits(8) for _ in range(3000))
    (board.host / "ob.bin").write_bytes(outbox)
    with life(board, True, 0, first=True) as p:
        out, err = p.communicate(timeout=60)
    assert '"formatted": true' in out, out + err

    expected = {"0.1.0": hashes(OLD), **{v: hashes(f) for v, f in RELEASES}}
    target = 0
    rel = make(*RELEASES[target])
    board.inputs(rel)
    (board.host / "stream.bin").write_bytes(rel.stream)
    seen: list[str] = []
    cuts: dict[str, int] = {}
    power_on = True
    cuts_left = CUTS_PER_UPDATE  # then the power stays on until the update is through
    for n in range(LIVES):
        cut = cuts_left > 0
        cuts_left -= 1
        with life(board, power_on, rng.randrange(1 << 30)) as p:
            if cut:
                time.sleep(rng.uniform(0.0, 0.2))
                p.kill()
            out, err = p.communicate(timeout=60)
        lines = [json.loads(x) for x in out.splitlines() if x.startswith("{")]
        killed = p.returncode != 0
        assert killed or not err, err
        if killed:
            last = "nothing" if not lines else next(iter(k for k in ("end", "n", "confirmed", "offer", "slot")
                                                          if k in lines[-1]))
            if last == "slot":
                where = "first boot" if lines[0]["st"].get("trial") else "start"
            elif last == "n":
                where = "verify and switch" if lines[-1]["total"] - lines[-1]["n"] <= 256 else "download"
            else:
                where = {"nothing": "start", "confirmed": "after confirming", "offer": "download",
                         "end": "reset"}[last]
            cuts[where] = cuts.get(where, 0) + 1
        if not lines:
            continue
        start = lines[0]
        ctx = f"seed {seed}, life {n}: {lines} {err}"
        ver = start["app"][0]
        assert start["app"] == [ver, ver], ctx  # never a mix
        got = {k: v for k, v in start["files"].items() if k not in ("manifest.json", "offer", "index")}
        assert got == expected[ver], ctx  # the running folder holds exactly one version's files
        assert start["ob"] == hashlib.sha256(outbox).hexdigest(), ctx  # the outbox untouched
        assert [v for v, _ in RELEASES].index(ver) >= target - 1 if ver != "0.1.0" else target == 0, ctx
        if not seen or seen[-1] != ver:
            seen.append(ver)
        if any(x.get("offer") == "current" for x in lines):
            assert start["st"].get("trial") is None or any("confirmed" in x for x in lines), ctx
            target += 1
            if target == len(RELEASES):
                break
            rel = make(*RELEASES[target])  # the operator pushes the next release
            board.inputs(rel)
            (board.host / "stream.bin").write_bytes(rel.stream)
            cuts_left = CUTS_PER_UPDATE
        # a life that installed ends with the board's reset (not a power-on); a cut is a power-on
        ends = [x for x in lines if "end" in x]
        power_on = killed or not (ends and ends[-1]["end"] == "installed")
    assert target == len(RELEASES), f"seed {seed}: stopped at {seen} after {LIVES} lives, cuts {cuts}"
    assert seen == ["0.1.0"] + [v for v, _ in RELEASES], seen  # no rollback: every trial was confirmed
    print(f"seed {seed}: {n + 1} lives, cuts {cuts}")
