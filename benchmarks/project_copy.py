"""A fresh git repository holding this project's pipeline (dvc.yaml, params.yaml, .dvc/, src/),
with some parameters overridden: what the benchmarks run ``dvc repro`` in."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")


def make_project(root: Path, params: dict, env: dict) -> None:
    """Copy the pipeline into ``root``, set ``params`` (dotted keys, e.g. ``"resize.width"``), commit."""
    for name in PROJECT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "src" / "imgclust", root / "src" / "imgclust", ignore=shutil.ignore_patterns("__pycache__"))
    current = set_params(yaml.safe_load((root / "params.yaml").read_text()), params)
    (root / "params.yaml").write_text(yaml.safe_dump(current, sort_keys=False))
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)


def set_params(params: dict, overrides: dict) -> dict:
    """``params`` with dotted ``overrides`` ({"resize.width": 64}) set in place."""
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params
