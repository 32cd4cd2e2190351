"""The layout shows the architecture: rooms (packages) import only rooms below them, no folder is
crowded, no module is long. Read from the source with ``ast``, so lazy imports inside functions
count as much as the ones at the top of a file."""

import ast
from collections import defaultdict
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("compress", "export")
# The entry points sit above every room and may import any of them: the packages' public faces
# (which re-export the API) and the command line.
ENTRY_POINTS = {"compress/__init__.py", "export/__init__.py", "compress/cli.py"}
MAX_SIBLINGS = 12
MAX_LINES = 400


def _modules() -> dict[str, Path]:
    modules = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            modules[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return modules


def _imports(path: Path, modules: dict[str, Path]) -> set[str]:
    """The modelpress modules ``path`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            subs = [f"{node.module}.{alias.name}" for alias in node.names]
            names = [name for name in subs if name in modules] or [node.module]
        else:
            continue
        found.update(name for name in names if name in modules)
    return found


def _room(path: Path) -> str:
    return ".".join(path.parent.relative_to(ROOT).parts)


def room_graph() -> dict[str, dict[str, list[str]]]:
    """room -> imported room -> the module imports that make the edge."""
    modules = _modules()
    graph: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for name, path in modules.items():
        if str(path.relative_to(ROOT)) in ENTRY_POINTS:
            continue
        for target in _imports(path, modules):
            source_room, target_room = _room(path), _room(modules[target])
            if source_room != target_room:
                graph[source_room][target_room].append(f"{name} -> {target}")
    return graph


def _cycles(graph) -> list[list[str]]:
    """Strongly connected components of more than one room (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    components = []

    def visit(room: str) -> None:
        index[room] = low[room] = len(index)
        stack.append(room)
        for target in graph.get(room, {}):
            if target not in index:
                visit(target)
                low[room] = min(low[room], low[target])
            elif target in stack:
                low[room] = min(low[room], index[target])
        if low[room] == index[room]:
            component = []
            while True:
                member = stack.pop()
                component.append(member)
                if member == room:
                    break
            if len(component) > 1:
                components.append(sorted(component))

    for room in sorted(graph):
        if room not in index:
            visit(room)
    return components


def test_no_room_imports_a_room_that_imports_it_back():
    graph = room_graph()
    cycles = _cycles(graph)
    detail = [
        f"{a} -> {b}: {graph[a][b][:3]}" for cycle in cycles for a in cycle for b in cycle if b in graph.get(a, {})
    ]
    assert not cycles, "import cycles between packages:\n" + "\n".join(detail)


def test_the_cycle_check_finds_a_cycle():
    graph = {"a": {"b": ["a.x -> b.y"]}, "b": {"c": ["b.y -> c.z"]}, "c": {"a": ["c.z -> a.x"]}, "d": {"a": []}}
    assert _cycles(graph) == [["a", "b", "c"]]


def test_the_engine_and_the_recipe_never_import_the_passes():
    graph = room_graph()
    assert "compress.passes" not in graph["compress.engine"]
    assert "compress.passes" not in graph["compress.recipe"]
    assert not [room for room in graph["compress.engine"] if room.startswith("export")]


def test_no_folder_is_crowded():
    crowded = {}
    for package in PACKAGES:
        for folder in [ROOT / package, *(p.parent for p in (ROOT / package).rglob("__init__.py"))]:
            entries = [
                p.name
                for p in folder.iterdir()
                if p.name != "__init__.py" and (p.suffix == ".py" or (p / "__init__.py").exists() or p.is_dir())
                if p.name != "__pycache__"
            ]
            if len(entries) - 1 > MAX_SIBLINGS:
                crowded[str(folder.relative_to(ROOT))] = len(entries)
    assert not crowded, f"folders with more than {MAX_SIBLINGS + 1} entries: {crowded}"


def test_no_module_is_long():
    long = {
        str(p.relative_to(ROOT)): n for p in _modules().values() if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_package_says_what_it_owns():
    silent = [
        str(p.relative_to(ROOT))
        for package in PACKAGES
        for p in (ROOT / package).rglob("__init__.py")
        if ast.get_docstring(ast.parse(p.read_text())) is None
    ]
    assert not silent, f"packages without a docstring: {silent}"
