"""Imports run one way (docs/architecture.md, "The layers"): every import in every module of ours,
lazy ones inside functions included, may only reach the layers below its own; runtime/ imports
nothing of ours and no torch; no router imports another router."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
ALLOWED = {
    "runtime": set(),
    "training": {"runtime"},
    "export": {"training", "runtime"},
    "index": {"runtime"},
    "serving": {"index", "runtime"},
    "embedserve": {"runtime", "training", "export", "index", "serving"},
}
TORCH = {"torch", "torchvision"}


def imports(path: Path) -> list[tuple[int, str]]:
    """(line, module) of every absolute import in `path`, wherever it stands in the file."""
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, f"{path}:{node.lineno}: relative import; name the package"
            found.append((node.lineno, node.module))
    return found


def modules(package: str) -> list[Path]:
    return sorted((ROOT / package).rglob("*.py"))


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_a_package_imports_only_the_layers_below_it(package: str):
    bad = []
    for path in modules(package):
        for line, name in imports(path):
            top = name.split(".")[0]
            if top in ALLOWED and top != package and top not in ALLOWED[package]:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name}")
            if package == "runtime" and top in TORCH:
                bad.append(f"{path.relative_to(ROOT)}:{line}: {name} (runtime/ is torch-free)")
    assert not bad, f"{package} may import only {sorted(ALLOWED[package]) or 'nothing of ours'}:\n" + "\n".join(bad)


def test_no_router_imports_another_router():
    bad = [f"{path.relative_to(ROOT)}:{line}: {name}"
           for path in modules("serving/routers") for line, name in imports(path)
           if name.startswith("serving.routers")]
    assert not bad, "shared request code belongs in serving/ (requests.py, embedding.py), not in a router:\n" + "\n".join(bad)


def test_the_preprocessing_module_imports_nothing_of_ours():
    # export copies it verbatim into the Triton Python backend, where no package of ours exists
    ours = [name for _, name in imports(ROOT / "runtime/preprocessing.py") if name.split(".")[0] in ALLOWED]
    assert ours == []


def test_the_check_sees_lazy_imports(tmp_path: Path):
    path = tmp_path / "lazy.py"
    path.write_text("def f():\n    import torch\n    from serving.app import create_app\n")
    assert imports(path) == [(2, "torch"), (3, "serving.app")]
