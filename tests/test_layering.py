"""Layering: no import cycles among the modules of ``mixture_of_thoughts``.

The check parses every module under ``src/mixture_of_thoughts`` with :mod:`ast` (nothing is
imported), collects its imports, relative and absolute, at module level *and* inside functions and
classes (a deferred import is still a dependency), and looks for strongly connected components of
the resulting graph. An edge goes to the module an import names: ``from .x import y`` goes to
``x.y`` when that is a module, else to ``x``; a parent package is not an edge of its own.
Dynamic imports (``importlib.import_module``) are not seen.

Run ``python tests/test_layering.py`` to print the graph's cycles.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

PACKAGE = "mixture_of_thoughts"
SRC = Path(__file__).resolve().parent.parent / "src"


def module_files(src: Path = SRC, package: str = PACKAGE) -> dict[str, Path]:
    """Dotted module name -> file, for every ``.py`` file of ``package`` (``__init__`` names the package)."""
    out = {}
    for f in sorted((src / package).rglob("*.py")):
        parts = list(f.relative_to(src).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = f
    return out


def _resolve(name: str, modules: dict[str, Path]) -> str | None:
    """The deepest known module that ``name`` (dotted) is or lies inside, or None outside the package."""
    while name:
        if name in modules:
            return name
        name = name.rpartition(".")[0]
    return None


def imports_of(module: str, path: Path, modules: dict[str, Path]) -> set[str]:
    """The package's modules that ``module`` imports anywhere in its body (functions included)."""
    is_pkg = path.name == "__init__.py"
    tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_pkg else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                stem = ".".join(base + ([node.module] if node.module else []))
            else:
                stem = node.module or ""
            # ``from a import b``: b may be a submodule of a, or a name defined in a
            targets = [f"{stem}.{a.name}" if f"{stem}.{a.name}" in modules else stem for a in node.names]
        else:
            continue
        for t in targets:
            r = _resolve(t, modules)
            if r is not None and r != module:
                found.add(r)
    return found


def import_graph(src: Path = SRC, package: str = PACKAGE) -> dict[str, set[str]]:
    modules = module_files(src, package)
    return {m: imports_of(m, f, modules) for m, f in modules.items()}


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan), each sorted, largest first."""
    index, low, on_stack, stack, out = {}, {}, set(), [], []
    counter = [0]

    def visit(v):  # recursion depth is bounded by the number of modules (a few dozen)
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(out, key=lambda c: (-len(c), c))


def _describe(graph, comp) -> str:
    members = set(comp)
    edges = [f"{a} -> {b}" for a in comp for b in sorted(graph[a] & members)]
    return "cycle among " + ", ".join(comp) + ":\n    " + "\n    ".join(edges)


# ----------------------------------------------------------------------------- the checker itself


def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)


def test_checker_sees_relative_absolute_and_function_level_imports(tmp_path):
    _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a.py": "from .b import thing\n",
        "pkg/b.py": "def f():\n    import pkg.c\n",
        "pkg/c.py": "class K:\n    def m(self):\n        from . import a\n",
        "pkg/sub/__init__.py": "",
        "pkg/sub/d.py": "from ..a import x\nfrom .. import c\nimport os\n",
        "pkg/e.py": "from pkg.sub import d\n",
    })
    g = import_graph(tmp_path, "pkg")
    assert g["pkg.a"] == {"pkg.b"} and g["pkg.b"] == {"pkg.c"} and g["pkg.c"] == {"pkg.a"}
    assert g["pkg.sub.d"] == {"pkg.a", "pkg.c"}
    assert g["pkg.e"] == {"pkg.sub.d"}
    assert cycles(g) == [["pkg.a", "pkg.b", "pkg.c"]]


def test_checker_finds_no_cycle_in_a_tree(tmp_path):
    _write(tmp_path, {"pkg/__init__.py": "", "pkg/a.py": "from . import b\n", "pkg/b.py": "import json\n"})
    assert cycles(import_graph(tmp_path, "pkg")) == []


# ----------------------------------------------------------------------------- floors

# The package's floors (docs/architecture.md): a module may import from its own floor's package and
# from any lower floor, never from a higher one. The root package (``mixture_of_thoughts``) is the
# public entry point and may re-export from anywhere.
FLOORS = {
    "errors": 0, "units": 0,
    "rng": 1, "device": 1, "config": 1,
    "data": 2, "layers": 2,
    "models": 3, "steering": 3,
    "metrics": 4, "training": 4,
    "generation": 5,
    "tasks": 6, "hf": 6,
    "api": 7,
    "experiments": 8, "serve": 8,
    "cli": 9,
}


def floor_of(module: str, package: str = PACKAGE) -> tuple[str, int] | None:
    """``(room, floor)`` of a dotted module name, or None for the root package itself."""
    parts = module.split(".")[1:]
    if not parts:
        return None
    return parts[0], FLOORS[parts[0]]


def arrows_up(graph: dict[str, set[str]], package: str = PACKAGE) -> list[str]:
    """Every import that reaches a higher floor, as ``a -> b (floor i -> j)``."""
    out = []
    for a, deps in sorted(graph.items()):
        fa = floor_of(a, package)
        for b in sorted(deps):
            fb = floor_of(b, package)
            if fa is None or fb is None or fa[0] == fb[0]:
                continue
            if fb[1] >= fa[1]:
                out.append(f"{a} -> {b} (floor {fa[1]} -> {fb[1]})")
    return out


def test_the_floor_check_sees_an_arrow_up_and_across(tmp_path):
    _write(tmp_path, {
        f"{PACKAGE}/__init__.py": "from .cli import main\n",  # the root may re-export
        f"{PACKAGE}/errors.py": "",
        f"{PACKAGE}/metrics/__init__.py": "",
        f"{PACKAGE}/metrics/semantic.py": "from ..hf._compat import x\nfrom ..errors import E\n",
        f"{PACKAGE}/hf/__init__.py": "",
        f"{PACKAGE}/hf/_compat.py": "from ..metrics import semantic\n",
        f"{PACKAGE}/tasks/__init__.py": "",
        f"{PACKAGE}/tasks/t.py": "def f():\n    from ..hf import _compat\n",
        f"{PACKAGE}/cli/__init__.py": "",
    })
    found = arrows_up(import_graph(tmp_path, PACKAGE))
    assert found == [f"{PACKAGE}.metrics.semantic -> {PACKAGE}.hf._compat (floor 4 -> 6)",
                     f"{PACKAGE}.tasks.t -> {PACKAGE}.hf._compat (floor 6 -> 6)"]


def test_every_room_has_a_floor():
    rooms = {m.split(".")[1] for m in module_files() if m.count(".") >= 1}
    assert rooms == set(FLOORS), f"add {sorted(rooms - set(FLOORS))} to FLOORS (and docs/architecture.md)"


def test_no_arrow_runs_up():
    """Nothing imports from a higher floor, or from another room of its own floor."""
    found = arrows_up(import_graph())
    assert not found, "imports that run up:\n    " + "\n    ".join(found)


def test_the_floors_are_the_ones_docs_architecture_shows():
    text = (SRC.parent / "docs" / "architecture.md").read_text(encoding="utf-8")
    for room, floor in FLOORS.items():
        assert f"| {floor} |" in text and f"`{room}`" in text, room
    rows = [line for line in text.splitlines() if line.startswith("| ") and line.split("|")[1].strip().isdigit()]
    shown = {}
    for line in rows:
        cells = [c.strip() for c in line.split("|")[1:-1]]
        for room in cells[1].replace("`", "").replace(",", " ").split():
            shown[room] = int(cells[0])
    assert shown == FLOORS


# ----------------------------------------------------------------------------- the package


def test_graph_covers_the_package():
    g = import_graph()
    assert {"mixture_of_thoughts.cli.core", "mixture_of_thoughts.cli.common", "mixture_of_thoughts.config"} <= set(g)
    assert "mixture_of_thoughts.cli.common" in g["mixture_of_thoughts.cli.core"]


def test_cli_command_modules_import_only_the_shared_module():
    """Command modules (``cli/<group>.py``) never import one another, only ``cli.common`` and helpers."""
    from mixture_of_thoughts.cli import GROUPS

    g = import_graph()
    groups = {f"{PACKAGE}.cli.{name}" for name in GROUPS}
    for m in sorted(groups):
        assert not g[m] & groups, f"{m} imports the command module(s) {sorted(g[m] & groups)}"


def test_expert_steering_lives_outside_hf_and_needs_no_transformers():
    """``steering.experts`` controls HF MoE models and this package's MoT layers alike: not an ``hf`` module."""
    modules = module_files()
    assert f"{PACKAGE}.hf.experts" not in modules
    g = import_graph()
    assert not {d for d in g[f"{PACKAGE}.steering.experts"] if d.startswith(f"{PACKAGE}.hf")}
    tree = ast.parse(modules[f"{PACKAGE}.steering.experts"].read_text(encoding="utf-8"))
    names = {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    names |= {n.module for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and n.module and not n.level}
    assert not {n for n in names if n.split(".")[0] == "transformers"}
    assert f"{PACKAGE}.steering.experts" in g[f"{PACKAGE}.hf.specialise"]


def test_no_import_cycles_in_cli():
    g = import_graph()
    cli = {m: deps for m, deps in g.items() if m.startswith(f"{PACKAGE}.cli")}
    found = [c for c in cycles(g) if any(m.startswith(f"{PACKAGE}.cli") for m in c)]
    assert not found, "\n".join(_describe(g, c) for c in found)
    assert cli  # the package was found


def test_no_import_cycles_in_the_package():
    """Module-level and function-level imports alike: the modules form a DAG."""
    g = import_graph()
    found = cycles(g)
    assert not found, "\n".join(_describe(g, c) for c in found)


if __name__ == "__main__":
    graph = import_graph()
    cs = cycles(graph)
    for c in cs:
        print(_describe(graph, c))
    print(f"{len(graph)} modules, {len(cs)} cycle(s)")
    sys.exit(1 if cs else 0)
