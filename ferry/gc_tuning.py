"""The cyclic garbage collector's settings for Ferry's long-running processes (the gateway, the worker).

Both make a few objects per message or reading, nearly none of them in reference cycles (freed by
reference counting at once), while keeping many alive for long: the gateway its spool's read-ahead
and sessions, the worker every device's live state (~300 objects each, 3,000,000 at 10,000 devices).
At CPython's thresholds (700, 10, 10) a young collection runs every 700 allocations and a full one
walks every live object.
"""

from __future__ import annotations

import gc

GC_THRESHOLDS = (100_000, 50, 10)
"""Measured in each process with `gc.callbacks` timing (not kept) and its benchmark, back to back:

* the gateway: 0.85 s in 2,000 collections while 300,000 readings were spooled and drained;
  `ferry bench bridge --only drain --spool 300000` 52,915 records/s at CPython's thresholds,
  58,352 with these;
* the worker: 3.5 s of a 36 s run in collections (2.6 s in 22 full ones) with 10,000 deep-sleep
  devices; `ferry bench server --devices 10000 --per-device 30 --deep-sleep-every 4` 7,858
  readings/s at CPython's thresholds, 8,690 with these (RSS per device 15.8 and 15.2 KB).

A full collection still comes about once a minute at these rates: cyclic garbage is freed later,
not never."""


def tune_gc() -> None:
    """Collect less often (`GC_THRESHOLDS`) and leave what start-up made (modules, configuration) out
    of every collection; call once start-up is done."""
    gc.set_threshold(*GC_THRESHOLDS)
    gc.freeze()
