"""End to end: the real dvc.yaml in a fresh temporary git + DVC repository, with a real MLflow store."""

from __future__ import annotations

import csv
import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
import yaml
from PIL import Image

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))  # one way to copy the project: the benchmarks' helper
from project_copy import make_project as copy_project  # noqa: E402

GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com",
           "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.com"}


def _env() -> dict:
    env = {**os.environ, **GIT_ENV}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("MLFLOW_TRACKING_URI", None)
    env.pop("DVC_ROOT", None)
    return env


def sh(*args: str, cwd: Path, check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(list(args), cwd=cwd, capture_output=True, text=True, env=_env())
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-4000:]}\n{proc.stderr[-4000:]}")
    return proc


def make_project(root: Path, **overrides) -> Path:
    """A fresh git + DVC repository holding the project's pipeline files and ``src/`` (a stage dep),
    made as the benchmarks make theirs; ``overrides`` set params, ``__`` between levels (resize__width=64)."""
    root.mkdir(parents=True)
    copy_project(root, {key.replace("__", "."): value for key, value in overrides.items()}, _env())
    return root


def mlflow_runs(root: Path) -> list[dict]:
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


@pytest.fixture(scope="module")
def project(tmp_path_factory) -> Path:
    """The default pipeline reproduced once (shared by the tests of this module, in order)."""
    root = make_project(tmp_path_factory.mktemp("e2e") / "project")
    sh("dvc", "repro", cwd=root)
    return root


def test_repro_produces_every_output(project):
    stripped = list((project / "data" / "stripped").rglob("*.png"))
    assert stripped and not [p for p in stripped if "_mask" in p.name]
    resized = list((project / "data" / "resized").rglob("*.png"))
    assert len(resized) == len(stripped) == 120
    assert {Image.open(p).size for p in resized} == {(190, 190)}
    with open(project / "data" / "manifests" / "augmented.csv", newline="") as fh:
        manifest = list(csv.DictReader(fh))
    train_counts = Counter(row["class"] for row in manifest if row["split"] == "train")
    assert len(set(train_counts.values())) == 1, train_counts
    metrics = json.loads((project / "metrics.json").read_text())
    assert set(metrics) == {"train", "test"}
    for name in ("contingency.png", "scatter.png", "thumbnails.png"):
        assert (project / "plots" / name).stat().st_size > 1000


def test_outputs_are_linked_to_the_dvc_cache_and_unchanged_files_stored_once(project):
    """.dvc/config's cache.type (hardlink,copy) makes DVC hard-link a new output file into its cache
    instead of copying it, and protect it read-only; strip_masks and augment link the files they pass
    on unchanged. So a resized image, its augmented original and its cache object are one file, and
    so are a stripped image and its cache object."""
    assert "type = hardlink,copy" in (project / ".dvc" / "config").read_text()

    def cached(path: Path) -> Path:
        md5 = hashlib.md5(path.read_bytes()).hexdigest()
        return project / ".dvc" / "cache" / "files" / "md5" / md5[:2] / md5[2:]

    rel = Path("benign") / "benign (1).png"
    resized, augmented = project / "data" / "resized" / rel, project / "data" / "augmented" / rel
    assert resized.stat().st_ino == augmented.stat().st_ino == cached(resized).stat().st_ino
    stripped = project / "data" / "stripped" / rel
    assert stripped.stat().st_ino == cached(stripped).stat().st_ino
    for path in (resized, stripped):
        assert path.stat().st_mode & 0o222 == 0  # DVC protects linked files: nothing edits the cache in place
    features = project / "data" / "features" / "features.npy"
    assert features.stat().st_ino == cached(features).stat().st_ino


def test_one_mlflow_run_per_execution_and_noop_repro(project):
    runs = mlflow_runs(project)
    assert len(runs) == 1
    run = runs[0]
    metrics = json.loads((project / "metrics.json").read_text())
    assert run["metrics"]["train_ari"] == pytest.approx(metrics["train"]["ari"])
    assert run["metrics"]["test_ari"] == pytest.approx(metrics["test"]["ari"])
    assert run["params"]["train.kmeans.n_clusters"] == "3"
    assert run["params"]["data.source"] == "data/synthetic"
    head = sh("git", "rev-parse", "HEAD", cwd=project).stdout.strip()
    assert run["tags"]["git_commit"] == head
    lock = yaml.safe_load((project / "dvc.lock").read_text())
    raw_hash = next(o["md5"] for o in lock["stages"]["ingest"]["outs"] if o["path"] == "data/raw")
    assert run["tags"]["data.ingest.data/raw"] == raw_hash

    again = sh("dvc", "repro", cwd=project)
    assert "didn't change, skipping" in again.stdout
    assert "Running stage" not in again.stdout
    assert len(mlflow_runs(project)) == 1
    assert "Data and pipelines are up to date" in sh("dvc", "status", cwd=project).stdout


def test_metrics_and_plots_show(project):
    shown = sh("dvc", "metrics", "show", "--json", cwd=project).stdout
    assert '"ari"' in shown
    out = sh("dvc", "plots", "show", "-o", str(project / "dvc_plots"), cwd=project)
    assert (project / "dvc_plots" / "index.html").exists(), out.stdout


def test_changing_augment_reruns_only_from_augment(project):
    dry = sh("dvc", "repro", "--dry", cwd=project, check=False)
    assert dry.returncode == 0
    params = yaml.safe_load((project / "params.yaml").read_text())
    params["augment"]["seed"] = 1
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    status = sh("dvc", "status", cwd=project).stdout
    changed = {line.strip().rstrip(":") for line in status.splitlines() if line and not line.startswith((" ", "\t"))}
    assert "augment" in changed
    assert not {"synthesize", "ingest", "strip_masks", "resize", "split"} & changed, status
    params["augment"]["seed"] = 0
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    assert "up to date" in sh("dvc", "status", cwd=project).stdout


def test_exp_run_in_workspace_and_temp_each_log_one_run(project):
    sh("git", "add", "-A", cwd=project)
    sh("git", "commit", "-qm", "reproduced", cwd=project)
    before = len(mlflow_runs(project))
    sh("dvc", "exp", "run", "-n", "k4", "-S", "train.kmeans.n_clusters=4", cwd=project)
    sh("dvc", "exp", "run", "--temp", "-n", "pca20", "-S", "train.pca.n_components=20", cwd=project)
    runs = mlflow_runs(project)
    assert len(runs) == before + 2
    by_exp = {r["tags"].get("dvc_exp_name"): r for r in runs}
    assert by_exp["k4"]["params"]["train.kmeans.n_clusters"] == "4"
    assert by_exp["k4"]["metrics"]["train_n_clusters_found"] == 4
    assert by_exp["pca20"]["params"]["train.pca.n_components"] == "20"
    # the --temp run ran in a copy under .dvc/tmp but logged to this project's store
    assert not list((project / ".dvc" / "tmp").rglob("mlflow.db"))
    exps = sh("dvc", "exp", "show", "--json", cwd=project).stdout
    assert "k4" in exps and "pca20" in exps


def test_external_source_change_is_detected(tmp_path, busi_sample):
    source = tmp_path / "dataset"
    shutil.copytree(busi_sample, source)
    root = make_project(tmp_path / "project", data__source=str(source), resize__width=64, resize__height=64)
    sh("dvc", "repro", "strip_masks", cwd=root)
    report = json.loads((root / "reports" / "strip_masks.json").read_text())
    assert report["n_images"] == 63 and report["n_masks"] == 68
    assert not [p for p in (root / "data" / "stripped").rglob("*") if "_mask" in p.name]
    assert "up to date" in sh("dvc", "status", "ingest", cwd=root).stdout
    first = next((source / "benign").glob("benign (1).png"))
    Image.open(first).rotate(90).save(first)
    status = sh("dvc", "status", "ingest", cwd=root).stdout
    assert "ingest" in status and "modified" in status
