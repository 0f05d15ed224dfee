"""The shape of the package: no import circle (lazy imports included), no function over 80
lines, no library function with more than 6 parameters. Network constructors, typer commands
(their parameters are the command's options) and overrides whose signature torch fixes are the
exceptions."""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import svai

PACKAGE = Path(svai.__file__).parent
MAX_LINES = 80
MAX_PARAMETERS = 6
# Methods whose signature a base class outside svai fixes.
FIXED_SIGNATURES = {"_load_from_state_dict"}


def _modules() -> dict[str, Path]:
    found = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        found[".".join(parts)] = path
    return found


def _trees() -> dict[str, ast.Module]:
    return {name: ast.parse(path.read_text(encoding="utf-8")) for name, path in _modules().items()}


def _imports(trees: dict[str, ast.Module]) -> dict[str, set[str]]:
    """Module -> the svai modules it imports anywhere in its file (packages' own children and
    the top package left out)."""

    def owner(name: str) -> str | None:
        while name and name not in trees:
            name = name.rpartition(".")[0]
        return name or None

    edges: dict[str, set[str]] = defaultdict(set)
    for module, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            else:
                continue
            for name in names:
                target = owner(name) if name.startswith("svai.") else None
                if target and target != module and not module.startswith(target + "."):
                    edges[module].add(target)
    return edges


def _cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (iterative Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in sorted(edges):
        if start in index:
            continue
        work = [(start, iter(sorted(edges[start])))]
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
                    work.append((child, iter(sorted(edges.get(child, ())))))
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
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_cycle_finder_finds_a_circle() -> None:
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_circle() -> None:
    assert _cycles(_imports(_trees())) == []


def _functions(tree: ast.Module):  # type: ignore[no-untyped-def]
    """(function node, enclosing class node or None) for every function in the module."""
    def walk(node: ast.AST, cls: ast.ClassDef | None):  # type: ignore[no-untyped-def]
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                yield child, cls
                yield from walk(child, None)
            elif isinstance(child, ast.ClassDef):
                yield from walk(child, child)
            else:
                yield from walk(child, cls)
    yield from walk(tree, None)


def test_no_function_over_80_lines() -> None:
    long = [f"{module}:{node.lineno} {node.name} ({node.end_lineno - node.lineno + 1} lines)"
            for module, tree in _trees().items() for node, _ in _functions(tree)
            if node.end_lineno - node.lineno + 1 > MAX_LINES]
    assert long == []


def _networks(trees: dict[str, ast.Module]) -> set[str]:
    """Names of the classes in svai that are torch modules (by their bases, transitively)."""
    bases = {node.name: {ast.unparse(base).rpartition(".")[2] for base in node.bases}
             for tree in trees.values() for node in ast.walk(tree) if isinstance(node, ast.ClassDef)}
    networks = {"Module"}
    grew = True
    while grew:
        grew = False
        for name, parents in bases.items():
            if name not in networks and parents & networks:
                networks.add(name)
                grew = True
    return networks


def _is_command(node: ast.FunctionDef | ast.AsyncFunctionDef) -> bool:
    return any("command" in ast.unparse(decorator) for decorator in node.decorator_list)


def test_no_library_function_over_6_parameters() -> None:
    trees = _trees()
    networks = _networks(trees)
    many = []
    for module, tree in trees.items():
        for node, cls in _functions(tree):
            args = node.args
            names = [a.arg for a in (*args.posonlyargs, *args.args, *args.kwonlyargs)]
            names += [a.arg for a in (args.vararg, args.kwarg) if a is not None]
            if names[:1] in (["self"], ["cls"]):
                names = names[1:]
            exempt = (_is_command(node) or node.name in FIXED_SIGNATURES
                      or (node.name == "__init__" and cls is not None and cls.name in networks))
            if len(names) > MAX_PARAMETERS and not exempt:
                many.append(f"{module}:{node.lineno} {node.name} ({len(names)} parameters)")
    assert many == []
