"""Over-the-air updates on the device (device/ota.py, device/boot_select.py), on the real MicroPython
interpreter with a flash folder mounted at `/`: chunks in order, out of order, duplicated, corrupt;
the manifest's sha256 and HMAC; a file whose sha256 does not match; resuming after a reboot;
the switch; the trial start, its confirmation, and the rollbacks (deadline, crash loop, resets).

Releases are built and chunked by the operator side (ferry/ota.py), so the wire format is checked
between the two implementations, not against itself."""

from __future__ import annotations

import hashlib
import hmac
from pathlib import Path

import pytest

from ferry import ota as fota
from tests.device.ota_support import Board, app_files, chunk_list, hashes, make, offer_and_feed

pytestmark = pytest.mark.integration

OLD = app_files("0.1.0")
NEW = app_files("0.2.0", pad=100)  # ~1.2 KB: 5 chunks of 256, the first one spans manifest and app.py


@pytest.fixture
def board(tmp_path: Path) -> Board:
    b = Board(tmp_path / "b")
    b.factory(OLD)
    return b


def state(board: Board) -> dict[str, str]:
    text = (board.flash / "ota" / "state").read_text()
    return dict((line.split(" ", 1) + [""])[:2] for line in text.splitlines())


def slot_hashes(board: Board, slot: str) -> dict[str, str]:
    d = board.flash / "ota" / slot
    return {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in d.iterdir()
            if p.name not in ("manifest.json", "offer", "index")}


def test_in_order_download_is_verified_and_installed_as_the_trial_slot(board: Board) -> None:
    rel = make("0.2.0", NEW)
    chunks = board.inputs(rel)
    lines = board.run(offer_and_feed(list(range(len(chunks)))))
    offer = lines[0]["offer"]["result"]
    assert offer["ota"] == "download" and offer["next"] == 0 and offer["chunk"] == 256
    assert lines[0]["offer"]["id"] == "c-1"
    # the first chunk completes the manifest: the device says so, with the total now known
    assert lines[1]["reply"]["result"]["total"] == rel.size
    end = lines[-1]
    assert end["end"] == "installed" and end["slot"] == "a" and end["next"] == rel.size
    assert lines[-2]["reply"]["result"]["ota"] == "installed"
    assert slot_hashes(board, "a") == hashes(NEW)
    assert not (board.flash / "ota" / "stage").exists()
    st = state(board)
    assert st["trial"] == "a" and st["tver"] == "0.2.0" and st["cur"] == "" and st["tries"] == "0"
    assert {p.name for p in board.flash.iterdir()} >= {"app.py", "util.py"}  # the factory files untouched
    assert (board.flash / "app.py").read_bytes() == OLD["app.py"]


def test_out_of_order_duplicate_and_corrupt_chunks_are_not_taken(board: Board) -> None:
    rel = make("0.2.0", NEW)
    chunks = chunk_list(rel)
    bad = bytearray(chunks[2])
    bad[-1] ^= 0x01  # data corrupted, header intact: the CRC catches it
    other = fota.encode_chunk(b"\x00\x00\x00\x00", 256, rel.stream[256:512])  # another release's tag
    chunks = chunks + [bytes(bad), other]
    board.inputs(rel, chunks)
    bad_i, other_i = len(chunks) - 2, len(chunks) - 1
    # 0, then 2 (early: a gap), 1, 1 again (duplicate), the corrupt 2, another release's chunk, 2, 3, 4
    order = [0, 2, 1, 1, bad_i, other_i, 2, 3, 4]
    lines = board.run(offer_and_feed(order, step_ms=2000))  # 2 s apart: every refusal is reported
    steps = lines[1:-1]
    assert [s["next"] for s in steps] == [256, 256, 512, 512, 512, 512, 768, 1024, rel.size]
    assert steps[1]["reply"]["result"]["why"] == "offset 512" and steps[1]["reply"]["result"]["next"] == 256
    assert steps[3]["reply"]["result"]["why"] == "offset 256"
    assert steps[4]["reply"]["result"]["why"] == "crc at 512"
    assert steps[5]["reply"] is None  # not this release: ignored
    assert lines[-1]["end"] == "installed"
    assert slot_hashes(board, "a") == hashes(NEW)


def test_refusals_are_reported_at_most_once_a_second(board: Board) -> None:
    rel = make("0.2.0", NEW)
    board.inputs(rel)
    lines = board.run(offer_and_feed([0, 2, 2, 2, 2], step_ms=300))
    replies = [s["reply"] for s in lines[1:-1]]
    assert replies[0] is not None  # at 300 ms: the manifest is in (it says where the device is)
    # refusals at 600, 900, 1200 ms come within a second of that: quiet; the one at 1500 ms is said
    assert [r is not None for r in replies[1:]] == [False, False, False, True]
    assert replies[4]["result"]["why"] == "offset 512" and replies[4]["result"]["next"] == 256


def test_a_manifest_that_does_not_match_the_offer_is_refused_and_the_stage_removed(board: Board) -> None:
    rel = make("0.2.0", NEW)
    tag = bytes.fromhex("0" * 8)  # the offer names another manifest: chunks tagged for that one
    s = rel.stream
    board.inputs(rel, [fota.encode_chunk(tag, o, s[o:o + 256]) for o in range(0, len(s), 256)], sha256="0" * 64)
    lines = board.run(offer_and_feed([0, 1]))
    assert lines[1]["reply"]["ok"] is False
    assert lines[1]["reply"]["error"] == "ota: manifest: sha256 does not match the offer"
    assert lines[-1]["end"] == "failed"
    assert not (board.flash / "ota" / "stage").exists() and not (board.flash / "ota" / "a").exists()


def test_a_file_whose_sha256_differs_from_the_manifest_is_fetched_again(board: Board) -> None:
    good = make("0.2.0", NEW)
    # A manifest naming util.py's real sha256 but a stream carrying other bytes of the same size
    evil_util = NEW["util.py"].replace(b"padding", b"PADDING")
    rel = fota.Release(good.version, good.files, good.mpy, good.manifest)
    stream = good.manifest + NEW["app.py"] + evil_util
    chunks = [fota.encode_chunk(rel.tag, o, stream[o:o + 256]) for o in range(0, len(stream), 256)]
    util_start = len(good.manifest) + len(NEW["app.py"])
    n = len(chunks)
    # what DevicePush does on the refusal: resend from the offset the device names
    chunks += [fota.encode_chunk(rel.tag, o, good.stream[o:o + 256]) for o in range(util_start, good.size, 256)]
    board.inputs(rel, chunks)
    lines = board.run(offer_and_feed(list(range(len(chunks))), step_ms=2000))
    refused = [s for s in lines[1:-1] if s.get("reply") and s["reply"]["result"].get("why")]
    assert refused[0]["i"] == n - 1 and refused[0]["reply"]["result"]["why"] == "sha256 of util.py"
    assert refused[0]["next"] == util_start  # back to the file's start, the bad file removed
    assert lines[-1]["end"] == "installed"
    assert slot_hashes(board, "a") == hashes(NEW)


def test_resume_after_a_reboot_from_what_flash_holds(board: Board) -> None:
    rel = make("0.2.0", NEW)
    chunks = board.inputs(rel)
    first = board.run(offer_and_feed([0, 1, 2]))
    assert first[-1]["next"] == 768
    # a new start: a new Ota, as after a reset; the offer (re-sent by the operator) finds the stage
    again = board.run(offer_and_feed([1, 3, 4]))
    assert again[0]["offer"]["result"]["next"] == 768 and again[0]["offer"]["result"]["total"] == rel.size
    assert again[1]["reply"]["result"]["why"] == "offset 256"
    assert again[-1]["end"] == "installed"
    assert slot_hashes(board, "a") == hashes(NEW)
    # and a chunk arriving first after a reboot (the broker redelivers) resumes without an offer
    board2 = Board(board.root.parent / "b2")
    board2.factory(OLD)
    board2.inputs(rel, chunks)
    board2.run(offer_and_feed([0, 1]))
    lines = board2.run("import json, ota_download as ota\nt.out(r=t.feed(ota.Ota(256), t.chunks()[2], 0))\n"
                       "o = ota.Ota(256)\nfor c in t.chunks()[2:]:\n    t.feed(o, c, 0)\nt.out(end=o.state)\n")
    assert lines[0]["r"] is None and lines[1]["end"] == "installed"


def test_hmac_with_the_device_key(board: Board) -> None:
    key = bytes(range(32))
    (board.flash / "ferry_ota.key").write_text(key.hex())
    rel = make("0.2.0", NEW)
    n = len(board.inputs(rel, key=key))
    body = "import ota_download as ota\nkey = ota.load_key()\n" + offer_and_feed(list(range(n))).replace("key=None", "key=key")
    assert board.run(body)[-1]["end"] == "installed"
    # a wrong HMAC (another device's key) is refused once the manifest is in
    b2 = Board(board.root.parent / "b2")
    b2.factory(OLD)
    (b2.flash / "ferry_ota.key").write_text(key.hex())
    b2.inputs(rel, key=b"another key")
    lines = b2.run(body)
    assert lines[1]["reply"]["error"] == "ota: manifest: HMAC does not match (wrong key or forged)"
    # no HMAC at all: refused at the offer
    b2.inputs(rel)
    assert b2.run(body)[0]["offer"]["error"] == "ota: args.hmac: required (this board has a key)"


def test_the_device_hmac_is_rfc_2104(tmp_path: Path) -> None:
    board = Board(tmp_path / "b")
    for key in (b"k", bytes(range(64)), bytes(range(100))):
        msg = b"manifest" * 50
        out = board.run(f"import ota_stage, binascii\nh = ota_stage.Hmac({key!r})\nh.update({msg[:7]!r})\nh.update({msg[7:]!r})\n"
                        "t.out(mac=binascii.hexlify(h.digest()).decode())\n")
        assert out[0]["mac"] == hmac.new(key, msg, hashlib.sha256).hexdigest()


def test_bad_offers_and_manifests_are_refused(board: Board) -> None:
    rel = make("0.2.0", NEW)
    board.inputs(rel)
    lines = board.run("import ota_download as ota\no = ota.Ota(256)\n"
                      "t.out(r=json.loads(o.offer('c-2', {'ver': '0.2.0', 'size': 99999, 'sha256': 'a' * 64})))\n"
                      "t.out(r=json.loads(o.offer('c-3', {'ver': '', 'size': 10, 'sha256': 'a' * 64})))\n"
                      "t.out(r=json.loads(o.offer('c-4', {'ver': '1', 'size': 10, 'sha256': 'A' * 64})))\n"
                      .replace("import ota_download as ota", "import json, ota_download as ota"))
    assert [x["r"]["error"] for x in lines] == ["ota: args.size: the manifest's size, 2..4096",
                                                "ota: args.ver: a string of 1-32 characters",
                                                "ota: args.sha256: 64 hex digits"]
    # a manifest for another .mpy version, and one with a path in a name
    for manifest, error in ((b'{"v":1,"ver":"0.2.0","mpy":5,"files":[["app.mpy",0,"' + b"0" * 64 + b'"]]}',
                             "ota: manifest: mpy: the release is .mpy v5, this board imports v6"),
                            (b'{"v":1,"ver":"0.2.0","mpy":-1,"files":[["../app.py",0,"' + b"0" * 64 + b'"]]}',
                             "ota: manifest: files: bad name '../app.py'")):
        bad = fota.Release("0.2.0", (), -1, manifest)
        board.inputs(bad, chunk_list(bad))
        out = board.run(offer_and_feed([0]))
        assert out[1]["reply"]["error"] == error


TRIAL = """
import json, sys, boot_select, ota_trial
slot = boot_select.select(power_on={power_on})
t.out(slot=slot, path=sys.path[0], trial=boot_select.trial(), app=t.fake_app())
"""


def install(board: Board) -> None:
    rel = make("0.2.0", NEW)
    n = len(board.inputs(rel))
    assert board.run(offer_and_feed(list(range(n))))[-1]["end"] == "installed"


def test_trial_start_runs_the_new_folder_alone_and_a_confirmation_makes_it_current(board: Board) -> None:
    install(board)
    (board.flash / "extra_only_in_factory.py").write_text("X = 1\n")
    lines = board.run(TRIAL.format(power_on=False) + "import extra_only_in_factory\n".replace(
        "import extra_only_in_factory", "try:\n    import extra_only_in_factory\n    t.out(leak=True)\n"
        "except ImportError:\n    t.out(leak=False)"))
    assert lines[0]["slot"] == "a" and lines[0]["path"] == "/ota/a" and lines[0]["app"] == ["0.2.0", "0.2.0"]
    assert lines[0]["trial"] == 0  # the outbox's corrupt count when the update was applied
    assert lines[1]["leak"] is False  # the factory folder is off sys.path: no module from another version
    assert state(board)["tries"] == "1"
    lines = board.run(TRIAL.format(power_on=False) +
                      "t.out(pending=ota_trial.pending(), status=json.loads('{' + ota_trial.status() + '}'))\n"
                      "t.out(check=[ota_trial.check(True, 2, 0, 0, 1000), ota_trial.check(True, 3, 0, 0, 1000),"
                      " ota_trial.check(False, 9, 0, 0, 1000), ota_trial.check(True, 9, 1, 0, 1000)])\n"
                      "boot_select.confirm()\n")
    assert lines[1]["pending"] == 0
    assert lines[1]["status"] == {"ota": {"slot": "a", "state": "trial", "ver": "0.2.0", "last": ""}}
    assert lines[2]["check"] == [None, "confirm", None, "rollback"]
    assert state(board) == {"cur": "a", "ver": "0.2.0", "last": "confirmed 0.2.0"}
    lines = board.run(TRIAL.format(power_on=False) + "t.out(pending=ota_trial.pending(), "
                      "status=json.loads('{' + ota_trial.status() + '}'))\n")
    assert lines[0]["slot"] == "a" and lines[0]["trial"] is None and lines[0]["app"] == ["0.2.0", "0.2.0"]
    assert lines[1]["pending"] is None
    assert lines[1]["status"]["ota"] == {"slot": "a", "state": "confirmed", "ver": "0.2.0", "last": "confirmed 0.2.0"}
    # the next update goes to the other folder; the running one is kept for a rollback
    rel = make("0.3.0", app_files("0.3.0"))
    n = len(board.inputs(rel))
    assert board.run(TRIAL.format(power_on=False) + offer_and_feed(list(range(n))))[-1]["slot"] == "b"
    assert slot_hashes(board, "a") == hashes(NEW)


def test_no_confirmation_by_the_deadline_rolls_back(board: Board) -> None:
    install(board)
    lines = board.run(TRIAL.format(power_on=False) +
                      "r = ota_trial.check(True, 0, 0, 0, ota_trial.CONFIRM_MS)\nt.out(check=r)\n"
                      "boot_select.rollback('not confirmed within %d ms' % ota_trial.CONFIRM_MS)\n")
    assert lines[1]["check"] == "rollback"
    after = board.run(TRIAL.format(power_on=False))
    assert after[0]["slot"] == "" and after[0]["app"] == ["0.1.0", "0.1.0"]
    assert state(board)["last"] == "rolled_back 0.2.0: not confirmed within 600000 ms"
    assert "trial" not in state(board)


def test_a_crash_loop_in_trial_rolls_back(board: Board) -> None:
    install(board)
    slots = []
    for failures in (0, 1, 2):  # crashlog.py's count after each failed start
        (board.flash / "ferry_crash").write_text(f"failures {failures}\nTraceback...\n")
        slots.append(board.run(TRIAL.format(power_on=False))[0]["slot"])
    assert slots == ["a", "a", ""]
    assert state(board)["last"] == "rolled_back 0.2.0: crash loop (2 failed starts)"


def test_resets_without_a_confirmation_roll_back_and_power_cuts_do_not_count(board: Board) -> None:
    install(board)
    runs = [(True, "a"), (False, "a"), (True, "a"), (False, "a"), (False, "a"), (True, "a"), (False, "")]
    got = [board.run(TRIAL.format(power_on=p))[0]["slot"] for p, _ in runs]
    assert got == [s for _, s in runs]  # the 4th reset (watchdog, crash) is one too many: MAX_TRIES 3
    assert state(board)["last"] == "rolled_back 0.2.0: not confirmed after 3 starts"


def test_an_offer_while_on_trial_is_refused_and_the_running_release_is_current(board: Board) -> None:
    install(board)
    rel = make("0.2.0", NEW)
    board.inputs(rel)
    lines = board.run(TRIAL.format(power_on=False) + "import ota_download as ota\n"
                      "t.out(r=json.loads(ota.Ota(256).offer('c-9', t.offer_args())))\n"
                      "boot_select.confirm()\n"
                      "t.out(r=json.loads(ota.Ota(256).offer('c-9', t.offer_args())))\n")
    assert lines[1]["r"]["error"] == "ota: busy: a trial is running"
    assert lines[2]["r"]["result"]["ota"] == "current"


def test_state_survives_a_cut_between_the_tmp_file_and_the_rename(board: Board) -> None:
    install(board)
    st = board.flash / "ota" / "state"
    st.rename(st.with_name("state.tmp"))  # the cut: the new state only in .tmp
    assert board.run(TRIAL.format(power_on=False))[0]["slot"] == "a"
    assert state(board)["trial"] == "a" and state(board)["tries"] == "1"  # and the state is whole again
