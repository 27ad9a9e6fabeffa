"""Import checks for sdpalab, read from the source with `ast` (nothing is imported).

Two rules of docs/architecture.md: no module imports another module's `_private` names, and the
modules of `src/sdpalab` import each other without cycles.

    python tests/import_graph.py      # one line per problem; exit 1 if any, 0 when clean

Edges of the import graph: `import sdpalab.a.b` and `from sdpalab.a.b import X` are edges to the
module they name, `sdpalab.a.b`, not to its parent packages (Python runs `sdpalab.a/__init__` on
the way, but a package `__init__` that re-exports its submodules would otherwise be in a cycle
with each of them). When `X` is itself a submodule, the edge goes to `sdpalab.a.b.X` instead of
`sdpalab.a.b`. Function-level (lazy) imports and `importlib.import_module("sdpalab...")` with a
constant name count; imports under `if TYPE_CHECKING:` do not, as they never run.
"""

from __future__ import annotations

import ast
import itertools
import sys
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = "sdpalab"
# Outside the package, these trees are checked for private imports from it (not for cycles).
CLIENT_DIRS = ("tests", "benchmarks")


@dataclass(frozen=True, slots=True)
class Import:
    """One import statement's view of one module of sdpalab."""

    importer: str  # dotted module name, or a path for files outside the package
    path: Path
    line: int
    target: str  # the module named in the statement, resolved to an absolute name
    names: tuple[str, ...]  # the names taken from it by `from target import ...`; () for `import`
    type_checking: bool  # under `if TYPE_CHECKING:`: read by type checkers only, never run


def is_private(name: str) -> bool:
    """`_x` is private; `__x__` (dunder) and `__x` handled as written are not our concern here."""
    return name.startswith("_") and not name.startswith("__")


def package_modules(root: Path = ROOT) -> dict[str, Path]:
    """Every module of `src/sdpalab` by dotted name; a package is named by its `__init__`."""
    src = root / "src"
    modules = {}
    for path in sorted((src / PACKAGE).rglob("*.py")):
        parts = path.relative_to(src).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        modules[".".join(parts)] = path
    return modules


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _resolve(module: str | None, level: int, importer: str, is_package: bool) -> str:
    """The absolute module name of `from <level dots><module> import ...` inside `importer`."""
    if level == 0:
        return module or ""
    # The package a relative import starts from: the module itself for an `__init__`.
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[: len(base) - (level - 1)]
    return ".".join(base + ([module] if module else []))


def _import_module_target(node: ast.Call) -> str | None:
    """`importlib.import_module("sdpalab.x")` with a constant name: a lazy import of it."""
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
    if name != "import_module" or len(node.args) != 1:
        return None
    arg = node.args[0]
    if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
        return arg.value
    return None


def file_imports(path: Path, importer: str, is_package: bool = False) -> list[Import]:
    """Every import of a module of sdpalab in one file, at any depth."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    found: list[Import] = []

    def visit(node: ast.AST, type_checking: bool) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.body:
                visit(child, True)
            for child in node.orelse:
                visit(child, type_checking)
            return
        if isinstance(node, ast.Import):
            for alias in node.names:
                found.append(Import(importer, path, node.lineno, alias.name, (), type_checking))
        elif isinstance(node, ast.ImportFrom):
            target = _resolve(node.module, node.level, importer, is_package)
            names = tuple(alias.name for alias in node.names)
            found.append(Import(importer, path, node.lineno, target, names, type_checking))
        elif isinstance(node, ast.Call) and (target := _import_module_target(node)):
            found.append(Import(importer, path, node.lineno, target, (), type_checking))
        for child in ast.iter_child_nodes(node):
            visit(child, type_checking)

    visit(tree, False)
    return [imp for imp in found if imp.target == PACKAGE or imp.target.startswith(PACKAGE + ".")]


def package_imports(root: Path = ROOT) -> list[Import]:
    """The imports of sdpalab's modules by sdpalab's modules."""
    found = []
    for name, path in package_modules(root).items():
        found += file_imports(path, name, is_package=path.name == "__init__.py")
    return found


def client_imports(root: Path = ROOT) -> list[Import]:
    """The imports of sdpalab's modules by the tests and benchmarks."""
    found = []
    for folder in CLIENT_DIRS:
        for path in sorted((root / folder).rglob("*.py")):
            found += file_imports(path, str(path.relative_to(root)))
    return found


def private_imports(root: Path = ROOT) -> list[str]:
    """One line per `_private` name imported from another module of sdpalab."""
    lines = []
    for imp in package_imports(root) + client_imports(root):
        for name in imp.names:
            if is_private(name) and imp.target != imp.importer:
                where = imp.path.relative_to(root)
                lines.append(f"{where}:{imp.line}: imports {name} from {imp.target}")
    return lines


def import_graph(root: Path = ROOT) -> dict[str, dict[str, Import]]:
    """Module → {imported module → the first import making that edge}; runtime imports only."""
    modules = package_modules(root)
    graph: dict[str, dict[str, Import]] = {name: {} for name in modules}

    def add(imp: Import, target: str) -> None:
        # `import sdpalab.a.b.c` of a name that is not a file: the deepest module it names.
        while target not in modules and "." in target:
            target = target.rsplit(".", 1)[0]
        if target in modules and target != imp.importer:
            graph[imp.importer].setdefault(target, imp)

    for imp in package_imports(root):
        if imp.type_checking:
            continue
        submodules = [f"{imp.target}.{name}" for name in imp.names]
        submodules = [name for name in submodules if name in modules]
        for sub in submodules:
            add(imp, sub)
        # Names that are not submodules are defined in (or re-exported by) the module named.
        if len(submodules) < len(imp.names) or not imp.names:
            add(imp, imp.target)
    return graph


def strongly_connected(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """Tarjan's strongly connected components, iteratively (no recursion limit), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components = []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(sorted(component))
    return sorted(components)


def _shortest_cycle(graph: dict[str, dict[str, Import]], start: str, within: set[str]) -> list:
    """The shortest path start → … → start inside one component (breadth first)."""
    # parent: how each module was first reached; start's None ends the walk back.
    parent = {start: None}
    frontier = [start]
    while frontier:
        following = []
        for node in frontier:
            for child in sorted(graph[node]):
                if child == start:
                    path = [node]
                    while parent[path[-1]] is not None:
                        path.append(parent[path[-1]])
                    return [*path[::-1], start]
                if child in within and child not in parent:
                    parent[child] = node
                    following.append(child)
        frontier = following
    return []


def cycles(graph: dict[str, dict[str, Import]]) -> list[list[str]]:
    """For each component of more than one module, the shortest cycle through each member.

    Together these name every module of every cyclic component without listing every
    elementary cycle (which can be exponentially many); each one is a real cycle to break.
    """
    found: list[list[str]] = []
    seen: set[tuple[str, ...]] = set()
    for component in strongly_connected(graph):
        if len(component) < 2:
            continue
        for start in component:
            cycle = _shortest_cycle(graph, start, set(component))
            # The same cycle found from another member: compare rotations that start at its minimum.
            ring = cycle[:-1]
            turn = ring.index(min(ring))
            key = tuple(ring[turn:] + ring[:turn])
            if key not in seen:
                seen.add(key)
                found.append([*key, key[0]])
    return found


def cycle_lines(root: Path = ROOT) -> list[str]:
    """One line per import cycle, `a -> b -> a`."""
    return ["import cycle: " + " -> ".join(cycle) for cycle in cycles(import_graph(root))]


def edge_lines(cycle: list[str], graph: dict[str, dict[str, Import]], root: Path = ROOT) -> list:
    """Where each edge of a cycle is made: `path:line: a -> b`, to know which import to move."""
    lines = []
    for a, b in itertools.pairwise(cycle):
        imp = graph[a][b]
        lines.append(f"    {imp.path.relative_to(root)}:{imp.line}: {a} -> {b}")
    return lines


LAYERS = (
    ("attention", "measure", "units", "cache"),
    ("spec",),
    ("build", "analysis"),
    ("models",),
    ("run", "doctor"),
    ("explore",),
    ("report",),
    ("", "cli", "cli_common", "cli_explore", "demo", "casestudy"),
)
"""The one-way flow of docs/architecture.md, by the first name under `sdpalab` (`""`: the package
itself): a module may import its own layer and those before it, never a later one."""


def layer(module: str) -> int:
    top = module.split(".")[1] if "." in module else ""
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise ValueError(f"{module}: in no layer of tests/import_graph.py's LAYERS; add it to one")


def upward_imports(root: Path = ROOT) -> list[str]:
    """One line per import against the flow: a module importing a later layer."""
    return [
        f"{imp.path.relative_to(root)}:{imp.line}: {a} imports {b}, a later layer"
        for a, edges in import_graph(root).items()
        for b, imp in edges.items()
        if layer(b) > layer(a)
    ]


def main(argv: list[str] | None = None) -> int:
    """Print every problem, one a line (`--where`: each cycle's imports under it)."""
    argv = sys.argv[1:] if argv is None else argv
    problems = private_imports()
    graph = import_graph()
    problems += upward_imports()
    for line in problems:
        print(line)
    found = cycles(graph)
    for cycle in found:
        print("import cycle: " + " -> ".join(cycle))
        if "--where" in argv:
            print("\n".join(edge_lines(cycle, graph)))
    return 1 if problems or found else 0


if __name__ == "__main__":
    sys.exit(main())
