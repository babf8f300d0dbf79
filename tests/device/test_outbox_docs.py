"""docs/outbox.md documents every Outbox parameter with its real default."""

from __future__ import annotations

import ast

from tests.device.helpers import DEVICE_DIR, REPO_ROOT

DOC = (REPO_ROOT / "docs" / "outbox.md").read_text()


def _init_defaults() -> dict[str, str]:
    """Outbox.__init__'s keyword defaults, read from the MicroPython source (CPython cannot import it)."""
    tree = ast.parse((DEVICE_DIR / "outbox.py").read_text())
    cls = next(n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == "Outbox")
    init = next(n for n in cls.body if isinstance(n, ast.FunctionDef) and n.name == "__init__")
    args = init.args.args[-len(init.args.defaults):]
    return {a.arg: ast.unparse(d) for a, d in zip(args, init.args.defaults, strict=True)}


def test_every_parameter_is_documented_with_its_default() -> None:
    defaults = _init_defaults()
    assert set(defaults) >= {"capacity", "slot_size", "flush_every", "flush_interval_ms", "count_losses"}
    for name, default in defaults.items():
        assert f"| `{name}` | `{default}` |" in DOC, name
