"""The package's layering rule, checked from the source (``ast`` only, nothing imported).

Arrows point down only: a module may import its own layer or a layer listed before it. Layers on the same
row (``training`` and ``deploy``) may not import each other. Also refused: an import circle between modules
(function-level imports included), ``from steel_defect.x import _name`` / ``x._name`` of a private name
defined in another module, a module in no layer, and a package module importing a re-export shim.

``python tests/test_layering.py [PACKAGE_DIR]`` prints the failures for any checkout (e.g. an older one).
"""

from __future__ import annotations

import ast
import sys
from collections.abc import Iterable
from pathlib import Path

#: The layers, top (imported by everything below) to bottom: rows of {layer: module prefixes}. A prefix is
#: relative to the package and covers the module and, for a package, everything inside it. Layers on one row
#: are siblings: neither imports the other.
LAYERS: list[dict[str, tuple[str, ...]]] = [
    {
        "utilities": (
            "__init__",  # the package's constants (NUM_CLASSES, ...)
            "_lazy",
            "io",
            "rle",
            "metrics",
            "fingerprint",
            "submission",
            "report",
            "guard",
            "run_record",
            "cpu_features",
            "config",
        )
    },
    {"postprocess": ("postprocess",)},
    {"data": ("data",)},
    {"synthetic": ("synthetic",)},
    {"models": ("models",)},
    {"inference": ("inference",)},
    {"training": ("training",), "deploy": ("deploy",)},
    {"tasks": ("tasks",)},
]

#: Re-export shims kept for one release (old import paths): exempt from the layering rule, but no package
#: module may import them.
SHIMS: tuple[str, ...] = ("predictor", "export", "kaggle", "weights", "callbacks", "serve", "serve.__main__")

REPO = Path(__file__).resolve().parents[1]


def _modules(root: Path) -> dict[str, Path]:
    """Dotted name (relative to the package, ``__init__`` for the package itself) -> file."""
    mods = {}
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).with_suffix("").parts
        if rel[-1] == "__init__" and len(rel) > 1:
            rel = rel[:-1]
        mods[".".join(rel)] = path
    return mods


def _resolve(name: str, mods: Iterable[str]) -> str | None:
    """The module a dotted name (relative to the package) lives in: its longest known prefix."""
    known = set(mods)
    while name and name not in known:
        name = name.rpartition(".")[0]
    return name or None


def _layer(mod: str, rows: list[dict[str, tuple[str, ...]]]) -> tuple[int, str] | None:
    """(row index, layer name) of a module, or None."""
    for row, layers in enumerate(rows):
        for name, prefixes in layers.items():
            if any(mod == p or mod.startswith(p + ".") for p in prefixes):
                return row, name
    return None


def _is_private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _defined_names(tree: ast.Module) -> set[str]:
    out = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            out.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            for target in node.targets if isinstance(node, ast.Assign) else [node.target]:
                out.update(n.id for n in ast.walk(target) if isinstance(n, ast.Name))
    return out


def check_layering(
    root: str | Path,
    layers: list[dict[str, tuple[str, ...]]] | None = None,
    shims: tuple[str, ...] | None = None,
) -> list[str]:
    """Every breach of the rule in the package at ``root`` (its folder name is the package name); ``layers``
    and ``shims`` default to :data:`LAYERS` and :data:`SHIMS`."""
    root = Path(root)
    layers = LAYERS if layers is None else layers
    shims = SHIMS if shims is None else shims
    pkg = root.name
    mods = _modules(root)
    trees = {m: ast.parse(p.read_text(encoding="utf-8"), str(p)) for m, p in mods.items()}
    defined = {m: _defined_names(t) for m, t in trees.items()}
    edges: dict[str, set[str]] = {m: set() for m in mods}
    lines: dict[tuple[str, str], int] = {}
    private, layering = [], []

    def rel(dotted: str) -> str | None:
        if dotted == pkg:
            return "__init__"
        return dotted[len(pkg) + 1 :] if dotted.startswith(pkg + ".") else None

    for mod, tree in trees.items():
        is_pkg = mods[mod].name == "__init__.py"
        aliases: dict[str, str] = {}  # local name -> module it is bound to
        for node in ast.walk(tree):
            targets: list[tuple[str, str | None, int]] = []  # (target module, imported name, line)
            if isinstance(node, ast.Import):
                for a in node.names:
                    r = rel(a.name)
                    if r is not None:
                        t = _resolve(r, mods)
                        targets.append((t, None, node.lineno))
                        if a.asname:
                            aliases[a.asname] = t
            elif isinstance(node, ast.ImportFrom):
                if node.level:
                    parts = mod.split(".") if is_pkg else mod.split(".")[:-1]
                    parts = parts[: len(parts) - (node.level - 1)]
                    src = ".".join(parts + ([node.module] if node.module else []))
                else:
                    src = rel(node.module or "")
                    if src is None:
                        continue
                for a in node.names:
                    sub = f"{src}.{a.name}" if src != "__init__" else a.name
                    if sub in mods:  # a submodule
                        targets.append((sub, None, node.lineno))
                        aliases[a.asname or a.name] = sub
                    else:
                        targets.append((_resolve(src, mods) or src, a.name, node.lineno))
            elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
                t = aliases.get(node.value.id)
                if t and t != mod and _is_private(node.attr) and node.attr in defined.get(t, ()):
                    private.append(f"private: {pkg}.{mod}:{node.lineno} uses {node.attr} of {pkg}.{t}")
            for t, name, line in targets:
                if t is None or t == mod:
                    continue
                edges[mod].add(t)
                lines.setdefault((mod, t), line)
                if name and _is_private(name):
                    private.append(f"private: {pkg}.{mod}:{line} imports {name} from {pkg}.{t}")

    for mod in mods:
        if mod in shims:
            continue
        here = _layer(mod, layers)
        if here is None:
            layering.append(f"unassigned: {pkg}.{mod} is in no layer (add it to LAYERS or SHIMS)")
            continue
        for t in sorted(edges[mod]):
            line = lines[(mod, t)]
            if t in shims:
                layering.append(f"shim: {pkg}.{mod}:{line} imports the re-export shim {pkg}.{t}")
                continue
            there = _layer(t, layers)
            if there is None:
                continue  # reported as unassigned
            if there[0] > here[0] or (there[0] == here[0] and there[1] != here[1]):
                layering.append(f"upward: {pkg}.{mod}:{line} ({here[1]}) imports {pkg}.{t} ({there[1]})")

    return _cycles(edges, pkg) + private + layering


def _cycles(edges: dict[str, set[str]], pkg: str) -> list[str]:
    """Strongly connected components of more than one module (Tarjan; a package's edges to its own
    submodules are re-exports, not circles)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[str] = []
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10_000))

    def strong(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in edges[v]:
            if w.startswith(v + ".") or w not in edges:
                continue
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append("cycle: " + " <-> ".join(f"{pkg}.{m}" for m in sorted(comp)))

    for v in sorted(edges):
        if v not in index:
            strong(v)
    return out


def test_the_package_follows_the_layering_rule():
    assert check_layering(REPO / "steel_defect") == []


def test_the_check_bites(tmp_path):
    pkg = tmp_path / "steel_defect"
    files = {
        "__init__.py": "",
        "io.py": "from steel_defect.tasks.run import go\n",  # upward: utilities -> tasks
        "postprocess/__init__.py": "",
        "postprocess/apply.py": "def _helper():\n    pass\n",
        "postprocess/tuning.py": "from steel_defect.postprocess.apply import _helper\n",  # private
        "models/__init__.py": "",
        "models/a.py": "def f():\n    from steel_defect.models import b\n",  # a circle via a lazy import
        "models/b.py": "import steel_defect.models.a as a\n\na._x\n",
        "training/__init__.py": "",
        "training/cb.py": "from steel_defect.deploy import thing\n",  # sibling layers
        "deploy/__init__.py": "thing = 1\n",
        "tasks/__init__.py": "",
        "tasks/run.py": "from steel_defect import predictor\n\ndef go():\n    pass\n",  # imports a shim
        "predictor.py": "",
        "stray.py": "",
    }
    for name, text in files.items():
        (pkg / name).parent.mkdir(parents=True, exist_ok=True)
        (pkg / name).write_text(text)
    (pkg / "models" / "a.py").write_text("_x = 1\n\ndef f():\n    from steel_defect.models import b\n")
    found = "\n".join(check_layering(pkg))
    assert "cycle: steel_defect.models.a <-> steel_defect.models.b" in found
    assert (
        "private: steel_defect.postprocess.tuning:1 imports _helper from steel_defect.postprocess.apply"
        in found
    )
    assert "private: steel_defect.models.b:3 uses _x of steel_defect.models.a" in found
    assert "upward: steel_defect.io:1 (utilities) imports steel_defect.tasks.run (tasks)" in found
    assert "upward: steel_defect.training.cb:1 (training) imports steel_defect.deploy (deploy)" in found
    assert "shim: steel_defect.tasks.run:1 imports the re-export shim steel_defect.predictor" in found
    assert "unassigned: steel_defect.stray is in no layer" in found


if __name__ == "__main__":
    problems = check_layering(sys.argv[1] if len(sys.argv) > 1 else REPO / "steel_defect")
    print("\n".join(problems) or "layering: ok")
    sys.exit(1 if problems else 0)
