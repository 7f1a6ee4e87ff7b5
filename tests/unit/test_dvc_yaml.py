"""dvc.yaml agrees with the code by construction: every source file a stage runs is among its deps,
it lists exactly the parameters the stage declares (and may read), and no value reaches a command line."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest
import yaml

from imgclust.cli import COMMANDS
from support.paths import REPO

SRC = REPO / "src"
DVC_YAML = yaml.safe_load((REPO / "dvc.yaml").read_text())
STAGES = DVC_YAML["stages"]


def module_file(module: str) -> Path | None:
    """The source file of ``imgclust.x.y`` (a module or a package's __init__), or None."""
    base = SRC.joinpath(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def imported_modules(path: Path) -> set[str]:
    """The imgclust modules ``path`` imports anywhere (module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("imgclust"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("imgclust"):
            found.add(node.module)
            # `from imgclust.core import plots` imports the submodule imgclust.core.plots
            found.update(
                f"{node.module}.{alias.name}" for alias in node.names if module_file(f"{node.module}.{alias.name}")
            )
    return found


def import_closure(module: str) -> set[Path]:
    """Every source file that running ``module`` may execute: its imports, theirs, and the
    __init__.py of every package on the way."""
    seen: set[str] = set()
    todo = [module]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # parent packages run first
        path = module_file(name)
        if path is not None:
            todo += imported_modules(path)
    return {path for name in seen if (path := module_file(name))}


def covered(path: Path, deps: list[str]) -> bool:
    return any(path == REPO / dep or (REPO / dep) in path.parents for dep in deps)


def stage_module(stage: str) -> str:
    return f"imgclust.stages.{stage}"


def test_every_stage_has_a_module_named_like_it_and_its_command_runs_that_module():
    for stage, spec in STAGES.items():
        command = spec["cmd"].split()[1]
        assert COMMANDS[command] == stage_module(stage), (stage, command)
    assert {p.stem for p in (SRC / "imgclust" / "stages").glob("*.py")} - {"__init__"} == set(STAGES)


@pytest.mark.parametrize("stage", list(STAGES))
def test_deps_cover_every_source_file_the_stage_runs(stage):
    deps = STAGES[stage]["deps"]
    closure = import_closure(stage_module(stage))
    missing = sorted(str(p.relative_to(REPO)) for p in closure if not covered(p, deps))
    assert not missing, f"dvc.yaml stage {stage} runs these files but does not depend on them: {missing}"


def test_the_closure_finds_what_it_must():
    """The checker itself: it follows function-level and `from package import module` imports."""
    closure = {str(p.relative_to(SRC)) for p in import_closure("imgclust.stages.evaluate")}
    assert {
        "imgclust/stages/evaluate.py",
        "imgclust/core/plots.py",
        "imgclust/core/metrics.py",
        "imgclust/tracking/runs.py",
        "imgclust/tracking/image_model.py",
        "imgclust/core/scaling.py",
        "imgclust/config.py",
        "imgclust/errors.py",
        "imgclust/__init__.py",
    } <= closure


@pytest.mark.parametrize("stage", list(STAGES))
def test_params_are_exactly_the_keys_the_stage_declares(stage):
    declared = importlib.import_module(stage_module(stage)).PARAMS
    assert sorted(STAGES[stage].get("params", [])) == sorted(declared)


@pytest.mark.parametrize("stage", list(STAGES))
def test_no_parameter_value_is_rendered_into_a_command(stage):
    assert "${" not in STAGES[stage]["cmd"]
