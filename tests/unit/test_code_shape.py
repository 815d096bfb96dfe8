"""Modules and functions stay readable (STYLE.md): no module of services/ or rlctl/ over 450 lines, no function
over 60. Generated protobuf code is not ours to shape."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES, MAX_FUNCTION_LINES = 450, 60


def sources() -> list[Path]:
    return sorted(p for p in [*ROOT.glob("services/**/*.py"), *ROOT.glob("rlctl/**/*.py")]
                  if "services/common/pb" not in p.as_posix())


def test_no_module_is_over_450_lines():
    long = {str(p.relative_to(ROOT)): n for p in sources() if (n := p.read_text().count("\n")) > MAX_MODULE_LINES}
    assert long == {}


def test_no_function_is_over_60_lines():
    long = {}
    for path in sources():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                n = (node.end_lineno or node.lineno) - node.lineno + 1
                if n > MAX_FUNCTION_LINES:
                    long[f"{path.relative_to(ROOT)}:{node.lineno} {node.name}"] = n
    assert long == {}
