"""tracking: where the MLflow store is, the run's tags, and an end-to-end ``imgclust evaluate`` logged
to a real SQLite MLflow store, whose two models are then loaded in a fresh Python process.

Real data: the synthetic dataset through ingest -> strip_masks -> resize (32x32 gray) -> split ->
augment (honest) -> featurize (pixels) -> ``imgclust train``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import yaml

from imgclust import tracking
from imgclust.augment import augment
from imgclust.featurize import featurize
from imgclust.fsutil import read_csv, write_csv, write_json
from imgclust.ingest import ingest
from imgclust.resize import resize_images
from imgclust.split import SPLIT_FIELDS, list_images, split_rows
from imgclust.strip_masks import strip_masks

REPO = Path(__file__).resolve().parents[1]
SIZE = 32
OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
IMGCLUST = Path(sys.executable).with_name("imgclust")
ENV_VARS = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
GIT_ENV = {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.com", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@example.com", "GIT_CONFIG_GLOBAL": os.devnull, "GIT_CONFIG_NOSYSTEM": "1"}

LOCK = {
    "schema": "2.0",
    "stages": {
        "synthesize": {"cmd": "imgclust synthesize", "outs": [
            {"path": "data/synthetic", "hash": "md5", "md5": "0" * 32 + ".dir", "size": 1, "nfiles": 1}]},
        "ingest": {"cmd": "imgclust ingest", "deps": [
            {"path": "data/synthetic", "hash": "md5", "md5": "d" * 32 + ".dir"}], "outs": [
            {"path": "data/manifests/raw.csv", "hash": "md5", "md5": "1" * 32, "size": 10},
            {"path": "data/raw", "hash": "md5", "md5": "2" * 32 + ".dir", "size": 10, "nfiles": 3},
            {"path": "reports/ingest.json", "hash": "md5", "md5": "3" * 32, "size": 10}]},
        "augment": {"cmd": "imgclust augment", "outs": [
            {"path": "data/augmented", "hash": "md5", "md5": "4" * 32 + ".dir", "size": 10, "nfiles": 3}]},
        "featurize": {"cmd": "imgclust featurize", "outs": [
            {"path": "data/features", "hash": "md5", "md5": "5" * 32 + ".dir", "size": 10, "nfiles": 3}]},
        "train": {"cmd": "imgclust train", "outs": [
            {"path": "models/model.joblib", "hash": "md5", "md5": "6" * 32, "size": 10}]},
        "evaluate": {"cmd": "imgclust evaluate", "outs": [
            {"path": "reports/predictions.csv", "hash": "md5", "md5": "7" * 32, "size": 10}]},
    },
}
LOCK_TAGS = {
    "data.ingest.data/manifests/raw.csv": "1" * 32,
    "data.ingest.data/raw": "2" * 32 + ".dir",
    "data.ingest.reports/ingest.json": "3" * 32,
    "data.augment.data/augmented": "4" * 32 + ".dir",
    "data.featurize.data/features": "5" * 32 + ".dir",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(["git", "-c", "commit.gpgsign=false", *args], cwd=cwd, check=True, capture_output=True,
                          text=True, env={**os.environ, **GIT_ENV}).stdout.strip()


@pytest.fixture
def isolated_mlflow(monkeypatch):
    """No tracking URI or DVC variable from outside, and MLflow's global tracking URI (which
    set_tracking_uri also exports as MLFLOW_TRACKING_URI) restored after the test."""
    from mlflow.tracking._tracking_service import utils

    monkeypatch.setattr(utils, "_tracking_uri", utils._tracking_uri)
    for name in ENV_VARS:
        monkeypatch.setenv(name, "placeholder")  # recorded, so teardown restores the original state
        monkeypatch.delenv(name)
    return monkeypatch


# ---------------------------------------------------------------- project_root, local_store, configure


def test_project_root_honours_dvc_root(isolated_mlflow, tmp_path):
    (tmp_path / "here").mkdir()
    (tmp_path / "here" / "dvc.yaml").write_text("stages: {}\n")
    main = tmp_path / "main"
    main.mkdir()
    isolated_mlflow.setenv("DVC_ROOT", str(tmp_path / "main" / ".." / "main"))
    assert tracking.project_root(tmp_path / "here") == main.resolve()
    assert tracking.project_root() == main.resolve()


def test_project_root_finds_dvc_yaml_upwards(isolated_mlflow, tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    assert tracking.project_root(deep) == tmp_path.resolve()
    assert tracking.project_root(tmp_path) == tmp_path.resolve()
    isolated_mlflow.chdir(deep)
    assert tracking.project_root() == tmp_path.resolve()


def test_project_root_finds_dvc_folder_and_nearest_wins(isolated_mlflow, tmp_path):
    (tmp_path / "dvc.yaml").write_text("stages: {}\n")
    inner = tmp_path / "inner"
    (inner / ".dvc").mkdir(parents=True)
    (inner / "src").mkdir()
    assert tracking.project_root(inner / "src") == inner.resolve()


def test_project_root_without_marker_is_the_start(isolated_mlflow, tmp_path):
    start = tmp_path / "x" / "y"
    start.mkdir(parents=True)
    assert tracking.project_root(start) == start.resolve()


def test_local_store(tmp_path):
    uri, artifacts = tracking.local_store(tmp_path)
    assert uri == f"sqlite:///{tmp_path}/mlruns/mlflow.db"
    assert artifacts == (tmp_path / "mlruns" / "artifacts").as_uri()
    assert artifacts.startswith("file:///")


def test_configure_defaults_to_the_local_store(isolated_mlflow, tmp_path):
    import mlflow

    uri, artifacts = tracking.configure(root=tmp_path)
    assert (uri, artifacts) == tracking.local_store(tmp_path)
    assert (tmp_path / "mlruns").is_dir()
    assert mlflow.get_tracking_uri() == uri


def test_configure_uses_dvc_root_when_no_root_given(isolated_mlflow, tmp_path):
    import mlflow

    isolated_mlflow.setenv("DVC_ROOT", str(tmp_path))
    isolated_mlflow.chdir(REPO)
    uri, artifacts = tracking.configure()
    assert (uri, artifacts) == tracking.local_store(tmp_path)
    assert mlflow.get_tracking_uri() == uri


def test_configure_honours_mlflow_tracking_uri(isolated_mlflow, tmp_path):
    import mlflow

    wanted = f"sqlite:///{tmp_path}/elsewhere.db"
    isolated_mlflow.setenv("MLFLOW_TRACKING_URI", wanted)
    assert tracking.configure(root=tmp_path / "project") == (wanted, None)
    assert mlflow.get_tracking_uri() == wanted
    assert not (tmp_path / "project").exists()


# ---------------------------------------------------------------- experiments


def test_get_or_create_experiment_is_idempotent(isolated_mlflow, tmp_path):
    import mlflow

    tracking.configure(root=tmp_path)
    artifacts = tracking.local_store(tmp_path)[1]
    first = tracking.get_or_create_experiment("exp-a", artifacts)
    assert tracking.get_or_create_experiment("exp-a", artifacts) == first
    assert tracking.get_or_create_experiment("exp-a", None) == first
    other = tracking.get_or_create_experiment("exp-b", artifacts)
    assert other != first
    client = mlflow.MlflowClient()
    names = sorted(e.name for e in client.search_experiments())
    assert names.count("exp-a") == 1 and names.count("exp-b") == 1
    experiment = client.get_experiment(first)
    assert experiment.name == "exp-a"
    assert experiment.artifact_location == artifacts  # the project store's artifact root, as given


def test_get_or_create_experiment_tolerates_a_concurrent_creator(isolated_mlflow, tmp_path):
    """Another process creates the experiment between our lookup and our create: the real store
    refuses the duplicate, and the function returns the other process's experiment."""
    import mlflow

    tracking.configure(root=tmp_path)
    existing = mlflow.MlflowClient().create_experiment("race")
    real_lookup = mlflow.MlflowClient.get_experiment_by_name
    calls = []

    def stale_first_lookup(self, name):
        calls.append(name)
        return None if len(calls) == 1 else real_lookup(self, name)

    isolated_mlflow.setattr(mlflow.MlflowClient, "get_experiment_by_name", stale_first_lookup)
    assert tracking.get_or_create_experiment("race", None) == existing
    assert calls == ["race", "race"]


# ---------------------------------------------------------------- tags


def test_dvc_lock_hashes_only_data_stages(tmp_path):
    lock = tmp_path / "dvc.lock"
    lock.write_text(yaml.safe_dump(LOCK, sort_keys=False))
    assert tracking.dvc_lock_hashes(lock) == LOCK_TAGS


def test_dvc_lock_hashes_real_lock_file_format(tmp_path):
    """The repository's own dvc.lock (written by DVC) parses to tags of data stages only."""
    lock = REPO / "dvc.lock"
    if not lock.is_file():
        pytest.skip("no dvc.lock in the repository")
    tags = tracking.dvc_lock_hashes(lock)
    assert tags, "dvc.lock lists data stage outputs"
    stages = {key.split(".")[1] for key in tags}
    assert stages <= set(tracking.DATA_STAGES_WITH_HASHES)
    assert all(len(v.removesuffix(".dir")) == 32 for v in tags.values())


def test_dvc_lock_hashes_missing_or_empty(tmp_path):
    assert tracking.dvc_lock_hashes(tmp_path / "dvc.lock") == {}
    (tmp_path / "dvc.lock").write_text("")
    assert tracking.dvc_lock_hashes(tmp_path / "dvc.lock") == {}
    (tmp_path / "dvc.lock").write_text("schema: '2.0'\nstages:\n")
    assert tracking.dvc_lock_hashes(tmp_path / "dvc.lock") == {}


def test_git_tags_outside_a_repository(tmp_path):
    assert tracking.git_tags(tmp_path) == {}


def test_git_tags_in_a_real_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "params.yaml").write_text("a: 1\n")
    git(repo, "add", "params.yaml")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert tracking.git_tags(repo) == {"git_commit": head, "git_dirty": "false"}
    (repo / "untracked.txt").write_text("ignored by the dirty check\n")
    assert tracking.git_tags(repo)["git_dirty"] == "false"
    (repo / "params.yaml").write_text("a: 2\n")
    assert tracking.git_tags(repo) == {"git_commit": head, "git_dirty": "true"}
    git(repo, "commit", "-q", "-am", "second")
    tags = tracking.git_tags(repo / ".")
    assert tags["git_commit"] != head and tags["git_dirty"] == "false"


def test_dvc_tags(isolated_mlflow):
    assert tracking.dvc_tags() == {}
    isolated_mlflow.setenv("DVC_EXP_NAME", "brisk-bank")
    isolated_mlflow.setenv("DVC_EXP_BASELINE_REV", "abc123")
    assert tracking.dvc_tags() == {"dvc_exp_name": "brisk-bank", "dvc_baseline_rev": "abc123"}


def test_flatten():
    params = {"protocol": "honest", "train": {"pca": {"n_components": 50, "whiten": False},
                                              "kmeans": {"n_clusters": 3}},
              "augment": {"ops": ["rot180", "flip_lr"]}, "none": None, "empty": {}}
    assert tracking.flatten(params) == {
        "protocol": "honest", "train.pca.n_components": 50, "train.pca.whiten": False,
        "train.kmeans.n_clusters": 3, "augment.ops": ["rot180", "flip_lr"], "none": None,
    }
    assert tracking.flatten({"a": {"b": 1}}, "p.") == {"p.a.b": 1}


def test_flatten_repository_params():
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    flat = tracking.flatten(params)
    assert flat["train.pca.n_components"] == params["train"]["pca"]["n_components"]
    assert flat["featurize.cnn.backbone"] == params["featurize"]["cnn"]["backbone"]
    assert not any(isinstance(v, dict) for v in flat.values())


# ---------------------------------------------------------------- end to end: imgclust evaluate -> MLflow


@pytest.fixture(scope="module")
def e2e(synthetic_dataset, tmp_path_factory):
    """Build the data, train with the CLI, then run ``imgclust evaluate`` (with MLflow) once, from a
    temporary git project holding params.yaml and dvc.lock, into a temporary SQLite store."""
    tmp = tmp_path_factory.mktemp("tracking_e2e")
    data = tmp / "data"
    reports = tmp / "project" / "reports"
    reports.mkdir(parents=True)
    write_json(reports / "ingest.json",
               ingest(synthetic_dataset, data / "raw", data / "raw.csv", workers=1).to_dict())
    write_json(reports / "strip_masks.json", strip_masks(data / "raw", data / "stripped", ["*_mask*.png"]))
    resize_images(data / "stripped", data / "resized", SIZE, SIZE, "gray", "lanczos", workers=1)
    write_csv(data / "split.csv", split_rows(list_images(data / "resized"), 0.25, 0), SPLIT_FIELDS)
    write_json(reports / "augment.json", augment(data / "resized", data / "split.csv", data / "augmented",
                                                 data / "augmented.csv", ops=OPS, workers=1))
    featurize(data / "augmented", data / "augmented.csv", data / "features", "pixels")

    project = tmp / "project"
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["resize"].update(width=SIZE, height=SIZE, mode="gray", resample="lanczos")
    params["split"]["test_size"] = 0.25
    params["train"]["pca"]["n_components"] = 5
    params["train"]["kmeans"]["n_init"] = 3
    params["evaluate"]["thumbnails"] = 3
    params["mlflow"]["experiment_name"] = "imgclust-e2e"
    (project / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    (project / "dvc.lock").write_text(yaml.safe_dump(LOCK, sort_keys=False))
    git(project, "init", "-q")
    git(project, "add", "params.yaml", "dvc.lock")
    git(project, "commit", "-q", "-m", "params")

    store = tmp / "store"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", DVC_EXP_NAME="e2e-exp")

    def cli(*args):
        proc = subprocess.run([str(IMGCLUST), *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"imgclust {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    model = tmp / "models" / "model.joblib"
    train_params = params["train"]
    cli("train", "--features", str(data / "features"), "--out", str(model), "--protocol", params["protocol"],
        "--n-components", str(train_params["pca"]["n_components"]), "--n-clusters",
        str(train_params["kmeans"]["n_clusters"]), "--n-init", str(train_params["kmeans"]["n_init"]))
    out = {"metrics": project / "metrics.json", "plots": project / "plots",
           "predictions": reports / "predictions.csv", "run_info": reports / "mlflow_run.json"}
    proc = cli("evaluate", "--features", str(data / "features"), "--model", str(model),
               "--images", str(data / "augmented"), "--params", str(project / "params.yaml"),
               "--metrics", str(out["metrics"]), "--plots", str(out["plots"]),
               "--predictions", str(out["predictions"]), "--run-info", str(out["run_info"]),
               "--thumbnails", "3", "--report", str(reports / "ingest.json"),
               "--report", str(reports / "strip_masks.json"), "--report", str(reports / "augment.json"))
    return {"tmp": tmp, "data": data, "project": project, "params": params, "env": env, "stdout": proc.stdout,
            "uri": env["MLFLOW_TRACKING_URI"], "model": model, **out}


@pytest.fixture(scope="module")
def logged(e2e):
    from mlflow import MlflowClient

    client = MlflowClient(tracking_uri=e2e["uri"])
    experiments = client.search_experiments()
    runs = [run for exp in experiments for run in client.search_runs([exp.experiment_id])]
    return client, experiments, runs


def test_e2e_exactly_one_run(e2e, logged):
    _, experiments, runs = logged
    assert len(runs) == 1
    run = runs[0]
    info = json.loads(e2e["run_info"].read_text())
    assert info == {"run_id": run.info.run_id, "experiment_id": run.info.experiment_id, "tracking_uri": e2e["uri"]}
    assert [e.name for e in experiments if e.experiment_id == run.info.experiment_id] == ["imgclust-e2e"]
    assert run.info.status == "FINISHED"
    assert f"mlflow: run {run.info.run_id}" in e2e["stdout"]


def test_e2e_params_are_the_flattened_params_yaml(e2e, logged):
    run = logged[2][0]
    flat = tracking.flatten(e2e["params"])
    assert set(run.data.params) == set(flat)
    assert run.data.params == {k: ("null" if v is None else str(v)) for k, v in flat.items()}
    assert run.data.params["resize.width"] == str(SIZE)
    assert run.data.params["train.pca.n_components"] == "5"
    assert run.data.params["protocol"] == "honest"


def test_e2e_metrics_equal_metrics_json(e2e, logged):
    run = logged[2][0]
    metrics = json.loads(e2e["metrics"].read_text())
    expected = {f"{split}_{name}": float(value) for split, values in metrics.items()
                for name, value in values.items() if value is not None}
    assert {"train_ari", "test_ari", "train_nmi", "test_nmi", "test_cluster_accuracy", "test_n_samples"} <= set(expected)
    assert run.data.metrics == pytest.approx(expected, rel=1e-12)


def test_e2e_artifacts(e2e, logged):
    client, _, runs = logged
    run_id = runs[0].info.run_id

    def listing(path=None):
        for item in client.list_artifacts(run_id, path):
            yield from (listing(item.path) if item.is_dir else [item.path])

    files = set(listing())
    expected = {"plots/contingency.png", "plots/scatter.png", "plots/thumbnails.png", "metrics.json",
                "predictions.csv", "summary.json"}
    assert expected <= files, sorted(files)
    # MLflow 3 stores models as logged models linked to the run (runs:/<id>/<name> resolves to them)
    models = client.search_logged_models(experiment_ids=[runs[0].info.experiment_id])
    assert sorted(m.name for m in models) == ["image_model", "model"]
    assert {m.source_run_id for m in models} == {run_id}
    assert {o.model_id for o in runs[0].outputs.model_outputs} == {m.model_id for m in models}
    local = Path(client.download_artifacts(run_id, "", str(e2e["tmp"] / "downloaded")))
    assert (local / "metrics.json").read_bytes() == e2e["metrics"].read_bytes()
    assert (local / "predictions.csv").read_bytes() == e2e["predictions"].read_bytes()
    for name in ("contingency.png", "scatter.png", "thumbnails.png"):
        assert (local / "plots" / name).read_bytes() == (e2e["plots"] / name).read_bytes()
    summary = json.loads((local / "summary.json").read_text())
    assert summary["features"] == json.loads((e2e["data"] / "features" / "meta.json").read_text())
    assert set(summary["reports"]) == {"ingest", "strip_masks", "augment"}
    assert summary["reports"]["augment"] == json.loads((e2e["project"] / "reports" / "augment.json").read_text())


def test_e2e_tags(e2e, logged):
    tags = logged[2][0].data.tags
    head = git(e2e["project"], "rev-parse", "HEAD")
    assert tags["git_commit"] == head
    assert tags["git_dirty"] == "false"  # the evaluate outputs are untracked files
    assert tags["dvc_exp_name"] == "e2e-exp"
    assert "dvc_baseline_rev" not in tags
    assert tags["featurize.method"] == "pixels"
    data_tags = {k: v for k, v in tags.items() if k.startswith("data.")}
    assert data_tags == LOCK_TAGS


def test_e2e_logged_models_predict_like_predictions_csv(e2e, logged):
    """In a fresh interpreter, both logged models give the clusters evaluate wrote for the test images."""
    run_id = logged[2][0].info.run_id
    predictions = read_csv(e2e["predictions"])
    index = read_csv(e2e["data"] / "features" / "index.csv")
    assert [p["file"] for p in predictions] == [r["file"] for r in index]
    test_rows = [i for i, p in enumerate(predictions) if p["split"] == "test"]
    assert len(test_rows) >= 3
    expected = [int(predictions[i]["cluster"]) for i in test_rows]
    request = {"run_id": run_id, "features": str(e2e["data"] / "features" / "features.npy"), "rows": test_rows,
               "paths": [str(e2e["data"] / "augmented" / predictions[i]["file"]) for i in test_rows]}
    (e2e["tmp"] / "request.json").write_text(json.dumps(request))
    script = textwrap.dedent("""
        import json, sys
        import mlflow.pyfunc
        import numpy as np
        import pandas as pd

        request = json.load(open(sys.argv[1]))
        features = np.load(request["features"])[request["rows"]]
        model = mlflow.pyfunc.load_model(f"runs:/{request['run_id']}/model")
        images = mlflow.pyfunc.load_model(f"runs:/{request['run_id']}/image_model")
        out = {"model": np.asarray(model.predict(features)).ravel().tolist(),
               "image_model": np.asarray(images.predict(pd.DataFrame({"path": request["paths"]}))).ravel().tolist()}
        print("RESULT " + json.dumps(out))
    """)
    proc = subprocess.run([sys.executable, "-c", script, str(e2e["tmp"] / "request.json")], cwd=e2e["tmp"],
                          env=e2e["env"], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["model"] == expected
    assert result["image_model"] == expected
