"""The package's imports run one way (docs/architecture.md): no module imports a module of a layer above
its own, and no two modules import each other, directly or round a circle. And the tree of
docs/architecture.md names every module, a line each, and no module that is gone.

Read from the source with `ast`: every ``import streamer…`` and ``from streamer… import`` counts, also
those inside functions (a lazy import still ties the two modules together); those under
``if TYPE_CHECKING:`` do not (they are annotations only, never run).
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "streamer"

LAYERS: list[set[str]] = [
    {"streamer", "errors", "paths", "logs", "coco", "messages"},
    {"models", "samples", "config"},
    {"cuda", "transport", "sources", "output"},
    {"engine", "preprocess", "postprocess", "tracking", "observability"},
    {"fleet", "workers"},
    {"daemon", "accuracy"},
    {"cli", "__main__"},
]
"""Bottom first. A module may import from its own layer and the layers below it."""


def _modules() -> dict[str, Path]:
    found = {}
    for path in PACKAGE.rglob("*.py"):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def _imports(modules: dict[str, Path]) -> dict[str, set[str]]:
    def known(name: str) -> str | None:
        while name not in modules:
            if "." not in name:
                return None
            name = name.rsplit(".", 1)[0]
        return name

    edges: dict[str, set[str]] = defaultdict(set)
    for module, path in modules.items():
        tree = ast.parse(path.read_text(), str(path))
        type_only = {
            id(n)
            for node in ast.walk(tree)
            if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test)
            for n in ast.walk(node)
        }
        for node in ast.walk(tree):
            if id(node) in type_only:
                continue
            targets: list[str | None] = []
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("streamer"):
                targets = [known(f"{node.module}.{a.name}") or known(node.module) for a in node.names]
            elif isinstance(node, ast.Import):
                targets = [known(a.name) for a in node.names if a.name.startswith("streamer")]
            edges[module].update(t for t in targets if t is not None and t != module)
    return edges


def _layer(module: str) -> int:
    part = module.split(".")[1] if "." in module else module
    for i, layer in enumerate(LAYERS):
        if part in layer:
            return i
    raise AssertionError(f"{module} is in no layer of tests/test_layers.py: add its package to LAYERS")


def test_every_import_goes_down_or_across_a_layer() -> None:
    modules = _modules()
    upward = [
        f"{a} (layer {_layer(a)}) imports {b} (layer {_layer(b)})"
        for a, targets in sorted(_imports(modules).items())
        for b in sorted(targets)
        if _layer(b) > _layer(a)
    ]
    assert not upward, "\n".join(upward)


def test_no_import_circles() -> None:
    edges = _imports(_modules())
    circles: list[list[str]] = []
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []

    def visit(v: str) -> None:  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in edges.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while (w := stack.pop()) != v:
                component.append(w)
            if component:
                circles.append(sorted([v, *component]))

    for module in sorted(_modules()):
        if module not in index:
            visit(module)
    assert not circles, "modules that import each other: " + "; ".join(" ↔ ".join(c) for c in circles)


def _tree() -> set[str]:
    """The modules the tree of docs/architecture.md names: paths relative to the package."""
    text = (PACKAGE.parent / "docs" / "architecture.md").read_text()
    block = text.split("```\nstreamer/\n", 1)[1].split("```", 1)[0]
    folders: list[str] = []
    named = set()
    for line in block.splitlines():
        depth = (len(line) - len(line.lstrip(" "))) // 2 - 1  # two spaces a level, below streamer/
        name = line.split()[0]
        del folders[depth:]
        if name.endswith("/"):
            folders.append(name.removesuffix("/"))
        else:
            named.add("/".join([*folders, name]))
    return named


def test_the_architecture_tree_names_every_module_and_only_those() -> None:
    named = _tree()
    modules = {
        str(p.relative_to(PACKAGE))
        for p in PACKAGE.rglob("*.py")
        if p.name not in ("__init__.py", "__main__.py")
    }
    missing = sorted(modules - named)
    assert not missing, f"modules docs/architecture.md's tree does not name (a line each): {missing}"
    gone = sorted(n for n in named if not (PACKAGE / n).is_file())
    assert not gone, f"docs/architecture.md's tree names modules that do not exist: {gone}"
