"""Fetch `umqtt.simple` for the device firmware, pinned by sha256.

PyPI's `micropython-umqtt.simple` is an sdist without a setup.py, so pip cannot
install it. This module asks PyPI's JSON API for the sdist's URL, checks the
download against the pinned digest and unpacks only `umqtt/simple.py` into
`device/lib/` (git-ignored), the folder that the simulator puts on `sys.path`
and that `ferry flash` copies to the board's `/lib`.

On real hardware with internet, `mpremote mip install umqtt.simple` installs
micropython-lib's current release instead; see docs/device.md for the
differences between the two.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import sys
import tarfile
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from ferry import firmware

PYPI_JSON_URL = "https://pypi.org/pypi/{name}/json"
DEFAULT_LIB_DIR = firmware.LIB_DIR
HTTP_TIMEOUT_S = 60


@dataclass(frozen=True, slots=True)
class PinnedSdist:
    """One PyPI sdist whose single module the firmware needs."""

    name: str
    version: str
    sha256: str
    member_suffix: str
    """Path of the wanted file inside the archive, after the top-level folder."""
    target: str
    """Where the file goes, relative to the device lib folder."""


UMQTT_SIMPLE = PinnedSdist(
    name="micropython-umqtt.simple",
    version="1.3.4",
    sha256="b6a2520239e3992c63a7de9370ee9b3d9d27819a90359c521f1c0f7ccab8d12f",
    member_suffix="umqtt/simple.py",
    target="umqtt/simple.py",
)


class VendorError(RuntimeError):
    """The pinned file could not be fetched or did not match its digest."""


def _sdist_url(pin: PinnedSdist) -> str:
    url = PYPI_JSON_URL.format(name=pin.name)
    with urllib.request.urlopen(url, timeout=HTTP_TIMEOUT_S) as response:
        project = json.load(response)
    for artifact in project["releases"].get(pin.version, []):
        if artifact["packagetype"] == "sdist":
            return artifact["url"]
    raise VendorError(f"PyPI lists no sdist for {pin.name}=={pin.version}")


def _extract(pin: PinnedSdist, archive: bytes) -> bytes:
    with tarfile.open(fileobj=io.BytesIO(archive), mode="r:gz") as tar:
        for member in tar.getmembers():
            if member.isfile() and member.name.split("/", 1)[-1] == pin.member_suffix:
                extracted = tar.extractfile(member)
                assert extracted is not None
                return extracted.read()
    raise VendorError(f"{pin.member_suffix} not found in {pin.name}-{pin.version}")


def fetch(pin: PinnedSdist, lib_dir: Path) -> Path:
    """Download, verify and unpack `pin` into `lib_dir`; return the written file."""
    with urllib.request.urlopen(_sdist_url(pin), timeout=HTTP_TIMEOUT_S) as response:
        archive = response.read()
    digest = hashlib.sha256(archive).hexdigest()
    if digest != pin.sha256:
        raise VendorError(
            f"{pin.name}=={pin.version}: sha256 {digest} does not match the pinned {pin.sha256}"
        )
    target = lib_dir / pin.target
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_suffix(".tmp")
    tmp.write_bytes(_extract(pin, archive))
    tmp.replace(target)
    return target


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lib-dir", type=Path, default=DEFAULT_LIB_DIR)
    args = parser.parse_args(argv)
    try:
        path = fetch(UMQTT_SIMPLE, args.lib_dir)
    except (OSError, VendorError) as exc:
        print(f"ferry: cannot fetch umqtt.simple: {exc}", file=sys.stderr)
        return 1
    print(f"umqtt.simple {UMQTT_SIMPLE.version} -> {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
