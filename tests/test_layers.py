"""The import contract of DESIGN.md: capture <- engine <- app, trainers beside app. capture, engine and
app never import trainers or torch (app/bench, the developer benchmarks, measures the trainers' own
models too and may); capture never imports engine or app, and engine never imports app. Checked on
every import statement in the source, at any depth (a function-level import counts as much)."""
import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
# package -> top-level packages it must not import
FORBIDDEN = {
    "capture": {"trainers", "torch", "engine", "app"},
    "engine": {"trainers", "torch", "app"},
    "app": {"trainers", "torch"},
}
EXEMPT = ("app/bench/",)


def imported_modules(path: Path) -> list[tuple[int, str]]:
    tree = ast.parse(path.read_text(), str(path))
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.append((node.lineno, node.module))
    return found


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_layers_hold(package):
    broken = []
    for path in sorted((REPO / package).rglob("*.py")):
        rel = path.relative_to(REPO).as_posix()
        if rel.startswith(EXEMPT):
            continue
        for line, module in imported_modules(path):
            if module.split(".")[0] in FORBIDDEN[package]:
                broken.append(f"{rel}:{line} imports {module}")
    assert not broken, "imports across the layers:\n" + "\n".join(broken)


def test_the_contract_can_fail(tmp_path):
    bad = tmp_path / "bad.py"
    bad.write_text("def f():\n    from trainers.models import raw_vae\n    import torch\n")
    assert [m for _, m in imported_modules(bad)] == ["trainers.models", "torch"]


def test_the_processor_interface_does_not_import_its_implementations():
    # processor.py <- student.py, burst/fusion.py <- registry.py: no circle
    modules = [m for _, m in imported_modules(REPO / "engine" / "processor.py")]
    assert not [m for m in modules if m.startswith(("engine.student", "engine.burst", "engine.registry"))], modules
