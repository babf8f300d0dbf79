"""Where the device firmware's MicroPython sources are, in a checkout and in an installed wheel.

The sources ship as the package `ferry.device` (`device/` in the repository, mapped
in pyproject.toml); only its folder is used here, its modules run on MicroPython.
"""

from __future__ import annotations

from pathlib import Path

import ferry.device

SOURCE_DIR = Path(ferry.device.__file__).resolve().parent
"""The firmware's modules (`app.py`, `main.py`, ...)."""
LIB_DIR = SOURCE_DIR / "lib"
"""Third-party MicroPython libraries the board gets in /lib (umqtt.simple, fetched by `make install`)."""
UMQTT_SOURCE = LIB_DIR / "umqtt" / "simple.py"


def modules() -> list[Path]:
    """The firmware's own source files, sorted: what goes to the board's root folder."""
    return sorted(p for p in SOURCE_DIR.glob("*.py") if p.name != "__init__.py")
