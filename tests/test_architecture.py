"""The package's shape: the core never imports the outer layer, and no module is over 500 lines.

Core and outer layer (docs/architecture.md): the outer layer is the command line (``cli``, ``commands/``), the
search (``search/``), the demo (``app/``), the VBench runner (``quality/vbench*``) and the bundled model's training
and evaluation scripts (``tiny_model.train`` / ``evaluate`` / ``analysis``). Everything else in ``vdit_accel`` is the
core. Each module is parsed with :mod:`ast`; every ``import`` counts, including lazy ones inside functions, and a
string literal naming an outer module (``importlib.import_module("vdit_accel.search...")``) counts too.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "vdit_accel"
MAX_LINES = 500

# Dotted prefixes of the outer layer; a module is outer when its name equals one of them or lies below one.
OUTER = (
    "vdit_accel.cli",
    "vdit_accel.commands",
    "vdit_accel.search",
    "vdit_accel.app",
    "vdit_accel.quality.vbench_runner",
    "vdit_accel.tiny_model.train",
    "vdit_accel.tiny_model.evaluate",
    "vdit_accel.tiny_model.analysis",
)


def is_outer(module: str) -> bool:
    return any(module == p or module.startswith(p + ".") for p in OUTER)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def package_modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE_DIR.rglob("*.py"))}


def imported_modules(source: str, name: str, is_package: bool, known: set[str]) -> set[str]:
    """Every ``vdit_accel`` module that ``source`` (the module ``name``) imports, anywhere in its body.

    ``from X import y`` counts as an import of ``X.y`` when that is a module, else of ``X``.
    """
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            for a in node.names:
                sub = f"{target}.{a.name}"
                found.add(sub if sub in known else target)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in known:
            found.add(node.value)  # importlib.import_module("vdit_accel...."), a registry of module names
    return {m for m in found if m == "vdit_accel" or m.startswith("vdit_accel.")}


def import_edges() -> set[tuple[str, str]]:
    modules = package_modules()
    known = set(modules)
    edges = set()
    for name, path in modules.items():
        for target in imported_modules(path.read_text(encoding="utf-8"), name, path.name == "__init__.py", known):
            edges.add((name, target))
    return edges


def test_import_scanner_sees_lazy_relative_and_string_imports():
    """The scanner itself: it must catch the forms a core module could use to reach outward."""
    known = {"vdit_accel.search", "vdit_accel.search.shipped", "vdit_accel.commands.loading", "vdit_accel.api"}
    src = (
        "import importlib\n"
        "def f():\n"
        "    from .search.shipped import shipped_schedule_for\n"
        "def g():\n"
        "    from .commands import loading\n"
        "def h():\n"
        "    return importlib.import_module('vdit_accel.search')\n"
    )
    assert imported_modules(src, "vdit_accel.api", False, known) == {
        "vdit_accel.search.shipped", "vdit_accel.commands.loading", "vdit_accel.search"}
    assert imported_modules("from ..search import engine\n", "vdit_accel.methods.x", False,
                            known | {"vdit_accel.search.engine"}) == {"vdit_accel.search.engine"}


def test_the_graph_is_the_real_one():
    """Guard against a scan that silently finds nothing: known edges of the package are there."""
    edges = import_edges()
    assert ("vdit_accel", "vdit_accel.api") in edges
    assert ("vdit_accel.cli", "vdit_accel.commands.generate") in edges  # through the string registry
    assert any(a.startswith("vdit_accel.commands.") and b.startswith("vdit_accel.search.") for a, b in edges)


def test_core_never_imports_the_outer_layer():
    edges = import_edges()
    bad = sorted((a, b) for a, b in edges if not is_outer(a) and is_outer(b))
    assert not bad, ("core modules import the outer layer (move the code into the core, or invert the dependency): "
                     + "; ".join(f"{a} -> {b}" for a, b in bad))


def test_no_module_over_500_lines():
    sizes = {name: len(path.read_text(encoding="utf-8").splitlines()) for name, path in package_modules().items()}
    big = sorted((n, s) for n, s in sizes.items() if s > MAX_LINES)
    assert not big, f"modules over {MAX_LINES} lines (split them): " + ", ".join(f"{n} ({s})" for n, s in big)


@pytest.mark.parametrize("module", ["vdit_accel.commands.compare", "vdit_accel.commands.loading",
                                    "vdit_accel.commands.search", "vdit_accel.search.engine", "vdit_accel.app"])
def test_outer_examples_are_classified_outer(module):
    assert is_outer(module)


@pytest.mark.parametrize("module", ["vdit_accel", "vdit_accel.api", "vdit_accel.schedule", "vdit_accel.methods",
                                    "vdit_accel.testing", "vdit_accel.tiny_model", "vdit_accel.quality.metrics"])
def test_core_examples_are_classified_core(module):
    assert not is_outer(module)
