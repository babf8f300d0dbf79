"""One import namespace, `ferry`, whose layers import downwards only and without cycles.

A non-editable install (a Raspberry Pi's `pip install ferry-iot`) ships every package of the
tree, each under `ferry.`; nothing else lands at the top of site-packages.
"""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SETUPTOOLS = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]

# Lowest first. A module may import its own layer's modules and anything below; among the parts,
# each imports only itself (the gateway never imports the server, the simulator or the CLI).
GROUND = ("ferry", "ferry.contract", "ferry.worker_records", "ferry.addresses", "ferry.process", "ferry.firmware", "ferry.device",
          "ferry.event_loop", "ferry.gc_tuning",
          "ferry.umqtt_vendor", "ferry.npm_vendor")
PARTS = ("ferry.gateway", "ferry.server", "ferry.hwsim", "ferry.flash", "ferry.local_kafka")
TOP = ("ferry.bench", "ferry.demo", "ferry.demo_parts", "ferry.demo_report", "ferry.chaos", "ferry.ota", "ferry.cli", "ferry.__main__")


def package_folder(package: str) -> Path:
    """The folder setuptools takes `package` from (the longest `package-dir` prefix wins)."""
    mapping = SETUPTOOLS.get("package-dir", {})
    parts = package.split(".")
    for cut in range(len(parts), 0, -1):
        prefix = ".".join(parts[:cut])
        if prefix in mapping:
            return REPO / mapping[prefix] / Path(*parts[cut:])
    return REPO / Path(*parts)


def modules() -> dict[str, Path]:
    """Every CPython module of the distribution, by its import name (the firmware is MicroPython)."""
    found = {}
    for package in SETUPTOOLS["packages"]:
        if package == "ferry.device":
            found[package] = package_folder(package) / "__init__.py"
            continue
        for path in package_folder(package).glob("*.py"):
            name = package if path.name == "__init__.py" else f"{package}.{path.stem}"
            found[name] = path
    return found


def imports_of(name: str, path: Path) -> set[str]:
    """The `ferry` modules `name` imports anywhere in its source, lazy and TYPE_CHECKING imports included."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m == "ferry" or m.startswith("ferry.")}


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: {m for m in imports_of(name, path) if m in known and m != name} for name, path in known.items()}


def owner(module: str) -> tuple[int, str]:
    """(layer, unit) of a module: the longest listed prefix names its unit."""
    best = None
    for layer, units in enumerate((GROUND, PARTS, TOP)):
        for unit in units:
            if (module == unit or module.startswith(unit + ".")) and (best is None or len(unit) > len(best[1])):
                best = (layer, unit)
    assert best is not None, f"{module} belongs to no layer: add it to GROUND, PARTS or TOP"
    return best


def test_every_package_folder_is_listed_in_pyproject() -> None:
    listed = set(SETUPTOOLS["packages"])
    roots = {name for name in listed if name.count(".") == 1} | {"ferry"}
    found = set()
    for top in roots:
        folder = package_folder(top)
        for init in folder.rglob("__init__.py"):
            relative = init.parent.relative_to(folder)
            found.add(".".join((top, *relative.parts)))
    assert found - listed == set(), "packages missing from [tool.setuptools] packages"
    assert listed - found == set(), "listed packages without an __init__.py"


def test_one_namespace() -> None:
    assert all(name == "ferry" or name.startswith("ferry.") for name in SETUPTOOLS["packages"])
    assert tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["name"] == "ferry-iot"


def test_layers_import_downwards_only() -> None:
    wrong = []
    for module, targets in graph().items():
        layer, unit = owner(module)
        for target in targets:
            target_layer, target_unit = owner(target)
            if target_layer > layer or (target_layer == layer == 1 and target_unit != unit):
                wrong.append(f"{module} -> {target}")
    assert wrong == []


def test_no_import_cycles() -> None:
    edges = graph()
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    cycles = []

    def visit(node: str, path: list[str]) -> None:
        state[node] = 1
        for target in sorted(edges[node]):
            if state.get(target) == 1:
                cycles.append(path[path.index(target):] + [target])
            elif target not in state:
                visit(target, path + [target])
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node, [node])
    assert cycles == []


def test_the_checker_sees_a_cycle_and_an_upward_import(tmp_path: Path) -> None:
    """The rules above can fail: a lazy import counts, and `ferry.contract` may not import the gateway."""
    source = tmp_path / "contract.py"
    source.write_text("def f():\n    from ferry.gateway.mqtt import decoder\n")
    assert "ferry.gateway.mqtt.decoder" in imports_of("ferry.contract", source)
    assert owner("ferry.contract")[0] < owner("ferry.gateway.mqtt.decoder")[0]
    relative = tmp_path / "_parsers.py"
    relative.write_text("if X:\n    from .decoder import Decoder\n")
    assert "ferry.gateway.mqtt.decoder" in imports_of("ferry.gateway.mqtt._parsers", relative)


def test_nothing_imports_the_old_top_level_names() -> None:
    """In a checkout `gateway/` and `server/` sit in the working directory, so `import gateway` would
    still work there, and fail in an installed wheel: nothing may use those names."""
    old = ("gateway", "server", "hwsim", "bench")
    sources = list(modules().values()) + sorted((REPO / "tests").rglob("*.py"))
    wrong = []
    for path in sources:
        for node in ast.walk(ast.parse(path.read_text())):
            names = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            elif isinstance(node, (ast.List, ast.Tuple)):  # [sys.executable, "-m", "module", ...]
                items = [e.value if isinstance(e, ast.Constant) else None for e in node.elts]
                names = [items[i + 1] for i in range(len(items) - 1)
                         if items[i] == "-m" and isinstance(items[i + 1], str)]
            wrong += [f"{path.relative_to(REPO)}: {name}" for name in names if name.split(".")[0] in old]
    assert wrong == []
