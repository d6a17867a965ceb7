"""The shape of the code: modules and their lines, the longest functions, the most parameters, and
import circles between the package's modules.

    python -m tts_runner.tools.code_shape [PACKAGE_DIR] [--json FILE]

Every import counts, wherever it is written (at the top, inside a function, under TYPE_CHECKING):
a circle that only a lazy import keeps from failing is still a circle in the design. Read from the
source with `ast`; nothing is imported.
"""

from __future__ import annotations

import argparse
import ast
import json
import sys
from dataclasses import asdict, dataclass
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1]


@dataclass
class Function:
    name: str      # module:qualified.name
    lines: int
    parameters: int  # self and cls not counted


def module_name(path: Path, root: Path) -> str:
    parts = list(path.relative_to(root.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def modules(root: Path = PACKAGE) -> dict[str, Path]:
    """Every module of the package by its dotted name."""
    return {module_name(p, root): p for p in sorted(root.rglob("*.py"))}


def imports(path: Path, name: str, known: set[str]) -> set[str]:
    """The package's modules that `path` (module `name`) imports, anywhere in it."""
    tree = ast.parse(path.read_text())
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[: len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            targets = [f"{base}.{alias.name}" for alias in node.names] + [base]
        else:
            continue
        for target in targets:
            while target and target not in known:
                target = target.rpartition(".")[0]
            if target and target != name:
                found.add(target)
    return found


def import_graph(root: Path = PACKAGE) -> dict[str, set[str]]:
    found = modules(root)
    return {name: imports(path, name, set(found)) for name, path in found.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected groups of more than one module (Tarjan's, with a stack of its own: no
    recursion, so no limit of the interpreter's is touched), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    groups: list[list[str]] = []
    for root in sorted(graph):
        if root in index:
            continue
        work = [(root, iter(sorted(graph.get(root, ()))))]
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
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
            if low[node] == index[node]:
                group = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    group.append(member)
                    if member == node:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))
    return sorted(groups)


def functions(root: Path = PACKAGE) -> list[Function]:
    out: list[Function] = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef)):
                args = child.args
                every = [*args.posonlyargs, *args.args, *args.kwonlyargs]
                count = len([a for a in every if a.arg not in ("self", "cls")]) + bool(args.vararg) + bool(args.kwarg)
                out.append(Function(f"{prefix}{child.name}", child.end_lineno - child.lineno + 1, count))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")

    for name, path in modules(root).items():
        walk(ast.parse(path.read_text()), f"{name}:")
    return out


def shape(root: Path = PACKAGE) -> dict:
    lines = {name: len(path.read_text().splitlines()) for name, path in modules(root).items()}
    funcs = functions(root)
    return {
        "modules": len(lines),
        "lines": sum(lines.values()),
        "largest_modules": sorted(lines.items(), key=lambda kv: -kv[1])[:5],
        "longest_functions": [asdict(f) for f in sorted(funcs, key=lambda f: -f.lines)[:5]],
        "most_parameters": [asdict(f) for f in sorted(funcs, key=lambda f: -f.parameters)[:5]],
        "import_circles": circles(import_graph(root)),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("root", nargs="?", type=Path, default=PACKAGE, help="the package folder (default: tts_runner)")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    figures = shape(args.root.resolve())
    print(f"{figures['modules']} modules, {figures['lines']} lines")
    print("largest modules: " + ", ".join(f"{n} ({c})" for n, c in figures["largest_modules"]))
    print("longest functions: " + ", ".join(f"{f['name']} ({f['lines']})" for f in figures["longest_functions"]))
    print("most parameters: " + ", ".join(f"{f['name']} ({f['parameters']})" for f in figures["most_parameters"]))
    print(f"import circles: {len(figures['import_circles'])}")
    for group in figures["import_circles"]:
        print("  " + " <-> ".join(group))
    if args.json:
        args.json.write_text(json.dumps(figures, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
