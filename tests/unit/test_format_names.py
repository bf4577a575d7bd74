"""Format names stay inside ``lazyfs/formats/``: everything else learns what
a layer format can do from its ``LayerFormat`` object, so adding a format
never means hunting for comparisons with its name."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import lazyfs
from lazyfs.formats import FORMATS

ROOT = Path(lazyfs.__file__).parent
NAMES = {"tar", "gzip", "estargz", "zstd", "zstd:chunked"}
MODULES = {"tar", "gzip", "estargz", "zstd", "zstdchunked"}
EXEMPT = ("formats", "testing")
"""The formats themselves, and test helpers that build layers of each format."""


def _modules() -> list[Path]:
    return sorted(p for p in ROOT.rglob("*.py")
                  if p.relative_to(ROOT).parts[0] not in EXEMPT)


def _dotted(path: Path) -> list[str]:
    parts = ["lazyfs", *path.relative_to(ROOT).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _absolute(node: ast.ImportFrom, path: Path) -> str:
    if not node.level:
        return node.module or ""
    package = _dotted(path)
    if path.name != "__init__.py":
        package = package[:-1]
    base = package[:len(package) - node.level + 1]
    return ".".join(base + ([node.module] if node.module else []))


def _format_imports(tree: ast.AST, path: Path) -> list[str]:
    """Imports of a format module, as the dotted names they import."""
    banned = {f"lazyfs.formats.{m}" for m in MODULES}
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [a.name for a in node.names
                    if any(a.name == b or a.name.startswith(b + ".") for b in banned)]
        elif isinstance(node, ast.ImportFrom):
            module = _absolute(node, path)
            if any(module == b or module.startswith(b + ".") for b in banned):
                out.append(module)
            elif module == "lazyfs.formats":
                out += [f"{module}.{a.name}" for a in node.names if a.name in MODULES]
    return out


def _name_constants(tree: ast.AST) -> list[tuple[int, str]]:
    return [(node.lineno, node.value) for node in ast.walk(tree)
            if isinstance(node, ast.Constant) and isinstance(node.value, str)
            and node.value in NAMES]


def test_the_names_are_the_formats():
    assert {f.name for f in FORMATS} == NAMES
    assert {f._module for f in FORMATS} == MODULES


@pytest.mark.parametrize("path", _modules(), ids=lambda p: str(p.relative_to(ROOT)))
def test_no_format_names_outside_formats(path: Path):
    tree = ast.parse(path.read_text(), str(path))
    assert _format_imports(tree, path) == [], "use LayerFormat (lazyfs.formats) instead"
    assert _name_constants(tree) == [], "compare LayerFormat flags, not format names"


def test_the_check_sees_what_it_forbids():
    path = ROOT / "read" / "example.py"
    tree = ast.parse("from ..formats.gzip import GzipReader\n"
                     "from ..formats import zstd, LayerTable\n"
                     "import lazyfs.formats.estargz\n"
                     "if fmt == 'zstd:chunked': pass\n")
    assert _format_imports(tree, path) == ["lazyfs.formats.gzip", "lazyfs.formats.zstd",
                                           "lazyfs.formats.estargz"]
    assert _name_constants(tree) == [(4, "zstd:chunked")]
