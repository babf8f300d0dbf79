"""The journal directory: file names, the manifest, and the low-level write helpers.

A data directory holds::

    MANIFEST                    {"format": "ferry-journal", "version": 2, "base": 7,
                                 "salt": "<the store's salt: 32 hex digits>"}
    0000000000000007.snap       a snapshot segment: the full state, then appended batches
    0000000000000008.seg        a log segment: appended batches only
    *.tmp                       leftovers of an interrupted snapshot or manifest switch

Every segment starts with a header carrying the format version and the
store's salt, then holds batches of records (the format is in
:mod:`.records`).  The salt is drawn when the store is created and written
to the manifest before the first segment exists; each segment header keeps
a copy, so a lost manifest costs nothing.  A data directory of another
format version (format 1 had neither batches nor salt) is refused with
:class:`StoreFormatError`, as is a segment whose header carries another
store's salt: there is no migration.

Segments are numbered in the order they were created.  Recovery replays the
*base* segment and every later one.  The base is the one the manifest names,
unless a later ``.snap`` exists (a crash between renaming a finished snapshot
into place and switching the manifest); without a usable manifest it is the
latest ``.snap``, or else the oldest ``.seg``.  A ``.snap`` only ever gets its
name once it is complete and fsynced, so a half-written snapshot is always a
``.tmp`` file and is ignored.
"""

from __future__ import annotations

import json
import logging
import os
import re
from dataclasses import dataclass
from pathlib import Path

from .records import FORMAT_VERSION, SALT_BYTES, SEGMENT_HEADER, decode_segment_header

__all__ = [
    "MANIFEST",
    "Layout",
    "SegmentFile",
    "StoreFormatError",
    "create_file",
    "fsync_dir",
    "scan",
    "segment_path",
    "sync_data",
    "write_all",
    "write_manifest",
]

logger = logging.getLogger(__name__)

MANIFEST = "MANIFEST"
MANIFEST_FORMAT = "ferry-journal"
_READS_ONLY = (f"this Ferry reads store format {FORMAT_VERSION} only and does not convert stores: "
               f"move the directory away to start with an empty store")
_SEGMENT_NAME = re.compile(r"^(\d{16})\.(seg|snap)$")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


class StoreFormatError(Exception):
    """The data directory is not a store this Ferry can read: another format version, or
    segments of another store.  Nothing was changed on disk."""


@dataclass(frozen=True, slots=True)
class Manifest:
    """What a readable manifest says."""

    base: int
    salt: bytes


@dataclass(frozen=True, slots=True)
class SegmentFile:
    """One segment on disk."""

    number: int
    snapshot: bool
    path: Path
    size_bytes: int


@dataclass(frozen=True, slots=True)
class Layout:
    """What :func:`scan` found in a data directory."""

    live: tuple[SegmentFile, ...]
    """The base segment and every later one, in order: what recovery replays."""
    stale: tuple[SegmentFile, ...]
    """Segments older than the base (their deletion was interrupted)."""
    temporary: tuple[Path, ...]
    manifest_base: int | None
    """The base the manifest names, or None if it is missing or unreadable."""
    next_number: int
    """The number for the next segment file."""
    salt: bytes | None
    """The store's salt (from the manifest, else from a segment header); None for a new store."""

    @property
    def base(self) -> int | None:
        return self.live[0].number if self.live else None

    @property
    def live_bytes(self) -> int:
        return sum(segment.size_bytes for segment in self.live)


def segment_path(data_dir: Path, number: int, *, snapshot: bool) -> Path:
    return data_dir / f"{number:016d}.{'snap' if snapshot else 'seg'}"


def _read_manifest(data_dir: Path) -> Manifest | None:
    """The manifest, or None if it is missing or unreadable (logged).

    Raises :class:`StoreFormatError` for a manifest of another format version.
    """
    path = data_dir / MANIFEST
    try:
        text = path.read_bytes()
    except FileNotFoundError:
        return None
    try:
        doc = json.loads(text)
        version = doc["version"]
        if doc["format"] == MANIFEST_FORMAT and type(version) is int and version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{path}: store format {version}, written by "
                f"{'an older' if version < FORMAT_VERSION else 'a newer'} Ferry; {_READS_ONLY}")
        base, salt = doc["base"], bytes.fromhex(doc["salt"])
        if (doc["format"] != MANIFEST_FORMAT or type(base) is not int or base < 0
                or len(salt) != SALT_BYTES):
            raise ValueError(doc)
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        logger.warning("%s: unreadable manifest (%d bytes), using the segments on disk",
                       path, len(text))
        return None
    return Manifest(base, salt)


def _store_salt(data_dir: Path, manifest: Manifest | None,
                live: tuple[SegmentFile, ...]) -> bytes | None:
    """The salt of the manifest, else of the first live segment with a readable header.

    A segment whose header does not check out is left to the reader, which skips it as
    damage.  Raises :class:`StoreFormatError` for a segment of another format version or
    another store, and for segments with content when neither gives a salt.
    """
    salt = None if manifest is None else manifest.salt
    for segment in live:
        with segment.path.open("rb") as file:
            header = decode_segment_header(file.read(SEGMENT_HEADER.size))
        if header is None:
            continue
        if header.format_version != FORMAT_VERSION:
            raise StoreFormatError(
                f"{segment.path}: store format {header.format_version}; {_READS_ONLY}")
        if salt is None:
            salt = header.salt
        elif header.salt != salt:
            raise StoreFormatError(f"{segment.path}: a segment of another store (its salt is "
                                   f"not this store's); move it away")
    if salt is None and any(segment.size_bytes for segment in live):
        raise StoreFormatError(
            f"{data_dir}: no readable manifest and no segment with a format-{FORMAT_VERSION} "
            f"header, as in a store of format 1 (written by an older Ferry); {_READS_ONLY}")
    return salt


def scan(data_dir: Path) -> Layout:
    """Read the manifest, list the segments and read their headers.  Reads only; a missing
    directory is empty.  Raises :class:`StoreFormatError` (see :func:`_store_salt`)."""
    try:
        names = os.listdir(data_dir)
    except FileNotFoundError:
        return Layout((), (), (), None, 1, None)
    segments: dict[int, SegmentFile] = {}
    temporary = []
    for name in sorted(names):
        path = data_dir / name
        match = _SEGMENT_NAME.match(name)
        if match:
            number = int(match[1])
            if number in segments:  # both NNN.seg and NNN.snap: never written by us
                logger.warning("%s: duplicate segment number, ignored", path)
                continue
            segments[number] = SegmentFile(number, match[2] == "snap", path,
                                           path.stat().st_size)
        elif name.endswith(".tmp"):
            temporary.append(path)
    manifest = _read_manifest(data_dir)
    manifest_base = None if manifest is None else manifest.base
    numbers = sorted(segments)
    snapshots = [n for n in numbers if segments[n].snapshot]
    if manifest_base is not None and manifest_base in segments:
        base = manifest_base
        if snapshots and snapshots[-1] > base:
            base = snapshots[-1]
            logger.info("%s: snapshot %d finished but the manifest still names %d",
                        data_dir, base, manifest_base)
    elif numbers:
        base = snapshots[-1] if snapshots else numbers[0]
        if manifest_base is None:
            logger.warning("%s: manifest missing or unreadable; replaying from segment %d",
                           data_dir, base)
        else:
            logger.warning("%s: manifest names missing segment %d; replaying from segment %d",
                           data_dir, manifest_base, base)
    else:
        base = None
    live = tuple(segments[n] for n in numbers if base is not None and n >= base)
    stale = tuple(segments[n] for n in numbers if base is None or n < base)
    for before, after in zip(live, live[1:]):
        if after.number != before.number + 1:
            logger.warning("%s: segments %d to %d are missing: records may be lost",
                           data_dir, before.number + 1, after.number - 1)
    return Layout(live, stale, tuple(temporary), manifest_base,
                  (numbers[-1] + 1) if numbers else 1, _store_salt(data_dir, manifest, live))


# ------------------------------------------------------------------- writing


def write_all(fd: int, data: bytes) -> None:
    """``os.write`` until all of ``data`` is written.  Does not fsync."""
    view = memoryview(data)
    while view:
        written = os.write(fd, view)
        view = view[written:]


def sync_data(fd: int) -> None:
    """fdatasync where the OS has it (file size included), else fsync."""
    fdatasync = getattr(os, "fdatasync", None)
    if fdatasync is not None:
        fdatasync(fd)
    else:
        os.fsync(fd)


def fsync_dir(path: Path) -> None:
    """fsync a directory so that files created, renamed or deleted in it stay so."""
    fd = os.open(path, os.O_RDONLY | _O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def create_file(path: Path, *, exclusive: bool = True) -> int:
    """Open a new file for appending; the caller fsyncs the directory if it must."""
    flags = os.O_WRONLY | os.O_CREAT | os.O_APPEND | _O_CLOEXEC
    flags |= os.O_EXCL if exclusive else os.O_TRUNC
    return os.open(path, flags, 0o644)


def write_manifest(data_dir: Path, base: int, salt: bytes) -> None:
    """Atomically make ``base`` the manifest's base segment (and ``salt`` the store's).

    Fsynced: writes ``MANIFEST.tmp``, fsyncs it, renames it over ``MANIFEST``
    and fsyncs the directory before returning, whatever the durability mode.
    """
    doc = {"format": MANIFEST_FORMAT, "version": FORMAT_VERSION, "base": base,
           "salt": salt.hex()}
    tmp = data_dir / (MANIFEST + ".tmp")
    fd = create_file(tmp, exclusive=False)
    try:
        write_all(fd, json.dumps(doc).encode() + b"\n")
        os.fsync(fd)
    finally:
        os.close(fd)
    os.rename(tmp, data_dir / MANIFEST)
    fsync_dir(data_dir)
