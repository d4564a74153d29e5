"""Which project files a stage runs: derived from the imports of its body, never typed by hand.

DVC reruns a stage when one of its `deps` changes, so a module that a stage imports but `dvc.yaml` forgets
means a stale output after a code change. A hand-kept list drifts; this reads the source instead:

- in the stage function's own module: the module-level imports, plus the imports inside the stage function
  and inside every module-level function it (transitively) names — a module holding several stage bodies
  does not make each stage depend on what only the others import;
- in every project module reached that way: all of its imports, module level and deferred ones inside
  functions alike (a deferred import runs as soon as that function does, and telling which functions run
  would need the program's data), transitively;
- each package's `__init__.py` on the way, since importing `a.b` runs `a/__init__.py`.

Only the project's own packages count; third-party code is pinned by `uv.lock`.
"""

from __future__ import annotations

import ast
import sys
from functools import lru_cache
from pathlib import Path
from typing import Callable

PROJECT_PACKAGES = ("assets", "training", "evaluation", "orchestration", "inference")
ROOT = Path(__file__).resolve().parent.parent


def module_path(name: str) -> Path | None:
    """The source file of a project module or package (relative to the repository root), or None."""
    if name.split(".")[0] not in PROJECT_PACKAGES:
        return None
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate.relative_to(ROOT)
    return None


def _package_of(module: str, is_package: bool) -> str:
    return module if is_package else module.rpartition(".")[0]


def _bindings(node: ast.AST, module: str, is_package: bool) -> list[tuple[str, set[str]]]:
    """(name bound, project modules it brings) for each alias of one import statement; `from a import b`
    brings `a.b` when b is a module, and `import a.b` binds `a` but runs both."""
    out: list[tuple[str, set[str]]] = []
    if isinstance(node, ast.Import):
        for alias in node.names:
            out.append((alias.asname or alias.name.split(".")[0], _with_parents(alias.name)))
    elif isinstance(node, ast.ImportFrom):
        if node.level:
            parts = _package_of(module, is_package).split(".")
            base = ".".join(parts[: len(parts) - node.level + 1])
            target = f"{base}.{node.module}" if node.module else base
        else:
            target = node.module or ""
        for alias in node.names:
            out.append((alias.asname or alias.name, _with_parents(target) | _with_parents(f"{target}.{alias.name}")))
    return out


def _imported(node: ast.AST, module: str, is_package: bool) -> set[str]:
    """Project modules that one import statement runs."""
    return {m for _, mods in _bindings(node, module, is_package) for m in mods}


def _with_parents(name: str) -> set[str]:
    parts = name.split(".")
    return {".".join(parts[:i]) for i in range(1, len(parts) + 1) if module_path(".".join(parts[:i]))}


@lru_cache(maxsize=None)
def _tree(module: str) -> ast.Module:
    return ast.parse((ROOT / module_path(module)).read_text(), filename=str(module_path(module)))


def _is_package(module: str) -> bool:
    return module_path(module).name == "__init__.py"


@lru_cache(maxsize=None)
def all_imports(module: str) -> frozenset[str]:
    """Every project module that `module` imports anywhere in its source."""
    found: set[str] = set()
    for node in ast.walk(_tree(module)):
        found |= _imported(node, module, _is_package(module))
    return frozenset(found)


def _function_imports(module: str, function: str) -> set[str]:
    """What running `function` of `module` imports: the module-level imports whose names it (or a module-level
    function or class it names, transitively) uses, plus every import inside those functions. Imports used
    by the module's own top-level statements (constants, decorators) always count: they run on import."""
    tree = _tree(module)
    package = _is_package(module)
    defs = {n.name: n for n in tree.body if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))}
    if function not in defs:
        raise KeyError(f"{module_path(module)}: no module-level function {function!r}")
    top_imports = [n for n in tree.body if isinstance(n, (ast.Import, ast.ImportFrom))]
    top_other = [n for n in tree.body if not isinstance(n, (ast.Import, ast.ImportFrom, ast.FunctionDef,
                                                            ast.AsyncFunctionDef, ast.ClassDef))]

    def names_in(node: ast.AST) -> set[str]:
        return {sub.id for sub in ast.walk(node) if isinstance(sub, ast.Name)}

    used: set[str] = set()
    for node in top_other:
        used |= names_in(node)
    found: set[str] = set()
    seen, pending = set(), [function]
    while pending:
        name = pending.pop()
        if name in seen:
            continue
        seen.add(name)
        node = defs[name]
        for sub in ast.walk(node):
            found |= _imported(sub, module, package)
        for ref in names_in(node) | {d.id for d in getattr(node, "decorator_list", []) if isinstance(d, ast.Name)}:
            used.add(ref)
            if ref in defs:
                pending.append(ref)
    for node in top_imports:
        for bound, modules in _bindings(node, module, package):
            if bound in used:
                found |= modules
    return {m for m in found if module_path(m) is not None}


def modules_of(fn: Callable) -> set[str]:
    """The project modules that running `fn` may import, its own module included."""
    module = fn.__module__
    if module == "__main__" or module_path(module) is None:
        raise ValueError(f"{fn!r} is not a function of the project's packages ({', '.join(PROJECT_PACKAGES)})")
    result = _with_parents(module)
    pending = list(_function_imports(module, fn.__name__))
    while pending:
        name = pending.pop()
        if name in result:
            continue
        result |= _with_parents(name)
        pending.extend(all_imports(name) - result)
    return result


def code_files(fn: Callable) -> list[str]:
    """`modules_of(fn)` as sorted repository-relative paths, the form dvc.yaml's `deps` take."""
    return sorted(str(module_path(m)) for m in modules_of(fn))


def import_cycles() -> list[list[str]]:
    """Cycles among the project's module-level AND deferred imports (each one reported once)."""
    modules = sorted({
        ".".join(p.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for pkg in PROJECT_PACKAGES for p in (ROOT / pkg).rglob("*.py")
    })
    graph = {m: sorted(all_imports(m) - _with_parents(m)) for m in modules}
    cycles: list[list[str]] = []
    seen: set[frozenset[str]] = set()
    # Tarjan's strongly connected components: any component of more than one module is a circle.
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    counter = [0]
    sys.setrecursionlimit(max(sys.getrecursionlimit(), 10 * len(modules)))

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1 and frozenset(component) not in seen:
                seen.add(frozenset(component))
                cycles.append(sorted(component))

    for m in modules:
        if m not in index:
            visit(m)
    return cycles
