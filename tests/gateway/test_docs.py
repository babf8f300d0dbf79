"""docs/gateway.md documents every config key with its real default."""

from __future__ import annotations

import dataclasses
from pathlib import Path

from ferry.gateway.config import GatewayConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()


def test_every_config_key_is_documented_with_its_default() -> None:
    config = GatewayConfig()
    for section in dataclasses.fields(GatewayConfig):
        values = getattr(config, section.name)
        for field in dataclasses.fields(values):
            default = getattr(values, field.name)
            shown = f'"{default.value}"' if hasattr(default, "value") else str(default).lower() \
                if isinstance(default, bool) else str(default)
            assert f"| `{section.name}.{field.name}` | `{shown}` |" in DOC, f"{section.name}.{field.name}"
