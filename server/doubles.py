"""Arrays of doubles as a device's stored state holds them: one bytes value, little-endian.

A marshalled state (`ferry.server.state.encode_state`) writes a list of floats as one object per
value; the open panes and the detectors' baselines are ~200 of them per device at 2 metrics, which
were most of the time spent encoding a state. As bytes they are one copy each way.
"""

from __future__ import annotations

import sys
from array import array

_SWAP = sys.byteorder == "big"


def pack(values: array) -> bytes:
    """`values` (an array of doubles) as 8 little-endian bytes each."""
    if _SWAP:
        values = array("d", values)
        values.byteswap()
    return values.tobytes()


def unpack(stored: bytes | list) -> array:
    """An array of doubles from what `pack` made, or from a list of numbers (states stored as JSON)."""
    if isinstance(stored, (bytes, bytearray)):
        out = array("d")
        out.frombytes(stored)
        if _SWAP:
            out.byteswap()
        return out
    return array("d", stored)
