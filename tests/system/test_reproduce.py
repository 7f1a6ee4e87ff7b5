"""``imgclust reproduce``: a colleague's run (made with ``dvc exp run -S``, so its parameters are not
the commit's) re-run from a fresh clone gets identical metrics and data hashes, and the errors users
meet. The pieces (parameter restoration, comparison, the work folder) are tested without git or dvc
in tests/unit/test_tracking_naming.py."""

from __future__ import annotations

import json

import pytest
import yaml

from imgclust.tools import reproduce
from imgclust.tracking import naming, runs
from support.project import make_project, mlflow_runs, sh

SMALL = {"synthesize__n_images": 36, "resize__width": 48, "resize__height": 48}


@pytest.fixture(scope="module")
def colleague(tmp_path_factory) -> dict:
    """A project whose only MLflow run comes from ``dvc exp run -S train.kmeans.n_clusters=4``."""
    root = make_project(tmp_path_factory.mktemp("reproduce") / "project", **SMALL)
    sh("dvc", "exp", "run", "-n", "k4", "-S", "train.kmeans.n_clusters=4", cwd=root)
    (run,) = mlflow_runs(root)
    assert run["tags"]["dvc_exp_name"] == "k4" and run["params"]["train.kmeans.n_clusters"] == "4"
    commit = sh("git", "rev-parse", "HEAD", cwd=root).stdout.strip()
    committed = yaml.safe_load(sh("git", "show", f"{commit}:params.yaml", cwd=root).stdout)
    assert committed["train"]["kmeans"]["n_clusters"] == 3  # the run's params are not the commit's
    return {"root": root, "run": run, "commit": commit}


@pytest.mark.slow
def test_reproduce_an_exp_run_gets_identical_metrics_and_data_hashes(colleague, tmp_path):
    root, run = colleague["root"], colleague["run"]
    workdir = tmp_path / "again"
    proc = sh("imgclust", "reproduce", run["run_id"], "--workdir", str(workdir), cwd=root)
    assert f"run {run['run_id']} reproduced" in proc.stdout
    assert "train.kmeans.n_clusters: 3 (commit) -> 4 (run)" in proc.stdout
    assert "DIFFERS" not in proc.stdout

    # the clone is at the run's commit, with the run's parameters (nested, with their YAML types)
    assert sh("git", "rev-parse", "HEAD", cwd=workdir).stdout.strip() == colleague["commit"]
    assert yaml.safe_load((workdir / "params.yaml").read_text()) == yaml.safe_load((root / "params.yaml").read_text())
    # same metrics (evaluation/metrics.json, where reproduce finds it through the checked-out
    # dvc.yaml, byte for byte) and the same content hash for every data output
    metrics_file, run_info = reproduce._evaluate_outputs(workdir)
    assert metrics_file == workdir / "evaluation" / "metrics.json"
    assert metrics_file.read_bytes() == (root / "evaluation" / "metrics.json").read_bytes()
    logged = {k: v for k, v in run["tags"].items() if k.startswith("data.")}
    assert len(logged) >= 10 and runs.dvc_lock_hashes(workdir / "dvc.lock") == logged
    # the re-run logged to the clone's own store, not to the colleague's
    (again,) = mlflow_runs(workdir)
    assert f"the re-run was logged as run {again['run_id']}" in proc.stdout
    assert json.loads(run_info.read_text())["run_id"] == again["run_id"]
    assert again["tags"]["git_commit"] == colleague["commit"]
    assert again["params"]["train.kmeans.n_clusters"] == "4"
    # every score again; the stages' time and memory (measurements of the machine) are logged, not compared
    scores = {k: v for k, v in run["metrics"].items() if not naming.is_stage_metric(k)}
    assert {k: v for k, v in again["metrics"].items() if not naming.is_stage_metric(k)} == pytest.approx(scores)
    assert len(scores) >= 30 and any(naming.is_stage_metric(k) for k in again["metrics"])
    assert len(mlflow_runs(root)) == 1


@pytest.mark.slow
def test_unknown_run_is_a_clear_error(colleague, tmp_path):
    workdir = tmp_path / "never"
    proc = sh("imgclust", "reproduce", "0" * 32, "--workdir", str(workdir), cwd=colleague["root"], check=False)
    assert proc.returncode == 2
    assert f"no run '{'0' * 32}'" in proc.stderr and "Traceback" not in proc.stderr
    assert not workdir.exists()


@pytest.mark.slow
def test_non_empty_workdir_is_refused_before_cloning(colleague, tmp_path):
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "keep.txt").write_text("mine")
    proc = sh(
        "imgclust",
        "reproduce",
        colleague["run"]["run_id"],
        "--workdir",
        str(tmp_path / "busy"),
        cwd=colleague["root"],
        check=False,
    )
    assert proc.returncode == 2 and "not an empty folder" in proc.stderr
    assert [p.name for p in (tmp_path / "busy").iterdir()] == ["keep.txt"]
