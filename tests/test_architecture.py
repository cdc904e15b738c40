"""The module graph stays as ARCHITECTURE.md draws it: no import cycles, no module importing another package's private
names, igpo_envs never importing igpo_trainer (nor torch at import time), benchmarks on public APIs without sys.path
hacks. Every import counts, including those inside functions: a lazy import still ties two modules together."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("igpo_envs", "igpo_trainer")

# Known violations, each to be removed from here when its module is fixed (a violation not listed fails, and so does a
# listed one that is gone, so the list only shrinks).
KNOWN_CYCLES: set[frozenset[str]] = set()
KNOWN_PRIVATE_IMPORTS: set[tuple[str, str, str]] = set()
KNOWN_SYS_PATH_HACKS: set[str] = set()


def _module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(*dirs: str) -> dict[str, Path]:
    return {_module_name(p): p for d in dirs for p in sorted((ROOT / d).rglob("*.py"))}


MODULES = _modules(*PACKAGES)
BENCHMARKS = _modules("benchmarks")


def _package(module: str) -> str:
    """The package a module belongs to (a package's ``__init__`` belongs to the package itself)."""
    path = MODULES.get(module)
    return module if path is not None and path.name == "__init__.py" else module.rsplit(".", 1)[0]


def _imports(module: str, path: Path) -> list[tuple[str, str | None]]:
    """``(imported module, imported name or None)`` for every import statement of a file, at any depth."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, None) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative import
                anchor = module.split(".")
                anchor = anchor if path.name == "__init__.py" else anchor[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([node.module] if node.module else []))
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                found.append((submodule, None) if submodule in MODULES else (base, alias.name))
    return found


def _own_module(name: str) -> str | None:
    """The project module an import refers to (``a.b.c`` -> ``a.b`` when ``c`` is an attribute), or None."""
    while name and name not in MODULES:
        if "." not in name:
            return None
        name = name.rsplit(".", 1)[0]
    return name


def _graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {module: set() for module in MODULES}
    for module, path in MODULES.items():
        for target, _ in _imports(module, path):
            own = _own_module(target)
            if own is not None and own != module:
                graph[module].add(own)
    return graph


def _cycles(graph: dict[str, set[str]]) -> set[frozenset[str]]:
    """Strongly connected components with more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: set[frozenset[str]] = set()
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
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
                component = set()
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.add(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.add(frozenset(component))
    return components


def test_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == {frozenset("abc")}
    assert _cycles({"a": {"b"}, "b": set()}) == set()


def test_no_import_cycles():
    assert _cycles(_graph()) == KNOWN_CYCLES


def test_no_module_imports_another_packages_private_names():
    found = set()
    for module, path in {**MODULES, **BENCHMARKS}.items():
        for target, name in _imports(module, path):
            own = _own_module(target)
            private = name is not None and name.startswith("_") and not name.startswith("__")
            if own is not None and private and _package(own) != _package(module):
                found.add((module, own, name))
    assert found == KNOWN_PRIVATE_IMPORTS


def test_envs_never_import_the_trainer():
    offenders = sorted(module for module, targets in _graph().items()
                       if module.startswith("igpo_envs") and any(t.startswith("igpo_trainer") for t in targets))
    assert offenders == []


def test_importing_the_envs_stays_light():
    code = ("import sys, igpo_envs, igpo_envs.env, igpo_envs.vector, igpo_envs.evaluation\n"
            "print(sorted({'torch', 'transformers', 'trl'} & set(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    assert out.stdout.strip() == "[]"


def test_benchmarks_need_no_sys_path_hacks():
    hacks = set()
    for module, path in BENCHMARKS.items():
        for node in ast.walk(ast.parse(path.read_text())):
            if (isinstance(node, ast.Attribute) and node.attr in ("insert", "append")
                    and isinstance(node.value, ast.Attribute) and node.value.attr == "path"
                    and isinstance(node.value.value, ast.Name) and node.value.value.id == "sys"):
                hacks.add(module)
    assert hacks == KNOWN_SYS_PATH_HACKS
