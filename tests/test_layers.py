"""The package's layers point one way: every `recthinker` import (module- or function-level) goes down.

    types, errors, jsonl, argtypes, metrics  ->  data  ->  baselines  ->  tools  ->  llm  ->  agent
        ->  rankers  ->  {eval, train, serve, cli (+ cli_view, its terminal view)}

A module may import its own layer and the layers below it, never one above; and no set of modules imports
each other in a cycle. Both are read from the source (ast), so a function-level import counts like any other.

Imports belong at the top of a module. One inside a function says why on its line or the line above (a
heavy library such as torch, or keeping `recthinker --help` fast); an import right after a commented one in
the same block shares its comment.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parent.parent / "src"
LAYERS = (
    {"recthinker", "types", "errors", "jsonl", "argtypes", "metrics"},
    {"data"},
    {"baselines"},
    {"tools"},
    {"llm"},
    {"agent"},
    {"rankers"},
    {"eval", "train", "serve", "cli", "cli_view"},
)


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def layer_of(module: str) -> int:
    """The layer of `recthinker.X...` by its first component X (the package itself is layer 0)."""
    parts = module.split(".")
    top = parts[1] if len(parts) > 1 else "recthinker"
    for i, names in enumerate(LAYERS):
        if top in names:
            return i
    raise AssertionError(f"{module}: {top!r} is in no layer; add it to LAYERS in tests/test_layers.py")


def imports_of(path: Path, modules: set[str]) -> list[tuple[str, int]]:
    """(imported recthinker module, line) for every import statement in `path`, at any depth."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, node.lineno) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolve against this module's package
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:  # `from recthinker.x import y` may name a submodule y
                sub = f"{base}.{alias.name}"
                found.append((sub if sub in modules else base, node.lineno))
    return [(m, line) for m, line in found if m == "recthinker" or m.startswith("recthinker.")]


def graph() -> dict[str, list[tuple[str, int]]]:
    files = sorted(SRC.joinpath("recthinker").rglob("*.py"))
    modules = {module_name(f) for f in files}
    return {module_name(f): imports_of(f, modules) for f in files}


def test_every_import_points_down():
    upward = set()
    for module, imports in graph().items():
        for target, line in imports:
            if layer_of(target) > layer_of(module):
                upward.add(f"{module}:{line} imports {target}")
    assert not upward, "imports that point up a layer:\n" + "\n".join(sorted(upward))


def test_no_import_cycles():
    edges: dict[str, set[str]] = defaultdict(set)
    for module, imports in graph().items():
        for target, _ in imports:
            if target != module and target != "recthinker":
                edges[module].add(target)
    cycles: list[list[str]] = []
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(edges.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append([*path[path.index(nxt) :], nxt])
            elif nxt not in state:
                visit(nxt)
        path.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


@pytest.mark.parametrize(
    ("module", "expected"),
    [("recthinker.types", 0), ("recthinker.data.atomic", 1), ("recthinker.cli", 7), ("recthinker", 0)],
)
def test_layer_of(module, expected):
    assert layer_of(module) == expected


def test_the_checker_sees_function_level_and_relative_imports(tmp_path):
    pkg = tmp_path / "recthinker" / "tools"
    pkg.mkdir(parents=True)
    src = "def f():\n    from recthinker.agent import loop\n    from ..eval import harness\n"
    (pkg / "x.py").write_text(src)
    global SRC
    old, SRC = SRC, tmp_path
    try:
        found = imports_of(pkg / "x.py", {"recthinker.agent.loop", "recthinker.eval.harness"})
    finally:
        SRC = old
    assert found == [("recthinker.agent.loop", 2), ("recthinker.eval.harness", 3)]


def undocumented_function_imports(source: str) -> list[int]:
    """The lines of the imports inside functions that carry no comment: none on their lines, none on the line
    just above, and not right after (only blank lines between) a commented import of the same block."""
    lines = source.splitlines()
    found: list[int] = []

    def commented(node: ast.stmt) -> bool:
        # An import statement holds no string literal, so a "#" on its lines starts a comment.
        own = lines[node.lineno - 1 : node.end_lineno]
        return any("#" in line for line in own) or (
            node.lineno > 1 and lines[node.lineno - 2].lstrip().startswith("#")
        )

    def visit(node: ast.AST, in_function: bool) -> None:
        for name in ("body", "orelse", "finalbody"):
            block = getattr(node, name, None)
            if in_function and isinstance(block, list):
                said = False  # the previous statement of this block is an import that says why
                for stmt in block:
                    if isinstance(stmt, ast.Import | ast.ImportFrom):
                        said = said or commented(stmt)
                        if not said:
                            found.append(stmt.lineno)
                    else:
                        said = False
        for child in ast.iter_child_nodes(node):
            visit(child, in_function or isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef))

    visit(ast.parse(source), False)
    return found


def test_every_function_level_import_says_why():
    bare = [
        f"{path.relative_to(SRC)}:{line}"
        for path in sorted(SRC.joinpath("recthinker").rglob("*.py"))
        for line in undocumented_function_imports(path.read_text(encoding="utf-8"))
    ]
    assert not bare, (
        "imports inside functions without a comment saying why (move them to the top of the module, or say "
        "why not on the line or the line above, e.g. `# heavy: torch`):\n" + "\n".join(bare)
    )


def test_the_why_checker():
    source = (
        "import os\n"  # module level: needs no comment
        "def f():\n"
        "    import torch  # heavy: torch\n"
        "    from trl import SFTConfig\n"  # shares the comment above
        "\n"
        "    from recthinker import x\n"  # still the same block of imports
        "    y = 1\n"
        "    import json\n"  # 8: after code, bare
        "    # heavy: transformers\n"
        "    from transformers import (\n"
        "        AutoTokenizer,\n"
        "    )\n"
        "    if y:\n"
        "        from recthinker import z\n"  # 14: nested block, bare
        "    def g():\n"
        "        from recthinker import (  # looked up at call time\n"
        "            w,\n"
        "        )\n"
        "        import numpy\n"
        "class C:\n"
        "    import re\n"  # a class body is not a function
        "    def m(self):\n"
        "        import gc\n"  # 23: bare
    )
    assert undocumented_function_imports(source) == [8, 14, 23]
