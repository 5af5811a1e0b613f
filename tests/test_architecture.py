"""The package's shape, checked from its source with ``ast``: no import circles, no upward imports.

Layers, top to bottom (docs/architecture.md): the package face, cli, sdk, devices,
converters, runtime, and the ground (errors, formats, _optional, _quiet, _version). A module
imports only from its own part or from a part below it. Inside every folder, the rooms (its
files and sub-folders) import each other without circles. Every import counts, including
those inside functions and ``TYPE_CHECKING`` blocks.
"""

from __future__ import annotations

import ast
from pathlib import Path

import edgec

PACKAGE = "edgec"
ROOT = Path(edgec.__file__).parent
LAYERS = ("__main__", "__init__", "cli", "sdk", "devices", "converters", "runtime", "ground")
GROUND = ("errors", "formats", "_optional", "_quiet", "_version")
NOT_PACKAGE = ("tests", "benchmarks", "scripts", "build", "dist", "deploy", "docs")


def modules(root: Path, package: str) -> dict[str, Path]:
    """Every module of the package under ``root``: dotted name -> file."""
    found = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root)
        if rel.parts[0] in NOT_PACKAGE or rel.parts[0].startswith(".") or "__pycache__" in rel.parts:
            continue
        parts = list(rel.with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join([package, *parts])] = path
    return found


def imports(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The package's modules that ``name`` imports, anywhere in its file."""
    is_package = path.name == "__init__.py"
    here = name if is_package else name.rsplit(".", 1)[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = here.split(".")[: len(here.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            targets = [f"{module}.{alias.name}" if f"{module}.{alias.name}" in known else module
                       for alias in node.names]
        else:
            continue
        for target in targets:
            while target and target not in known:  # `import edgec.sdk.x.y` -> the deepest module that exists
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = ROOT, package: str = PACKAGE) -> dict[str, set[str]]:
    known = modules(root, package)
    return {name: imports(name, path, known) for name, path in known.items()}


def layer(module: str) -> int:
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "__init__"
    return LAYERS.index("ground" if top in GROUND else top)


def upward_arrows(graph: dict[str, set[str]]) -> list[str]:
    """Imports from a lower layer into a higher one."""
    return sorted(f"{a} -> {b}" for a, targets in graph.items() for b in targets if layer(a) > layer(b))


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Rooms that import each other in a loop, folder by folder (a room: a file or a sub-folder)."""
    found = []
    folders = {m for m in graph} | {m.rpartition(".")[0] for m in graph}
    for folder in sorted(f for f in folders if f):
        prefix = folder + "."

        def room(module: str) -> str | None:
            return module[len(prefix):].split(".")[0] if module.startswith(prefix) else None

        edges: dict[str, set[str]] = {}
        for a, targets in graph.items():
            for b in targets:
                ra, rb = room(a), room(b)
                if ra and rb and ra != rb:
                    edges.setdefault(ra, set()).add(rb)
                    edges.setdefault(rb, set())
        found += [[f"{folder}.{r}" for r in sorted(c)] for c in _components(edges) if len(c) > 1]
    return found


def _components(edges: dict[str, set[str]]) -> list[set[str]]:
    """Strongly connected components (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[set[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            out.append(component)

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return out


def test_the_package_imports_only_downward():
    graph = import_graph()
    assert len(graph) > 40 and "edgec.runtime.bundle.model" in graph["edgec.sdk.pipeline"]
    assert upward_arrows(graph) == []


def test_no_import_circles_in_any_folder():
    assert circles(import_graph()) == []


def test_the_checks_catch_what_they_forbid(tmp_path):
    pkg = tmp_path / "edgec"
    for rel, text in {
        "__init__.py": "",
        "errors.py": "",
        "runtime/__init__.py": "",
        "runtime/model.py": "from ..sdk import pipeline\n",  # upward: runtime -> sdk
        "sdk/__init__.py": "",
        "sdk/pipeline.py": "from .quantize import search\nfrom ..errors import x\n",
        "sdk/plan.py": "from .quantize.budget import Budget\n",
        "sdk/quantize/__init__.py": "",
        "sdk/quantize/search.py": "def f():\n    from .. import plan\n",  # quantize -> plan -> quantize
        "sdk/quantize/budget.py": "",
    }.items():
        (pkg / rel).parent.mkdir(parents=True, exist_ok=True)
        (pkg / rel).write_text(text)
    graph = import_graph(pkg, "edgec")
    assert upward_arrows(graph) == ["edgec.runtime.model -> edgec.sdk.pipeline"]
    assert circles(graph) == [["edgec.sdk.plan", "edgec.sdk.quantize"]]


def test_no_python_file_is_over_400_lines():
    long = {str(p.relative_to(ROOT)): n for p in modules(ROOT, PACKAGE).values()
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > 400}
    assert long == {}
