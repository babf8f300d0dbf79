"""The Prometheus text exposition format, version 0.0.4, for the gateway's and the worker's `/metrics`.

A ground module: pure, no I/O, so every part may use it.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Protocol

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

Labels = tuple[tuple[str, str], ...]


class Family(Protocol):
    """One sample family: name, type (counter, gauge, ...), help and (labels, value) samples."""

    @property
    def name(self) -> str: ...

    @property
    def kind(self) -> str: ...

    @property
    def help(self) -> str: ...

    @property
    def samples(self) -> Sequence[tuple[Labels, float]]: ...


@dataclass(frozen=True, slots=True)
class Metric:
    """One Prometheus sample family: name, type, help and (labels, value) samples."""

    name: str
    kind: str
    help: str
    samples: tuple[tuple[Labels, float], ...]

    @classmethod
    def single(cls, name: str, kind: str, help_text: str, value: float) -> "Metric":
        """A family of one unlabelled sample."""
        return cls(name, kind, help_text, (((), float(value)),))


def _escape_help(text: str) -> str:
    return text.replace("\\", "\\\\").replace("\n", "\\n")


def _escape_label(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _value(value: float) -> str:
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return f"{value:.17g}"


def prometheus_text(metrics: Iterable[Family]) -> str:
    """The Prometheus text exposition format, version 0.0.4."""
    lines = []
    for metric in metrics:
        lines.append(f"# HELP {metric.name} {_escape_help(metric.help)}")
        lines.append(f"# TYPE {metric.name} {metric.kind}")
        for labels, value in metric.samples:
            label_text = ",".join(f'{k}="{_escape_label(str(v))}"' for k, v in labels)
            name = f"{metric.name}{{{label_text}}}" if labels else metric.name
            lines.append(f"{name} {_value(float(value))}")
    return "\n".join(lines) + "\n"
