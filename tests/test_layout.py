"""The layout the README promises, checked on the source: stage packages that do not lean on each
other, a Prefect-free ``faces_core``, flows that are wiring only, and rooms of a readable size."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO

STAGES = ("ingest", "train", "annotate")
ABOVE_STAGES = {
    "doctor.py": "the checks of `faces doctor` look at every stage's outputs",
    "sample": "draws the demo data in ingest's formats, read back with ingest's own TCS parser",
}
"""Modules of faces_core that sit above the stages, like the flows, and may import them."""
MAX_CORE_MODULE_LINES = 600
MAX_FLOWS_LINES = 1400


def _imports(path: Path) -> set[str]:
    """Every absolute module a file imports, at module level or inside functions."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names |= {f"{node.module}.{a.name}" for a in node.names}
    return names


def _core_files() -> list[Path]:
    return sorted((REPO / "faces_core").rglob("*.py"))


def _stage_of(path: Path) -> str | None:
    parts = path.relative_to(REPO / "faces_core").parts
    return parts[0] if len(parts) > 1 and parts[0] in STAGES else None


def test_no_stage_package_imports_another_stage() -> None:
    crossings = []
    for path in _core_files():
        own = _stage_of(path)
        if own is None:
            continue  # shared modules: the next test
        for name in _imports(path):
            parts = name.split(".")
            if parts[0] == "faces_core" and len(parts) > 1 and parts[1] in STAGES and parts[1] != own:
                crossings.append(f"{path.relative_to(REPO)} imports {name}")
    assert not crossings, "\n".join(crossings)


def test_shared_modules_import_no_stage_package() -> None:
    """What stages share (inference, storage, taxonomy...) sits below every stage, so no circle."""
    leaning = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _core_files()
        if _stage_of(path) is None and path.relative_to(REPO / "faces_core").parts[0] not in ABOVE_STAGES
        for name in _imports(path)
        if name.split(".")[:2] in ([["faces_core", s] for s in STAGES])
    ]
    assert not leaning, "\n".join(leaning)


def test_faces_core_never_imports_prefect_or_the_layers_above() -> None:
    above = ("prefect", "prefect_dask", "flows", "tasks", "faces_cli")
    found = [
        f"{path.relative_to(REPO)} imports {name}"
        for path in _core_files()
        for name in _imports(path)
        if name.split(".")[0] in above
    ]
    assert not found, "\n".join(found)


def test_no_faces_core_module_over_the_size_limit() -> None:
    sizes = {str(p.relative_to(REPO)): len(p.read_text().splitlines()) for p in _core_files()}
    assert not {p: n for p, n in sizes.items() if n > MAX_CORE_MODULE_LINES}


def test_flows_are_wiring_only() -> None:
    """The command line lives in faces_cli; flows/ holds the flows, deployments and params loaders."""
    total = sum(len(p.read_text().splitlines()) for p in (REPO / "flows").rglob("*.py"))
    assert total < MAX_FLOWS_LINES
    assert not any("argparse" in _imports(p) for p in (REPO / "flows").rglob("*.py"))
