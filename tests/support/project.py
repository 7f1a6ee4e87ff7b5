"""The one project factory: a fresh git + DVC repository holding this project's pipeline, and the
commands run in it as a user would (dvc, imgclust, git) with a clean environment."""

from __future__ import annotations

import hashlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import yaml

from support.paths import REPO

GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
}
PROJECT_FILES = (
    "dvc.yaml",
    "params.yaml",
    ".dvcignore",
    ".gitignore",
    ".dvc/config",
    ".dvc/.gitignore",
    ".dvc/plots/offline.html",  # dvc plots show, offline
)


def env(**extra: str) -> dict:
    """This interpreter's tools first on PATH; no variable that would log or resolve elsewhere."""
    result = {**os.environ, **GIT_ENV}
    result["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{result.get('PATH', '')}"
    # IMGCLUST_CACHE_DIR: a project keeps its own per-image cache (.imgclust/cache), as a user's does
    for name in ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV", "IMGCLUST_CACHE_DIR"):
        result.pop(name, None)
    return {**result, **extra}


def sh(*args: str, cwd: Path, check: bool = True, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=env(**(extra_env or {})))
    if check and proc.returncode != 0:
        raise AssertionError(
            f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}"
        )
    return proc


def set_params(params: dict, overrides: dict) -> dict:
    """``params`` with dotted ``overrides`` ({"resize.width": 64}) set in place."""
    for dotted, value in overrides.items():
        node = params
        *parents, leaf = dotted.split(".")
        for key in parents:
            node = node.setdefault(key, {})
        node[leaf] = value
    return params


def write_params(folder: Path, **overrides) -> Path:
    """The project's params.yaml in ``folder`` with ``overrides`` (``__`` between levels:
    resize__width=64); what a stage command run in ``folder`` reads."""
    folder.mkdir(parents=True, exist_ok=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    set_params(params, {key.replace("__", "."): value for key, value in overrides.items()})
    path = folder / "params.yaml"
    path.write_text(yaml.safe_dump(params, sort_keys=False))
    return path


def make_project(root: Path, **overrides) -> Path:
    """A fresh git + DVC repository holding the project's pipeline files and ``src/`` (stage deps),
    committed; ``overrides`` set params, ``__`` between levels (resize__width=64)."""
    root.mkdir(parents=True)
    for name in PROJECT_FILES:
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(REPO / name, root / name)
    shutil.copytree(REPO / "src" / "imgclust", root / "src" / "imgclust", ignore=shutil.ignore_patterns("__pycache__"))
    write_params(root, **overrides)
    for cmd in (["git", "init", "-q"], ["git", "add", "-A"], ["git", "commit", "-qm", "project"]):
        subprocess.run(cmd, cwd=root, env=env(), check=True, capture_output=True)
    return root


def mlflow_runs(root: Path) -> list[dict]:
    """Every active run of the project's local store, read straight from its SQLite file."""
    db = root / "mlruns" / "mlflow.db"
    if not db.exists():
        return []
    with sqlite3.connect(db) as con:
        runs = con.execute("select run_uuid from runs where lifecycle_stage='active'").fetchall()
        result = []
        for (run_id,) in runs:
            tags = dict(con.execute("select key, value from tags where run_uuid=?", (run_id,)).fetchall())
            metrics = dict(con.execute("select key, value from latest_metrics where run_uuid=?", (run_id,)).fetchall())
            params = dict(con.execute("select key, value from params where run_uuid=?", (run_id,)).fetchall())
            result.append({"run_id": run_id, "tags": tags, "metrics": metrics, "params": params})
    return result


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every regular file under ``root`` (links are not followed)."""
    return {
        p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }
