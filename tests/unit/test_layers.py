"""Imports run one way: a package of router/ imports only from layers below its own.

The order is written once, in docs/architecture.md (the block after "Layers,
top to bottom"); this test reads it from there, so the picture and the code
cannot drift apart. Imports inside functions and under TYPE_CHECKING count
as much as those at the top of a module.
"""

from __future__ import annotations

import ast
from pathlib import Path

from router import REPO_ROOT

PACKAGE = REPO_ROOT / "router"
ARCHITECTURE = REPO_ROOT / "docs" / "architecture.md"
MARKER = "Layers, top to bottom"


def declared_layers() -> list[set[str]]:
    """The layers, lowest first, each a set of top-level names under router/."""
    text = ARCHITECTURE.read_text(encoding="utf-8")
    assert MARKER in text, f"docs/architecture.md lost its {MARKER!r} block"
    block = text.split(MARKER, 1)[1].split("```", 2)[1]
    rows = [line.split("#", 1)[0].split() for line in block.splitlines()[1:]]
    return [set(row) for row in reversed(rows) if row]


def top_name(module: str) -> str:
    """router.controller.policy -> controller; router -> router."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, root: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    own = module_name(path, root).split(".")
    package = own if path.name == "__init__.py" else own[:-1]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
    return {name for name in found if name == "router" or name.startswith("router.")}


def upward_imports(layers: list[set[str]], root: Path = REPO_ROOT) -> list[str]:
    """Every import of a package in the same or a higher layer, one line each."""
    rank = {name: index for index, layer in enumerate(layers) for name in layer}
    problems: list[str] = []
    for path in sorted((root / "router").rglob("*.py")):
        importer = top_name(module_name(path, root))
        if importer not in rank:
            problems.append(f"{path.relative_to(root)}: router.{importer} is in no layer")
            continue
        for target in sorted(imported_modules(path, root)):
            imported = top_name(target)
            if imported == importer:
                continue
            if imported not in rank:
                problems.append(f"{path.relative_to(root)}: imports {target}, in no layer")
            elif rank[imported] >= rank[importer]:
                problems.append(f"{path.relative_to(root)}: {importer} (layer {rank[importer]})"
                                f" imports {target} (layer {rank[imported]})")
    return problems


def test_every_import_runs_down_the_declared_layers() -> None:
    problems = upward_imports(declared_layers())
    assert not problems, ("imports against docs/architecture.md's layers (move the value "
                          "type down, or the caller up):\n" + "\n".join(problems))


def test_every_layer_names_a_folder_or_module_that_exists() -> None:
    for layer in declared_layers():
        for name in layer - {"router"}:
            assert (PACKAGE / name).is_dir() or (PACKAGE / f"{name}.py").is_file(), name


def test_the_check_sees_upward_relative_and_late_imports(tmp_path: Path) -> None:
    files = {
        "router/__init__.py": "",
        "router/errors.py": "",
        "router/config/spec.py": "from router.errors import SpecError\n",
        "router/config/plan.py": "from .spec import X\n",
        "router/render/files.py": "def f():\n    from router.cli import main\n",
        "router/cli/__init__.py": "from ..render import files\n",
        "router/stray.py": "",
    }
    for name, text in files.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    layers = [{"router", "errors"}, {"config"}, {"render"}, {"cli"}]
    assert upward_imports(layers, tmp_path) == [
        "router/render/files.py: render (layer 2) imports router.cli (layer 3)",
        "router/stray.py: router.stray is in no layer",
    ]
