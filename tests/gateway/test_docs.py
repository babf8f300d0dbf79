"""docs/gateway.md documents every config key with its real default."""

from __future__ import annotations

import dataclasses
import typing
from pathlib import Path

from ferry.gateway.config import GatewayConfig

DOC = (Path(__file__).resolve().parents[2] / "docs" / "gateway.md").read_text()


def shown(default: object) -> str:
    if hasattr(default, "value"):
        return f'"{default.value}"'
    if isinstance(default, bool):
        return str(default).lower()
    if isinstance(default, tuple):
        return "[" + ", ".join(f'"{item}"' for item in default) + "]"
    return str(default)


def test_every_config_key_is_documented_with_its_default() -> None:
    config = GatewayConfig()
    hints = typing.get_type_hints(GatewayConfig)
    for section in dataclasses.fields(GatewayConfig):
        values = getattr(config, section.name)
        if isinstance(values, tuple):  # [[listener]], [[acl]]: a row per key of one table
            table = typing.get_args(hints[section.name])[0]
            for field in dataclasses.fields(table):
                row = f"| `{section.name}[].{field.name}` |"
                if field.default is not dataclasses.MISSING:
                    row += f" `{shown(field.default)}` |"
                assert row in DOC, row
            continue
        for field in dataclasses.fields(values):
            key = f"{section.name}.{field.name}"
            assert f"| `{key}` | `{shown(getattr(values, field.name))}` |" in DOC, key
