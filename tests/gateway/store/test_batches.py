"""Batch framing: payload bytes never pass for journal records; damage costs whole batches only."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from ferry.gateway.store import StoreFormatError
from ferry.gateway.store.journal import Durability, Journal
from ferry.gateway.store.layout import MANIFEST, scan
from ferry.gateway.store.records import (
    Enqueued,
    MessageAdded,
    Record,
    SessionDeleted,
    SessionSaved,
    SubscriptionAdded,
    encode_record,
)
from ferry.gateway.store.recovery import recover
from ferry.gateway.store.state import DurableState
from tests.gateway.store.helpers import Commits, batch_bytes, build_state, segment_bytes

BRIDGE = "$ferry-bridge"
FORGED = [SessionDeleted(BRIDGE), SubscriptionAdded("intruder", "#", 1, False, False, 0, None)]
FORGED_RECORDS = b"".join(map(encode_record, FORGED))
# A forged batch too: what a device could send if it guessed the batch framing but not the salt.
FORGED_PAYLOADS = {
    "records": FORGED_RECORDS,
    "batch-with-a-guessed-salt": batch_bytes(FORGED, 7, salt=bytes(16)),
}


def spooled(msg_id: int, payload: bytes) -> list[Record]:
    """A device message journaled for the bridge's session, as the broker writes it."""
    return [MessageAdded(msg_id, "ferry/site-1/dev-01/telemetry", payload, 1, False, b"", None,
                         "dev-01"),
            Enqueued(BRIDGE, msg_id, 1, ())]


def write_batches(data_dir: Path, batches: list[list[Record]]) -> list[int]:
    """Commit each list of records as one batch; the new segment's size after each commit."""
    commits = Commits()
    journal = Journal(data_dir, Durability.FSYNC, on_commit=commits)
    journal.open(recover(data_dir)[0])
    segment = max(data_dir.glob("*.seg"))  # the one open() started
    sizes = []
    for records in batches:
        for record in records:
            journal.append(record)
        journal.flush()
        commits.wait_for(journal.pending_batch - 1)
        sizes.append(segment.stat().st_size)
    journal.close()
    return sizes


def bridge_batches(messages: int) -> list[list[Record]]:
    batches: list[list[Record]] = [[SessionSaved(BRIDGE, 5, 2**32 - 1),
                                    SubscriptionAdded(BRIDGE, "ferry/#", 1, False, False, 0, None)]]
    batches += [spooled(msg_id, b"reading %d" % msg_id) for msg_id in range(1, messages + 1)]
    return batches


@pytest.mark.parametrize("forgery", FORGED_PAYLOADS.values(), ids=FORGED_PAYLOADS.keys())
def test_frames_inside_a_torn_payload_are_never_replayed(tmp_path: Path, forgery: bytes) -> None:
    """The reproduced defect: a QoS 1 payload carrying encoded SessionDeleted("$ferry-bridge") and
    a SubscriptionAdded for "#", cut by a power loss at any byte of its batch."""
    good = bridge_batches(5)
    forged = spooled(6, b"\x00" * 13 + forgery + b"\xff" * 5)
    sizes = write_batches(tmp_path, good + [forged])
    (segment,) = tmp_path.glob("*.seg")
    original = segment.read_bytes()
    before, after = sizes[-2], sizes[-1]
    assert after == len(original) and FORGED_RECORDS in original[before:]
    kept = build_state([record for batch in good for record in batch])
    for cut in range(before, after):
        segment.write_bytes(original[:cut])
        state, report = recover(tmp_path)
        assert BRIDGE in state.sessions, f"cut at {cut}: the bridge's session was deleted"
        assert "intruder" not in state.subscriptions, f"cut at {cut}: a forged subscription"
        assert state == kept, f"cut at {cut}"
        assert report.records == sum(map(len, good))
        assert segment.stat().st_size == before  # the torn batch is cut off on disk
    segment.write_bytes(original)
    state, report = recover(tmp_path)
    assert state == build_state([record for batch in good + [forged] for record in batch])
    assert report.clean
    assert state.messages[6].payload == forged[0].payload  # the frames are only payload


def test_a_torn_batch_is_cut_so_that_new_batches_follow_good_data(tmp_path: Path) -> None:
    good = bridge_batches(3)
    sizes = write_batches(tmp_path, good + [spooled(4, b"torn")])
    (segment,) = tmp_path.glob("*.seg")
    with segment.open("r+b") as file:
        file.truncate(sizes[-1] - 5)
    assert recover(tmp_path)[1].truncated_tail_bytes == sizes[-1] - 5 - sizes[-2]
    write_batches(tmp_path, [spooled(5, b"after the restart")])
    state, report = recover(tmp_path)
    assert report.clean and report.segments == 2
    assert sorted(state.queues[BRIDGE]) == [1, 2, 3, 5]


@pytest.mark.parametrize("damage", ["flipped-byte", "zeroed-batches"])
def test_good_batches_after_a_corrupt_one_are_kept(tmp_path: Path, damage: str) -> None:
    batches = bridge_batches(9)
    sizes = write_batches(tmp_path, batches)
    (segment,) = tmp_path.glob("*.seg")
    data = bytearray(segment.read_bytes())
    if damage == "flipped-byte":  # in the payload of message 4
        lost = [4]
        start, end = sizes[3], sizes[4]
        data[end - 30] ^= 0x10
    else:  # messages 3 to 6, and the start of 7's batch header, as a bad sector would
        lost = [3, 4, 5, 6, 7]
        start, end = sizes[2], sizes[7]
        data[start:sizes[6] + 10] = bytes(sizes[6] + 10 - start)
    segment.write_bytes(bytes(data))
    state, report = recover(tmp_path)
    kept = [msg_id for msg_id in range(1, 10) if msg_id not in lost]
    assert sorted(state.queues[BRIDGE]) == kept  # 8 and 9 came after the damage
    assert state.subscriptions[BRIDGE]
    assert report.corrupt_regions == 1 and report.bytes_dropped == end - start
    assert report.truncated_tail_bytes == 0
    assert segment.stat().st_size == len(data)  # damage in the middle is not cut


def _format_1_store(data_dir: Path, *, manifest: bool) -> dict[str, bytes]:
    """A data directory as the previous store format left it: frames without batches."""
    data_dir.mkdir()
    files = {"0000000000000001.seg": b"".join(
        map(encode_record, [record for batch in bridge_batches(2) for record in batch]))}
    if manifest:
        files[MANIFEST] = b'{"format": "ferry-journal", "version": 1, "base": 1}\n'
    for name, content in files.items():
        (data_dir / name).write_bytes(content)
    return files


@pytest.mark.parametrize("manifest", [True, False], ids=["manifest", "no-manifest"])
def test_a_store_of_the_previous_format_is_refused_and_left_alone(tmp_path: Path,
                                                                  manifest: bool) -> None:
    data_dir = tmp_path / "store"
    files = _format_1_store(data_dir, manifest=manifest)
    with pytest.raises(StoreFormatError) as refused:
        recover(data_dir)
    message = str(refused.value)
    assert str(data_dir) in message and "reads store format 2 only" in message
    assert ("store format 1, written by an older Ferry" in message if manifest
            else "no readable manifest and no segment with a format-2 header" in message)
    journal = Journal(data_dir, Durability.FSYNC, on_commit=Commits())
    with pytest.raises(StoreFormatError):
        journal.open(DurableState())
    assert {path.name: path.read_bytes() for path in data_dir.iterdir()} == files


def test_a_segment_of_another_store_is_refused(tmp_path: Path) -> None:
    write_batches(tmp_path, bridge_batches(2))
    intruder = tmp_path / "0000000000000002.seg"
    intruder.write_bytes(segment_bytes([[SessionDeleted(BRIDGE)]], salt=b"another store!!!",
                                       segment=2))
    with pytest.raises(StoreFormatError, match="a segment of another store"):
        recover(tmp_path)


def test_a_new_store_has_a_secret_salt_in_its_manifest_and_segments(tmp_path: Path) -> None:
    write_batches(tmp_path / "a", bridge_batches(1))
    write_batches(tmp_path / "b", bridge_batches(1))
    salts = [scan(tmp_path / name).salt for name in "ab"]
    assert salts[0] != salts[1] and all(len(salt) == 16 for salt in salts)
    manifest = json.loads((tmp_path / "a" / MANIFEST).read_text())
    assert manifest["version"] == 2 and bytes.fromhex(manifest["salt"]) == salts[0]
    (segment,) = (tmp_path / "a").glob("*.seg")
    assert segment.read_bytes().startswith(b"FERRYSEG\x00\x00\x00\x02" + salts[0])
