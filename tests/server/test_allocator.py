"""The worker's allocator settings take on glibc (this project's Linux hosts: Debian, Raspberry Pi OS)."""

from __future__ import annotations

import platform

import pytest

from ferry.server.allocator import fix_thresholds, release_free_memory


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="glibc's mallopt")
def test_glibc_takes_the_fixed_thresholds() -> None:
    assert fix_thresholds()
    release_free_memory()
