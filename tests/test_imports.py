"""The import structure of zskt: no module imports another that, through any chain, imports it back,
and no part of zskt imports a sub-package that imports it back (a layering inversion such as
zskt.validation -> zskt.data -> zskt.validation).

The graph is read from the source with `ast`, without importing anything. Every `import zskt...` and
`from zskt... import ...` statement of a module counts, wherever it stands: at module level, inside a
function, in a class body, under `try` or `if TYPE_CHECKING:`. A function-local import only moves the
circle from import time to call time: the two modules still need each other, and the next edit that
hoists the import turns it into an ImportError, so it is a circle here too. What is not an edge: a
class named by a string and imported at run time (Hydra's `_target_`, `hydra.utils.get_class`), which the
config chooses, and the implicit import of a package's `__init__` when one of its modules is imported
(each `__init__.py` is a module of its own here, with its own imports).

Layers: each top-level module of zskt (zskt/run.py, zskt/validation.py, ...) is a unit of its own and each
sub-package (zskt/data/, zskt/methods/, ...) is one unit; the graph of units must have no cycle either.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "zskt"

Graph = dict[str, dict[str, str]]  # module -> {imported module: "file:line" of the first import}


def module_names(package_dir: Path) -> dict[str, Path]:
    """Every module of the package under `package_dir` by dotted name (a package by its own name)."""
    root = package_dir.parent
    names = {}
    for path in sorted(package_dir.rglob("*.py")):
        parts = path.relative_to(root).with_suffix("").parts
        names[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return names


def import_graph(package_dir: Path) -> Graph:
    """The package's own imports, from every import statement of each module (see the module docstring)."""
    names = module_names(package_dir)
    graph: Graph = {name: {} for name in names}

    def known(dotted: str) -> str | None:  # the longest prefix that is one of the package's modules
        while dotted and dotted not in names:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    for name, path in names.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from the module's package, one level up per extra dot
                    anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                    base = ".".join([*anchor, *([base] if base else [])])
                # `from pkg import name`: the module pkg.name where there is one, else pkg itself
                targets = [f"{base}.{alias.name}" if f"{base}.{alias.name}" in names else base for alias in node.names]
            for target in targets:
                imported = known(target)
                if imported is not None and imported != name:
                    graph[name].setdefault(imported, f"{path.relative_to(package_dir.parent)}:{node.lineno}")
    return graph


def layer_of(module: str, top: str) -> str:
    """A module's unit: a top-level module is its own, a sub-package's modules are the sub-package."""
    parts = module.split(".")
    return ".".join(parts[:2]) if len(parts) > 1 else top


def layer_graph(graph: Graph, top: str) -> Graph:
    """`graph` with each sub-package's modules merged into one node (imports inside a unit dropped)."""
    layers: Graph = {}
    for module, imports in graph.items():
        edges = layers.setdefault(layer_of(module, top), {})
        for imported, where in imports.items():
            if layer_of(imported, top) != layer_of(module, top):
                edges.setdefault(layer_of(imported, top), where)
    return layers


def cycles(graph: Graph) -> list[list[str]]:
    """The cycles to name in a failure (each its nodes in import order, the first repeated at the
    end): in every strongly connected component of more than one node (Tarjan's algorithm), a
    shortest cycle through each of its nodes, each cycle once."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        on_stack.add(node)
        for nxt in graph.get(node, {}):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in on_stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = set()
            while True:
                member = stack.pop()
                on_stack.discard(member)
                component.add(member)
                if member == node:
                    break
            for start in sorted(component) if len(component) > 1 else ():
                cycle = shortest_cycle(graph, component, start)[:-1]
                first = cycle.index(min(cycle))  # the same cycle found from another of its nodes: once
                if (rotated := [*cycle[first:], *cycle[:first], min(cycle)]) not in found:
                    found.append(rotated)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def shortest_cycle(graph: Graph, component: set[str], start: str) -> list[str]:
    """A shortest cycle from `start` back to it within `component` (breadth-first)."""
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for nxt in sorted(graph.get(node, {})):
                if nxt == start:
                    path = [node]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if nxt in component and nxt not in parents:
                    parents[nxt] = node
                    following.append(nxt)
        frontier = following
    raise AssertionError(f"no cycle through {start} in {sorted(component)}")


def described(found: Iterable[list[str]], graph: Graph) -> str:
    """Each cycle as `a -> b (a.py:12) -> a (b.py:40)`: the import statements that close it."""
    return "\n".join(cycle[0] + "".join(f" -> {b} ({graph[a][b]})" for a, b in zip(cycle, cycle[1:]))
                     for cycle in found)


def test_the_graph_is_read():
    """The check sees the package's imports: module level, function-local, and `from zskt import x`."""
    graph = import_graph(PACKAGE_DIR)
    assert "zskt.config" in graph["zskt.run"] and "zskt.results" in graph["zskt.run"]
    assert "zskt.checkpoints" in graph["zskt.rundir"]  # imported inside check_last_checkpoint


def test_no_module_imports_itself_back():
    graph = import_graph(PACKAGE_DIR)
    found = cycles(graph)
    assert not found, "import circles among zskt modules:\n" + described(found, graph)


def test_no_layer_imports_itself_back():
    layers = layer_graph(import_graph(PACKAGE_DIR), "zskt")
    found = cycles(layers)
    assert not found, ("import circles among zskt's layers (a top-level module each, a sub-package as a whole; a "
                       "module importing a sub-package that imports it back is a layering inversion):\n"
                       + described(found, layers))


def test_the_check_finds_a_function_local_circle_and_an_inverted_layer(tmp_path):
    """The checker itself, on a small package: a circle through a function-local (and a relative)
    import, and a top-level module importing a sub-package that imports it."""
    package = tmp_path / "pkg"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "a.py").write_text("from pkg import b\n")
    (package / "b.py").write_text("def f():\n    from . import a\n")
    (package / "rules.py").write_text("def g():\n    from pkg.sub.low import x\n")
    (package / "sub" / "__init__.py").write_text("")
    (package / "sub" / "low.py").write_text("x = 1\n")
    (package / "sub" / "high.py").write_text("import pkg.rules\n")
    graph = import_graph(package)
    assert cycles(graph) == [["pkg.a", "pkg.b", "pkg.a"]]
    assert described(cycles(graph), graph) == "pkg.a -> pkg.b (pkg/a.py:1) -> pkg.a (pkg/b.py:2)"
    assert cycles(layer_graph(graph, "pkg")) == [["pkg.a", "pkg.b", "pkg.a"], ["pkg.rules", "pkg.sub", "pkg.rules"]]
