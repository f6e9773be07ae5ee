"""consensus/ and ml/ stay pure: no I/O modules, no wall clock, no global randomness."""

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN_MODULES = {
    "asyncio",
    "aiohttp",
    "plyvel",
    "socket",
    "time",
    "os",
    "uuid",
    "subprocess",
    "threading",
    "node",
    "storage",
}
FORBIDDEN_CALLS = {
    ("time", "time"),
    ("time", "monotonic"),
    ("os", "urandom"),
    ("uuid", "uuid4"),
}
RANDOM_GLOBALS = {"random", "randint", "choice", "shuffle", "uniform", "sample", "seed", "rand"}


def _sources(package: str) -> list[Path]:
    return sorted(p for p in (ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", ["consensus", "ml"])
def test_pure_packages_import_no_io(package: str) -> None:
    files = _sources(package)
    assert files, f"{package}/ has no sources"
    for path in files:
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    top = alias.name.split(".")[0]
                    assert top not in FORBIDDEN_MODULES, f"{path}: import {alias.name}"
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                top = node.module.split(".")[0]
                assert top not in FORBIDDEN_MODULES, f"{path}: from {node.module} import"
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
                base = node.func.value
                if isinstance(base, ast.Name):
                    pair = (base.id, node.func.attr)
                    assert pair not in FORBIDDEN_CALLS, f"{path}:{node.lineno}: {pair}"
                    if base.id == "random":
                        assert node.func.attr not in RANDOM_GLOBALS, (
                            f"{path}:{node.lineno}: global random.{node.func.attr}"
                        )
                if (
                    isinstance(base, ast.Attribute)
                    and isinstance(base.value, ast.Name)
                    and base.value.id == "np"
                    and base.attr == "random"
                ):
                    assert node.func.attr == "default_rng", (
                        f"{path}:{node.lineno}: global np.random.{node.func.attr}"
                    )


def test_storage_depends_on_nothing_in_the_project() -> None:
    for path in _sources("storage"):
        tree = ast.parse(path.read_text(), filename=str(path))
        for node in ast.walk(tree):
            mods: list[str] = []
            if isinstance(node, ast.Import):
                mods = [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                mods = [node.module]
            for mod in mods:
                top = mod.split(".")[0]
                assert top not in {"node", "consensus", "ml", "common"}, f"{path}: {mod}"


# --- node/ rooms --------------------------------------------------------------------------------

PROJECT = ("common", "consensus", "ml", "storage", "node")
# Which rooms of node/ a room may import (node/errors.py, the one error table, is open to all).
ROOM_MAY_IMPORT = {
    "chain": set(),
    "detect": {"chain"},
    "net": {"chain"},
    "api": {"chain"},
    "host": {"chain", "detect", "net", "api"},
    "tools": {"chain", "detect", "net", "api", "host"},
}
NO_ASYNC_ROOMS = {"chain", "detect"}  # rules, not I/O: no event loop, no HTTP


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path) -> list[tuple[int, str]]:
    """Every absolute import of a file, with its line, including ones under TYPE_CHECKING."""
    tree = ast.parse(path.read_text(), filename=str(path))
    found: list[tuple[int, str]] = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.append((node.lineno, node.module))
            found += [(node.lineno, f"{node.module}.{a.name}") for a in node.names]
    return found


def _room(module: str) -> str | None:
    parts = module.split(".")
    return parts[1] if len(parts) > 2 and parts[0] == "node" else None


def test_node_rooms_import_only_what_the_map_allows() -> None:
    modules = {_module_name(p) for p in _sources("node")}
    problems = []
    for path in _sources("node"):
        me = _module_name(path)
        room = _room(me) or (me.split(".")[1] if me.count(".") == 1 else None)
        for line, target in _imports(path):
            top = target.split(".")[0]
            if room in NO_ASYNC_ROOMS and top in {"asyncio", "aiohttp"}:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {room}/ imports {target}")
            if target not in modules or not target.startswith("node."):
                continue
            other = _room(target) or (target.split(".")[1] if target.count(".") == 1 else None)
            if other in (None, room, "errors") or room is None:
                continue
            if room not in ROOM_MAY_IMPORT:
                problems.append(f"{path.relative_to(ROOT)}:{line}: unmapped room {room}")
            elif other not in ROOM_MAY_IMPORT[room]:
                problems.append(f"{path.relative_to(ROOT)}:{line}: {room}/ imports {target}")
    assert not problems, "\n".join(problems)


def test_nothing_outside_the_tools_imports_them() -> None:
    for package in ("common", "consensus", "ml", "storage", "node"):
        for path in _sources(package):
            if _module_name(path).startswith("node.tools"):
                continue
            for line, target in _imports(path):
                assert not target.startswith("node.tools"), f"{path}:{line}: imports {target}"


# --- import cycles ------------------------------------------------------------------------------

# None left. Hidden behind TYPE_CHECKING or not, a cycle is a cycle: a new one fails here.
KNOWN_CYCLES: set[frozenset[str]] = set()


def _import_graph() -> dict[str, set[str]]:
    files = [p for pkg in PROJECT for p in _sources(pkg)]
    modules = {_module_name(p) for p in files}
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for path in files:
        me = _module_name(path)
        for _, target in _imports(path):
            # "from pkg import mod" names a module; "from pkg.mod import name" its module.
            while target and target not in modules:
                target = target.rpartition(".")[0]
            if target and target != me and not me.startswith(target + "."):
                graph[me].add(target)
    return graph


def _cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[frozenset[str]] = []
    counter = 0
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = counter
        counter += 1
        stack.append(root)
        on_stack.add(root)
        while work:
            v, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[v] = min(low[v], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[v])
            if low[v] == index[v]:
                component = set()
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    component.add(w)
                    if w == v:
                        break
                if len(component) > 1:
                    found.append(frozenset(component))
    return found


def test_cycle_finder_finds_a_cycle() -> None:
    graph = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert _cycles(graph) == [frozenset({"a", "b", "c"})]


def test_no_new_import_cycles() -> None:
    cycles = set(_cycles(_import_graph()))
    new = [sorted(c) for c in cycles - KNOWN_CYCLES]
    gone = [sorted(c) for c in KNOWN_CYCLES - cycles]
    assert not new, f"import cycles: {new}"
    assert not gone, f"no longer cycles, remove from KNOWN_CYCLES: {gone}"
