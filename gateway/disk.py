"""The free-disk guard: the store must keep room for what it has already promised.

Below `store.min_free_disk_bytes` the gateway refuses new QoS 1/2 publishes that would need the
store (as for a full queue: never acknowledged, so devices keep them), while it can still write
the few records that drain the spool and end sessions. Checked once a second.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

log = logging.getLogger(__name__)

DEFAULT_FRACTION = 0.05
DEFAULT_CAP_BYTES = 1 << 30


class DiskGuard:
    """Whether the filesystem holding the store is below its free-space floor."""

    def __init__(self, path: Path, min_free_bytes: int | None) -> None:
        """``min_free_bytes`` None: 5 % of the filesystem, at most 1 GiB."""
        self.path = path
        if min_free_bytes is None:
            min_free_bytes = min(int(shutil.disk_usage(path).total * DEFAULT_FRACTION), DEFAULT_CAP_BYTES)
        self.min_free_bytes = min_free_bytes
        self.free_bytes = 0

    def low(self) -> bool:
        """Read the free space now; True when it is below the floor (or cannot be read)."""
        try:
            self.free_bytes = shutil.disk_usage(self.path).free
        except OSError as exc:
            log.warning("cannot read the free space of %s: %s", self.path, exc)
            return True
        return self.free_bytes < self.min_free_bytes
