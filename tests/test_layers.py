"""The package's shape holds: imports run one way (import-linter's contracts in pyproject.toml),
an in-package import inside a function says why it is late, and a long function says why it is long.

These read the real source tree; a violation names the file, line and what to do.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parents[1] / "src" / "nomic_memory"
MAX_FUNCTION_LINES = 60


def _modules() -> list[Path]:
    return sorted(PKG.rglob("*.py"))


def _commented(lines: list[str], lineno: int) -> bool:
    """A reason is a comment on the line itself or on the line just above it."""
    return "#" in lines[lineno - 1] or lines[lineno - 2].strip().startswith("#")


def late_imports_without_reason() -> list[str]:
    out = []
    for p in _modules():
        lines = p.read_text().split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if not isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)):
                continue
            for node in ast.walk(fn):
                in_pkg = (
                    isinstance(node, ast.ImportFrom) and (node.level or (node.module or "").startswith("nomic_memory"))
                ) or (isinstance(node, ast.Import) and any(a.name.startswith("nomic_memory") for a in node.names))
                if in_pkg and not _commented(lines, node.lineno):
                    out.append(f"{p.relative_to(PKG)}:{node.lineno} ({fn.name})")
    return sorted(set(out))


def _body_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines of a function's body, its docstring left out (a docstring that explains is welcome)."""
    body = fn.body
    if (
        body
        and isinstance(body[0], ast.Expr)
        and isinstance(getattr(body[0], "value", None), ast.Constant)
        and isinstance(body[0].value.value, str)
    ):
        body = body[1:]
    if not body:
        return 0
    return body[-1].end_lineno - body[0].lineno + 1


def long_functions_without_reason() -> list[str]:
    out = []
    for p in _modules():
        lines = p.read_text().split("\n")
        for fn in ast.walk(ast.parse("\n".join(lines))):
            if isinstance(fn, (ast.FunctionDef, ast.AsyncFunctionDef)) and _body_lines(fn) > MAX_FUNCTION_LINES:
                first = min([d.lineno for d in fn.decorator_list] + [fn.lineno])
                if not lines[first - 2].strip().startswith("#"):
                    out.append(f"{p.relative_to(PKG)}:{fn.lineno} {fn.name} ({_body_lines(fn)} lines)")
    return out


def test_import_contracts_hold():
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed: it is a dev dependency (uv sync)")
    r = subprocess.run([exe, "--no-cache"], capture_output=True, text=True, cwd=PKG.parents[1], timeout=300)
    assert r.returncode == 0, r.stdout[-4000:] + r.stderr[-2000:]
    assert "BROKEN" not in r.stdout and "KEPT" in r.stdout


def test_late_in_package_imports_say_why():
    missing = late_imports_without_reason()
    assert not missing, (
        "in-package imports inside functions without a one-line reason (a comment on the line or the "
        "line above; or move them to the top of the module):\n  " + "\n  ".join(missing)
    )


def test_long_functions_say_why():
    missing = long_functions_without_reason()
    assert not missing, (
        f"functions over {MAX_FUNCTION_LINES} lines (docstring aside) without a comment above them "
        "saying why:\n  " + "\n  ".join(missing)
    )


def test_the_checks_can_fail(tmp_path, monkeypatch):
    """The two source checks find what they look for (so a green result means something)."""
    pkg = tmp_path / "nomic_memory"
    pkg.mkdir()
    body = "\n".join(f"    x{i} = {i}" for i in range(MAX_FUNCTION_LINES + 1))
    (pkg / "bad.py").write_text(f"def f():\n    from nomic_memory import errors\n{body}\n")
    monkeypatch.setattr(sys.modules[__name__], "PKG", pkg)
    assert late_imports_without_reason() == ["bad.py:2 (f)"]
    assert long_functions_without_reason() == [f"bad.py:1 f ({MAX_FUNCTION_LINES + 2} lines)"]
