"""`ferry.npm_vendor`: only a tarball matching the pinned integrity is unpacked, and only the pinned files."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import pytest

from ferry.npm_vendor import UPLOT, PinnedTarball, VendorError, integrity, unpack


def tarball(files: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, content in files.items():
            info = tarfile.TarInfo(name)
            info.size = len(content)
            tar.addfile(info, io.BytesIO(content))
    return out.getvalue()


def pin_for(archive: bytes) -> PinnedTarball:
    return PinnedTarball("lib", "1.0.0", integrity(archive), (("dist/lib.min.js", "lib.min.js"), ("LICENSE", "lib.LICENSE")))


def test_unpacks_only_the_pinned_files(tmp_path: Path) -> None:
    archive = tarball({"package/dist/lib.min.js": b"lib;", "package/LICENSE": b"MIT",
                       "package/dist/other.js": b"no", "package/../../escape.js": b"no"})
    written = unpack(pin_for(archive), archive, tmp_path / "vendor")
    assert written == [tmp_path / "vendor" / "lib.min.js", tmp_path / "vendor" / "lib.LICENSE"]
    assert sorted(p.name for p in (tmp_path / "vendor").iterdir()) == ["lib.LICENSE", "lib.min.js"]
    assert (tmp_path / "vendor" / "lib.min.js").read_bytes() == b"lib;"
    assert not (tmp_path / "escape.js").exists()


def test_refuses_a_tarball_that_does_not_match(tmp_path: Path) -> None:
    archive = tarball({"package/dist/lib.min.js": b"lib;", "package/LICENSE": b"MIT"})
    pin = pin_for(archive)
    tampered = tarball({"package/dist/lib.min.js": b"evil;", "package/LICENSE": b"MIT"})
    with pytest.raises(VendorError, match="does not match"):
        unpack(pin, tampered, tmp_path / "vendor")
    assert not (tmp_path / "vendor").exists()


def test_refuses_a_tarball_without_a_pinned_file(tmp_path: Path) -> None:
    archive = tarball({"package/dist/lib.min.js": b"lib;"})
    with pytest.raises(VendorError, match="lacks lib.LICENSE"):
        unpack(pin_for(archive), archive, tmp_path / "vendor")


def test_the_pin_is_an_exact_npm_tarball() -> None:
    assert UPLOT.url == "https://registry.npmjs.org/uplot/-/uplot-1.6.32.tgz"
    assert UPLOT.integrity.startswith("sha512-") and len(UPLOT.integrity) == len("sha512-") + 88
    assert UPLOT.files[0][1] == "uPlot.iife.min.js"  # the file make checks for
