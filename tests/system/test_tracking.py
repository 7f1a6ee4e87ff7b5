"""tracking against real git and a real ``imgclust`` CLI: the git tags of a run, and an end-to-end
``imgclust evaluate`` logged to a real SQLite MLflow store, whose two models are then loaded in a
fresh Python process. (The parts needing no git, dvc or subprocess are in
tests/unit/test_tracking_naming.py.)

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

from imgclust.core.fsutil import read_csv, write_csv, write_json
from imgclust.core.protocols import SPLIT_FIELDS, list_images, split_rows
from imgclust.stages.augment import augment
from imgclust.stages.featurize import featurize
from imgclust.stages.ingest import ingest
from imgclust.stages.resize import resize_images
from imgclust.stages.strip_masks import strip_masks
from imgclust.tracking import naming, runs
from support.cli import imgclust_bin
from support.packs import unpacked
from support.paths import REPO

SIZE = 32
OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
ENV_VARS = ("MLFLOW_TRACKING_URI", "DVC_ROOT", "DVC_EXP_NAME", "DVC_EXP_BASELINE_REV")
GIT_ENV = {
    "GIT_AUTHOR_NAME": "t",
    "GIT_AUTHOR_EMAIL": "t@example.com",
    "GIT_COMMITTER_NAME": "t",
    "GIT_COMMITTER_EMAIL": "t@example.com",
    "GIT_CONFIG_GLOBAL": os.devnull,
    "GIT_CONFIG_NOSYSTEM": "1",
}


def git(cwd: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-c", "commit.gpgsign=false", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
        text=True,
        env={**os.environ, **GIT_ENV},
    ).stdout.strip()


def lock_with_params(base_lock: dict, params: dict) -> dict:
    """``base_lock`` with the ``params`` entry DVC writes for every stage of the repository's
    dvc.yaml: the values of the keys the stage declares (a dotted key stays dotted, as DVC records it)."""
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    lock = json.loads(json.dumps(base_lock))
    for name, stage in stages.items():
        recorded = {}
        for key in stage.get("params", []):
            node = params
            for part in key.split("."):
                node = node[part]
            recorded[key] = node
        lock["stages"].setdefault(name, {"cmd": f"imgclust {name}"})["params"] = {"params.yaml": recorded}
    return lock


# ---------------------------------------------------------------- git tags


def test_git_tags_outside_a_repository(tmp_path):
    assert runs.git_tags(tmp_path) == {}


def test_git_tags_in_a_real_repository(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    (repo / "params.yaml").write_text("a: 1\n")
    git(repo, "add", "params.yaml")
    git(repo, "commit", "-q", "-m", "first")
    head = git(repo, "rev-parse", "HEAD")
    assert len(head) == 40
    assert runs.git_tags(repo) == {"git_commit": head, "git_dirty": "false"}
    (repo / "untracked.txt").write_text("ignored by the dirty check\n")
    assert runs.git_tags(repo)["git_dirty"] == "false"
    (repo / "params.yaml").write_text("a: 2\n")
    assert runs.git_tags(repo) == {"git_commit": head, "git_dirty": "true"}
    git(repo, "commit", "-q", "-am", "second")
    tags = runs.git_tags(repo / ".")
    assert tags["git_commit"] != head and tags["git_dirty"] == "false"


# ---------------------------------------------------------------- end to end: imgclust evaluate -> MLflow


@pytest.fixture(scope="module")
def e2e(synthetic_dataset, fake_dvc_lock, tmp_path_factory):
    """Build the data, train with the CLI, then run ``imgclust evaluate`` (with MLflow) once, from a
    temporary git project holding params.yaml and dvc.lock, into a temporary SQLite store.

    dvc.lock records the parameters each stage ran with (``params``); since evaluate logs those plus
    its own keys (evaluate, mlflow, resize.resample) read from params.yaml, the committed params.yaml
    differs from them in one key no stage re-ran with (synthesize.n_images) and dvc.lock holds a
    stale evaluate entry (thumbnails 8, from a previous evaluate)."""
    tmp = tmp_path_factory.mktemp("tracking_e2e")
    data = tmp / "data"
    reports = tmp / "project" / "reports"
    reports.mkdir(parents=True)
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["resize"].update(width=SIZE, height=SIZE, mode="gray", resample="lanczos")
    params["split"]["test_size"] = 0.25
    params["train"]["pca"]["n_components"] = 5
    params["train"]["kmeans"]["n_init"] = 3
    params["evaluate"]["thumbnails"] = 3
    params["mlflow"]["experiment_name"] = "imgclust-e2e"
    augment_params = params["augment"]
    write_json(reports / "ingest.json", ingest(synthetic_dataset, data / "raw", data / "raw.csv", workers=1).to_dict())
    write_json(reports / "strip_masks.json", strip_masks(data / "raw", data / "stripped", ["*_mask*.png"]))
    resize_images(data / "stripped", data / "resized", SIZE, SIZE, "gray", "lanczos", workers=1)
    write_csv(data / "split.csv", split_rows(list_images(data / "resized"), 0.25, 0), SPLIT_FIELDS)
    write_json(
        reports / "augment.json",
        augment(
            data / "resized",
            data / "split.csv",
            data / "augmented",
            data / "augmented.csv",
            protocol="honest",
            ops=OPS,
            target=augment_params["target"],
            seed=augment_params["seed"],
            tutorial_ops=augment_params["tutorial_ops"],
            test_size=0.25,
            split_seed=0,
            workers=1,
        ),
    )
    featurize(
        data / "augmented",
        data / "augmented.csv",
        data / "features",
        method="pixels",
        cnn_params={},
        batch_size=params["featurize"]["batch_size"],
    )

    project = tmp / "project"
    lock = lock_with_params(fake_dvc_lock[0], params)
    lock["stages"]["evaluate"]["params"]["params.yaml"]["evaluate"] = {"thumbnails": 8}
    params_yaml = json.loads(json.dumps(params))
    params_yaml["synthesize"]["n_images"] = params["synthesize"]["n_images"] + 1
    (project / "params.yaml").write_text(yaml.safe_dump(params_yaml, sort_keys=False))
    (project / "dvc.lock").write_text(yaml.safe_dump(lock, sort_keys=False))
    git(project, "init", "-q")
    git(project, "add", "params.yaml", "dvc.lock")
    git(project, "commit", "-q", "-m", "params")

    store = tmp / "store"
    store.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ENV_VARS}
    env.update(MLFLOW_TRACKING_URI=f"sqlite:///{store / 'mlflow.db'}", DVC_EXP_NAME="e2e-exp")

    def cli(*args):
        # train and evaluate read protocol, train.*, evaluate.*, mlflow.* and resize.resample from
        # ./params.yaml of the project
        proc = subprocess.run([*imgclust_bin(), *args], cwd=project, env=env, capture_output=True, text=True)
        assert proc.returncode == 0, f"imgclust {args[0]} failed:\n{proc.stdout}\n{proc.stderr}"
        return proc

    model = tmp / "models" / "model.joblib"
    cli("train", "--features", str(data / "features"), "--out", str(model))
    evaluation = project / "evaluation"
    out = {
        "metrics": evaluation / "metrics.json",
        "plots": evaluation / "plots",
        "predictions": evaluation / "predictions.csv",
        "run_info": evaluation / "mlflow_run.json",
    }
    proc = cli(
        "evaluate",
        "--features",
        str(data / "features"),
        "--model",
        str(model),
        "--images",
        str(data / "augmented"),
        "--metrics",
        str(out["metrics"]),
        "--plots",
        str(out["plots"]),
        "--predictions",
        str(out["predictions"]),
        "--run-info",
        str(out["run_info"]),
        "--report",
        str(reports / "ingest.json"),
        "--report",
        str(reports / "strip_masks.json"),
        "--report",
        str(reports / "augment.json"),
    )
    return {
        "tmp": tmp,
        "data": data,
        "project": project,
        "params": params,
        "params_yaml": params_yaml,
        "env": env,
        "stdout": proc.stdout,
        "uri": env["MLFLOW_TRACKING_URI"],
        "model": model,
        **out,
    }


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
    """The logged params: what every stage recorded in dvc.lock (the params the outputs were made
    with), with evaluate's own keys from params.yaml; here that is the whole flattened params.yaml."""
    run = logged[2][0]
    flat = naming.flatten(e2e["params"])
    assert set(run.data.params) == set(flat)
    assert set(flat) == set(naming.flatten(e2e["params_yaml"]))
    assert run.data.params == {k: ("null" if v is None else str(v)) for k, v in flat.items()}
    assert run.data.params["resize.width"] == str(SIZE)
    assert run.data.params["train.pca.n_components"] == "5"
    assert run.data.params["protocol"] == "honest"
    # evaluate's own keys come from params.yaml, not from its stale dvc.lock entry
    assert run.data.params["evaluate.thumbnails"] == "3"
    # the others from dvc.lock: a params.yaml value no stage ran with is not logged
    assert run.data.params["synthesize.n_images"] == str(e2e["params"]["synthesize"]["n_images"])
    assert run.data.params["synthesize.n_images"] != str(e2e["params_yaml"]["synthesize"]["n_images"])


def test_e2e_metrics_equal_metrics_json(e2e, logged):
    run = logged[2][0]
    metrics = json.loads(e2e["metrics"].read_text())
    expected = {
        f"{split}_{name}": float(value)
        for split, values in metrics.items()
        for name, value in values.items()
        if value is not None
    }
    assert {"train_ari", "test_ari", "train_nmi", "test_nmi", "test_cluster_accuracy", "test_n_samples"} <= set(
        expected
    )
    # besides metrics.json's, a run logs only the stage figures (time/..., memory/...: never in a DVC output)
    scores = {k: v for k, v in run.data.metrics.items() if not k.startswith(("time/", "memory/"))}
    assert scores == pytest.approx(expected, rel=1e-12)
    assert {"time/evaluate_s", "memory/evaluate_peak_mb", "time/total_s", "memory/peak_mb"} <= set(run.data.metrics)


def test_e2e_artifacts(e2e, logged):
    client, _, logged_runs = logged
    run_id = logged_runs[0].info.run_id

    def listing(path=None):
        for item in client.list_artifacts(run_id, path):
            yield from (listing(item.path) if item.is_dir else [item.path])

    files = set(listing())
    expected = {
        "plots/contingency.png",
        "plots/scatter.png",
        "plots/thumbnails.png",
        "metrics.json",
        "predictions.csv",
        "summary.json",
    }
    assert expected <= files, sorted(files)
    # MLflow 3 stores models as logged models linked to the run (runs:/<id>/<name> resolves to them)
    models = client.search_logged_models(experiment_ids=[logged_runs[0].info.experiment_id])
    assert sorted(m.name for m in models) == ["image_model", "model"]
    assert {m.source_run_id for m in models} == {run_id}
    assert {o.model_id for o in logged_runs[0].outputs.model_outputs} == {m.model_id for m in models}
    local = Path(client.download_artifacts(run_id, "", str(e2e["tmp"] / "downloaded")))
    assert (local / "metrics.json").read_bytes() == e2e["metrics"].read_bytes()
    assert (local / "predictions.csv").read_bytes() == e2e["predictions"].read_bytes()
    for name in ("contingency.png", "scatter.png", "thumbnails.png"):
        assert (local / "plots" / name).read_bytes() == (e2e["plots"] / name).read_bytes()
    summary = json.loads((local / "summary.json").read_text())
    assert summary["features"] == json.loads((e2e["data"] / "features" / "meta.json").read_text())
    assert set(summary["reports"]) == {"ingest", "strip_masks", "augment"}
    assert summary["reports"]["augment"] == json.loads((e2e["project"] / "reports" / "augment.json").read_text())


def test_e2e_tags(e2e, logged, fake_dvc_lock):
    tags = logged[2][0].data.tags
    head = git(e2e["project"], "rev-parse", "HEAD")
    assert tags["git_commit"] == head
    assert tags["git_dirty"] == "false"  # the evaluate outputs are untracked files
    assert tags["dvc_exp_name"] == "e2e-exp"
    assert "dvc_baseline_rev" not in tags
    assert tags["featurize.method"] == "pixels"
    data_tags = {k: v for k, v in tags.items() if k.startswith("data.")}
    assert data_tags == fake_dvc_lock[1]


def test_e2e_logged_models_predict_like_predictions_csv(e2e, logged):
    """In a fresh interpreter, both logged models give the clusters evaluate wrote for the test images."""
    run_id = logged[2][0].info.run_id
    predictions = read_csv(e2e["predictions"])
    index = read_csv(e2e["data"] / "features" / "index.csv")
    assert [p["file"] for p in predictions] == [r["file"] for r in index]
    test_rows = [i for i, p in enumerate(predictions) if p["split"] == "test"]
    assert len(test_rows) >= 3
    expected = [int(predictions[i]["cluster"]) for i in test_rows]
    exported = unpacked(e2e["data"] / "augmented")
    request = {
        "run_id": run_id,
        "features": str(e2e["data"] / "features" / "features.npy"),
        "rows": test_rows,
        "paths": [str(exported / predictions[i]["file"]) for i in test_rows],
    }
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
    proc = subprocess.run(
        [sys.executable, "-c", script, str(e2e["tmp"] / "request.json")],
        cwd=e2e["tmp"],
        env=e2e["env"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-4000:]
    result = json.loads(next(line for line in proc.stdout.splitlines() if line.startswith("RESULT "))[7:])
    assert result["model"] == expected
    assert result["image_model"] == expected
