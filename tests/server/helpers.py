"""Contract-conformant payloads for the server's tests."""

from __future__ import annotations

from ferry.contract import Reading, encode_reading

T0 = 1_732_480_020_000  # a whole minute


def reading(seq: int, *, dev: str = "dev-01", boot: int = 1, ts_ms: int | None = None,
            metrics: dict[str, float] | None = None, synced: bool = True) -> bytes:
    return encode_reading(Reading(dev, boot, seq, T0 + seq * 1000 if ts_ms is None else ts_ms, synced,
                                  metrics if metrics is not None else {"temp_c": 20.0 + seq}))


def status(dropped: int, *, dev: str = "dev-01", boot: int = 1, reset: str = "power_on") -> bytes:
    return (b'{"v":1,"dev":"%s","state":"online","boot":%d,"fw":"0.1.0","reset":"%s",'
            b'"ts":1732480000123,"sync":true,"outbox":{"queued":0,"dropped":%d}}'
            % (dev.encode(), boot, reset.encode(), dropped))


def asleep(*, dev: str = "dev-01", boot: int = 1) -> bytes:
    """The "offline" status a device publishes going to sleep (or its broker publishes as its last will)."""
    return b'{"v":1,"dev":"%s","state":"offline","boot":%d}' % (dev.encode(), boot)
