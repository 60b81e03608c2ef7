"""``masque/`` is the sans-I/O core: it must not do I/O or lean on the fast path."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import masque

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "asyncio",
    "socket",
    "ssl",
    "selectors",
    "_fastpath",
    "aioquic",
    "uvloop",
    "relay",
    "client",
    "netio",
    "subprocess",
    "threading",
}


def test_no_module_of_masque_imports_io_or_our_other_packages() -> None:
    for info in pkgutil.iter_modules(masque.__path__):
        source = (ROOT / "masque" / f"{info.name}.py").read_text()
        for node in ast.walk(ast.parse(source)):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            for name in names:
                assert name.split(".")[0] not in FORBIDDEN, f"masque/{info.name}.py imports {name}"


def test_importing_all_of_masque_loads_no_io_module() -> None:
    # A fresh interpreter: transitive imports count too.
    modules = [f"masque.{info.name}" for info in pkgutil.iter_modules(masque.__path__)]
    code = (
        "import sys\n"
        + "".join(f"import {m}\n" for m in modules)
        + "print(','.join(sorted(n for n in ('asyncio','socket','ssl','_fastpath') "
        "if n in sys.modules)))"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == ""


def test_mypy_strict_passes_on_masque() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "masque"],
        capture_output=True,
        text=True,
        cwd=ROOT,
    )
    assert result.returncode == 0, result.stdout + result.stderr
