"""The package's import structure: data flows one way, and ``import tumls_qp`` stays light.

Every ``import`` of a tumls_qp module in tumls_qp/ (at the top of a file or inside a
function) is read with :mod:`ast` and must point to a module of the same or an earlier
layer below. A new module needs a line in ``LAYERS``: put it where its stage runs.
"""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "tumls_qp"

#: Layers in the order the data flows; a module may import modules of its own layer or an earlier one.
#: A prefix names a package and every module in it.
LAYERS: tuple[tuple[str, ...], ...] = (
    ("tumls_qp", "tumls_qp.errors", "tumls_qp.config", "tumls_qp.files", "tumls_qp.classes", "tumls_qp.provenance",
     "tumls_qp.stains", "tumls_qp.cpu"),
    ("tumls_qp.slide", "tumls_qp.testing"),
    ("tumls_qp.tissue", "tumls_qp.tissue.tiles"),
    ("tumls_qp.tissue.embeddings", "tumls_qp.tissue.cache"),
    ("tumls_qp.tissue.clusters",),
    ("tumls_qp.tissue.representatives",),
    ("tumls_qp.cells", "tumls_qp.interactive"),
    ("tumls_qp.outputs",),
    ("tumls_qp.pipeline", "tumls_qp.labelling", "tumls_qp.evaluation", "tumls_qp.dask_engine"),
    ("tumls_qp.cli", "tumls_qp.server"),
)
#: Algorithm modules: arrays in, arrays out; they never import the outputs.
ALGORITHMS = ("tumls_qp.tissue", "tumls_qp.cells", "tumls_qp.interactive")


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _in(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def _layer(module: str) -> int:
    # The longest matching prefix wins (tumls_qp.tissue.tiles before tumls_qp.tissue).
    best = max(((len(p), i) for i, layer in enumerate(LAYERS) for p in layer if _in(module, p)), default=None)
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in {Path(__file__).name}")
    return best[1]


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The tumls_qp modules ``module`` imports, anywhere in the file."""
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {a.name for a in node.names if _in(a.name, "tumls_qp")}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if not _in(target, "tumls_qp"):
                continue
            for alias in node.names:  # `from . import x` imports the module x when there is one
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(module)
    return found


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    modules = _modules()
    return {m: _imports(m, p, set(modules)) for m, p in modules.items()}


def test_every_module_has_a_layer(graph):
    for module in graph:
        _layer(module)


def test_imports_point_upstream_only(graph):
    wrong = [f"{m} (layer {_layer(m)}) imports {t} (layer {_layer(t)})"
             for m, targets in sorted(graph.items()) for t in sorted(targets) if _layer(t) > _layer(m)]
    assert wrong == [], "\n".join(wrong)


def test_no_algorithm_module_imports_the_outputs(graph):
    wrong = [f"{m} imports {t}" for m, targets in sorted(graph.items()) if any(_in(m, a) for a in ALGORITHMS)
             for t in sorted(targets) if _in(t, "tumls_qp.outputs")]
    assert wrong == [], "\n".join(wrong)


def test_no_import_cycle(graph):
    state: dict[str, int] = {}  # 1: on the current path, 2: done

    def visit(module: str, path: list[str]) -> None:
        state[module] = 1
        for target in sorted(graph.get(module, ())):
            if state.get(target) == 1:
                cycle = path[path.index(target):] + [target]
                raise AssertionError("import cycle: " + " -> ".join(cycle))
            if target not in state:
                visit(target, path + [target])
        state[module] = 2

    for module in sorted(graph):
        if module not in state:
            visit(module, [module])


def test_the_checker_sees_what_it_must(graph):
    """A known edge of each kind, so that the tests above cannot pass by reading nothing."""
    assert "tumls_qp.outputs.run_folder" in graph["tumls_qp.pipeline"]  # top-level, relative
    assert "tumls_qp.tissue.embeddings" in graph["tumls_qp.pipeline"]  # inside a function
    assert "tumls_qp.outputs._report_figures" in graph["tumls_qp.outputs.run_folder"]  # `from . import x`
    assert "tumls_qp" in graph["tumls_qp.outputs.run_folder"]  # `from .. import __version__`
    assert _layer("tumls_qp.tissue.tiles") < _layer("tumls_qp.tissue.embeddings") < _layer("tumls_qp.tissue.clusters")


def test_only_the_pretrained_method_imports_timm():
    """timm (an optional extra) is imported in one module, which turns its absence into a clear error."""
    found = set()
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else \
                [node.module or ""] if isinstance(node, ast.ImportFrom) and not node.level else []
            if any(_in(n, "timm") or _in(n, "torchvision") for n in names):
                found.add(module)
    assert found == {"tumls_qp.tissue.embeddings.pretrained"}


def test_import_tumls_qp_and_the_help_are_light():
    code = ("import sys\nimport tumls_qp, tumls_qp.cli\n"
            "try:\n    tumls_qp.cli.main(['--help'])\nexcept SystemExit:\n    pass\n"
            "print([m for m in ('torch', 'paquo', 'jpype', 'reportlab', 'fastapi', 'matplotlib', 'dask', 'distributed',"
            " 'timm') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "[]"
