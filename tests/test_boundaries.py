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
