"""The typed records the worker publishes."""

from __future__ import annotations

import faust


class SeriesPoint(faust.Record, serializer="json"):
    """One closed 1-minute window of one device's metric, on `ferry.series.1m` keyed by device id.

    Published once its window is final (the device's watermark passed its end); after a
    worker crash it may be published again, identical: consumers key on (device, metric, start_ms).
    """

    device: str
    metric: str
    start_ms: int
    end_ms: int
    count: int
    min: float
    max: float
    mean: float
    last: float
