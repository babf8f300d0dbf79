"""Copy the dashboard's chart library (uPlot) in from the npm registry, pinned by sha512.

The dashboard must work offline (no CDN), and the repository keeps no
third-party JavaScript, so `make install` runs this module: it downloads the
exact tarball of a pinned version from the npm registry, checks it against
the pinned digest (the registry's own `dist.integrity`, so
`npm view uplot@1.6.32 dist.integrity` shows the same value), and unpacks
only the files the page loads into `server/dashboard/vendor/` (git-ignored),
which the worker serves as `/dashboard/vendor/<file>`.

Without these files the dashboard still shows every number and the fleet
table; only its charts say the library is not installed.
"""

from __future__ import annotations

import argparse
import base64
import hashlib
import io
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

NPM_TARBALL_URL = "https://registry.npmjs.org/{name}/-/{name}-{version}.tgz"
REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_VENDOR_DIR = REPO_ROOT / "server" / "dashboard" / "vendor"
HTTP_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class PinnedTarball:
    """One npm package version and the files the dashboard takes from it."""

    name: str
    version: str
    integrity: str
    """Subresource-integrity string of the tarball (`sha512-<base64>`), as npm's `dist.integrity`."""
    files: tuple[tuple[str, str], ...]
    """(path inside the tarball's `package/` folder, file name in the vendor folder)."""

    @property
    def url(self) -> str:
        return NPM_TARBALL_URL.format(name=self.name, version=self.version)


UPLOT = PinnedTarball(
    name="uplot",
    version="1.6.32",
    integrity="sha512-KIMVnG68zvu5XXUbC4LQEPnhwOxBuLyW1AHtpm6IKTXImkbLgkMy+jabjLgSLMasNuGGzQm/ep3tOkyTxpiQIw==",
    files=(
        ("dist/uPlot.iife.min.js", "uPlot.iife.min.js"),
        ("dist/uPlot.min.css", "uPlot.min.css"),
        ("LICENSE", "uPlot.LICENSE"),
    ),
)


class VendorError(RuntimeError):
    """The pinned tarball could not be fetched, did not match its digest, or lacked a file."""


def integrity(archive: bytes) -> str:
    """The `sha512-<base64>` integrity string of `archive`."""
    return "sha512-" + base64.b64encode(hashlib.sha512(archive).digest()).decode("ascii")


def _extract(pin: PinnedTarball, archive: bytes) -> dict[str, bytes]:
    """The pinned files' contents by their name in the vendor folder."""
    wanted = {f"package/{inside}": name for inside, name in pin.files}
    found: dict[str, bytes] = {}
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name in wanted:
                extracted = tar.extractfile(member)
                assert extracted is not None
                found[wanted[member.name]] = extracted.read()
    missing = sorted(set(wanted.values()) - set(found))
    if missing:
        raise VendorError(f"{pin.name}-{pin.version}.tgz lacks {', '.join(missing)}")
    return found


def unpack(pin: PinnedTarball, archive: bytes, vendor_dir: Path) -> list[Path]:
    """Verify `archive` against the pin and write its files into `vendor_dir`; return them."""
    digest = integrity(archive)
    if digest != pin.integrity:
        raise VendorError(f"{pin.name}@{pin.version}: integrity {digest} does not match the pinned {pin.integrity}")
    vendor_dir.mkdir(parents=True, exist_ok=True)
    contents = _extract(pin, archive)
    names = [name for _, name in pin.files]
    # The first file (the one make checks for) is written last, so it exists only when all do.
    for name in reversed(names):
        target = vendor_dir / name
        tmp = target.with_name(target.name + ".tmp")
        tmp.write_bytes(contents[name])
        tmp.replace(target)
    return [vendor_dir / name for name in names]


def fetch(pin: PinnedTarball, vendor_dir: Path) -> list[Path]:
    """Download, verify and unpack `pin` into `vendor_dir`; return the written files."""
    with urllib.request.urlopen(pin.url, timeout=HTTP_TIMEOUT_S) as response:
        archive = response.read()
    return unpack(pin, archive, vendor_dir)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--vendor-dir", type=Path, default=DEFAULT_VENDOR_DIR)
    args = parser.parse_args(argv)
    try:
        paths = fetch(UPLOT, args.vendor_dir)
    except (OSError, tarfile.TarError, VendorError) as exc:
        print(f"ferry: cannot fetch {UPLOT.name}@{UPLOT.version}: {exc}", file=sys.stderr)
        return 1
    for path in paths:
        print(f"{UPLOT.name} {UPLOT.version} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
