"""The package's layers import only downwards: nothing below ``engine/`` imports ``engine`` or ``cli``, and nothing
outside ``cli/`` imports ``cli``.

Layers, bottom up: ``config``, ``dotted``, ``errors``, ``fileio``; ``augment``, ``data``, ``models``, ``losses``,
``methods``, ``evaluation``; ``engine``; ``reports``; ``cli``. Every import statement counts, including imports
inside functions and under ``if TYPE_CHECKING:`` (a typing ``Protocol`` is the way to name an upper layer's type).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import udavae

PACKAGE = Path(udavae.__file__).parent
#: Modules and packages below the engine.
LOWER = (
    "config.py",
    "dotted.py",
    "errors.py",
    "fileio.py",
    "layout.py",
    "augment",
    "data",
    "models",
    "losses",
    "methods",
    "evaluation",
)


def _module_name(path: Path, package_dir: Path) -> str:
    parts = path.relative_to(package_dir.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, package_dir: Path = PACKAGE) -> set[str]:
    """Absolute names of every module ``path`` imports, anywhere in the file (relative imports resolved).

    ``package_dir``: the ``udavae`` folder ``path`` lies in (it names the modules of relative imports).
    """
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    name = _module_name(path, package_dir)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)  # ``from udavae import engine``
        elif (
            isinstance(node, ast.Call)
            and isinstance(node.func, ast.Attribute)
            and node.func.attr == "import_module"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(str(node.args[0].value))  # importlib.import_module("udavae.engine...")
    return names


def _files(*where: str) -> list[Path]:
    out: list[Path] = []
    for w in where:
        p = PACKAGE / w
        out += sorted(p.rglob("*.py")) if p.is_dir() else [p]
    return out


def _hits(files: list[Path], forbidden: tuple[str, ...]) -> list[str]:
    return [
        f"{f.relative_to(PACKAGE.parent)} imports {m}"
        for f in files
        for m in sorted(imported_modules(f))
        if any(m == bad or m.startswith(bad + ".") for bad in forbidden)
    ]


def test_the_parser_sees_every_kind_of_import(tmp_path: Path) -> None:
    """The check itself: top-level, in-function, relative, ``from udavae import x`` and TYPE_CHECKING imports."""
    pkg = tmp_path / "udavae" / "methods"
    pkg.mkdir(parents=True)
    f = pkg / "probe.py"
    f.write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from udavae.cli import x\n"
        "def g():\n    import udavae.engine.trainer\n    from ..engine import runtime\n"
        "from udavae import engine\n",
        encoding="utf-8",
    )
    names = imported_modules(f, tmp_path / "udavae")
    assert {"udavae.cli", "udavae.engine.trainer", "udavae.engine", "udavae.engine.runtime"} <= names


@pytest.mark.parametrize("layer", LOWER)
def test_lower_layers_import_neither_engine_nor_cli(layer: str) -> None:
    assert _files(layer), layer
    assert _hits(_files(layer), ("udavae.engine", "udavae.cli")) == []


def test_only_the_cli_imports_the_cli() -> None:
    outside = [
        f for f in PACKAGE.rglob("*.py") if "cli" not in f.relative_to(PACKAGE).parts and f.name != "__main__.py"
    ]  # ``python -m udavae`` is the CLI's entry point
    assert outside
    assert _hits(outside, ("udavae.cli",)) == []
