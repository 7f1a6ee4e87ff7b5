"""A fresh git repository holding this project's pipeline (dvc.yaml, params.yaml, .dvc/, src/),
with some parameters overridden: what the benchmarks run ``dvc repro`` in."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
PROJECT_FILES = ("dvc.yaml", "params.yaml", ".dvcignore", ".gitignore", ".dvc/config", ".dvc/.gitignore")


def bench_env(repo: Path = REPO) -> dict:
    """The environment the benchmarks run commands in: ``repo``'s virtual environment first on PATH
    (its ``imgclust`` and ``dvc``), a git identity, unbuffered Python output (DVC's stage lines
    arrive as they happen) and no MLflow server inherited (each project gets its own store)."""
    venv_bin = repo / ".venv" / "bin" if repo != REPO else Path(sys.executable).parent
    env = {
        **os.environ,
        "PATH": f"{venv_bin}{os.pathsep}{os.environ['PATH']}",
        "PYTHONUNBUFFERED": "1",
        "GIT_AUTHOR_NAME": "bench",
        "GIT_AUTHOR_EMAIL": "bench@localhost",
        "GIT_COMMITTER_NAME": "bench",
        "GIT_COMMITTER_EMAIL": "bench@localhost",
    }
    if repo != REPO:
        env["PYTHONDONTWRITEBYTECODE"] = "1"  # another checkout is read, never written to
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV"):
        env.pop(name, None)
    return env


def make_project(root: Path, params: dict, env: dict, repo: Path = REPO) -> None:
    """Copy ``repo``'s pipeline into ``root``, set ``params`` (dotted keys, e.g. ``"resize.width"``), commit."""
    for name in PROJECT_FILES:
        if (repo / name).exists():
            (root / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(repo / name, root / name)
    shutil.copytree(repo / "src" / "imgclust", root / "src" / "imgclust", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, params, repo)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "bench"]):
        subprocess.run(cmd, cwd=root, env=env, check=True, capture_output=True)


def write_params(folder: Path, overrides: dict, repo: Path = REPO) -> None:
    """``repo``'s params.yaml with dotted ``overrides`` in ``folder``: what commands run there read."""
    folder.mkdir(parents=True, exist_ok=True)
    params = set_params(yaml.safe_load((repo / "params.yaml").read_text()), overrides)
    (folder / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))


def set_params(params: dict, overrides: dict) -> dict:
    """``params`` with dotted ``overrides`` ({"resize.width": 64}) set in place."""
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node[key]
        node[leaf] = value
    return params
