"""Fingerprints of a model's code for fit caches: what runs counts, comments and docstrings do not."""

from __future__ import annotations

import ast
import hashlib
from pathlib import Path


def code_fingerprint(source: str | bytes) -> str:
    r"""sha256 of Python source code as code: its syntax tree without docstrings, so comments, docstrings
    and formatting do not count, while any change to what runs does.

    >>> code_fingerprint('def f(x):\n    "Doc."\n    return x + 1  # one\n') == code_fingerprint(
    ...     'def f(x):\n    "Other doc."\n\n    return x+1\n')
    True
    >>> code_fingerprint("def f(x):\n    return x + 1\n") == code_fingerprint("def f(x):\n    return x + 2\n")
    False
    """
    tree = ast.parse(source)
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if (
            isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and body
            and isinstance(body[0], ast.Expr)
            and isinstance(body[0].value, ast.Constant)
            and isinstance(body[0].value.value, str)
        ):
            node.body = body[1:] or [ast.Pass()]
    return hashlib.sha256(ast.dump(tree, annotate_fields=False).encode()).hexdigest()


def source_fingerprint(module_file: str | Path) -> str:
    """`code_fingerprint` of a module's file (editing its comments or docstrings does not force a refit)."""
    return code_fingerprint(Path(module_file).read_bytes())
