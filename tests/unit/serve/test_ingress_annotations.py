"""Serve ingress routes are read by FastAPI at runtime: string annotations (PEP 563) made some
fastapi/pydantic releases take ``request: Request`` for a required query parameter (every call 422)."""

from __future__ import annotations

import ast
from pathlib import Path

EDRAY = Path(__file__).resolve().parents[3] / "edray"


def _uses_ingress(tree: ast.Module) -> bool:
    return any(isinstance(n, ast.Attribute) and n.attr == "ingress" for n in ast.walk(tree))


def _future_annotations(tree: ast.Module) -> bool:
    return any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )


def test_no_serve_ingress_module_uses_string_annotations():
    ingress_modules = []
    for path in sorted(EDRAY.rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        if _uses_ingress(tree):
            ingress_modules.append(path.name)
            assert not _future_annotations(tree), f"{path}: a Serve ingress module must not use postponed annotations"
    assert "app.py" in ingress_modules
