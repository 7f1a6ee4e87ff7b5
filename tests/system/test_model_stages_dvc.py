"""The model stages' checks that need a fresh process or a real project: import cost in a clean
interpreter, the installed ``imgclust`` console script running featurize -> train -> evaluate, and
``dvc repro`` on an invalid params.yaml. (Their in-process tests are tests/unit/test_cnn.py,
test_plots.py, test_featurize.py, test_train.py, test_evaluate.py and test_config.py.)"""

from __future__ import annotations

import csv
import json
import subprocess
import sys

import joblib
import numpy as np
import pytest
from PIL import Image

from imgclust.core.feature_store import load_features
from support.cli import run_installed
from support.data import run_data_stages
from support.project import make_project, sh, write_params

# ------------------------------------------------------------------- import cost, in a fresh interpreter


@pytest.mark.parametrize("module", ["imgclust.core.cnn", "imgclust.cli"])
def test_import_does_not_load_keras(module):
    code = f"import sys, {module}; assert not {{'keras', 'tensorflow'}} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.parametrize("module", ["imgclust.core.plots", "imgclust.cli"])
def test_import_does_not_import_pyplot(module):
    code = f"import sys, {module}; print('matplotlib.pyplot' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "False"


def test_the_cli_and_the_pool_workers_import_no_heavy_library():
    """Every stage process (and every spawned decoding worker, which imports the console script
    again) pays the CLI's import time: scikit-learn, MLflow and matplotlib load only when used."""
    heavy = ("sklearn", "mlflow", "matplotlib", "pandas", "keras", "tensorflow")
    code = f"import sys, imgclust.cli; print(sorted(m for m in {heavy!r} if m in sys.modules))"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert res.stdout.strip() == "[]"


# ------------------------------------------------------------------- the installed console script


def test_console_script_runs_the_model_stages(synthetic_dataset, tmp_path):
    """featurize -> train -> evaluate --no-mlflow as the installed ``imgclust`` script, each reading
    its values from the working folder's params.yaml (what evaluate's in-process tests check in
    detail, here from a fresh process)."""
    work = tmp_path / "project"
    write_params(
        work,
        featurize__method="pixels",
        featurize__batch_size=16,
        train__pca__n_components=5,
        train__kmeans__n_clusters=3,
        evaluate__thumbnails=3,
    )
    data = run_data_stages(work / "data", synthetic_dataset)
    proc = run_installed(
        "featurize", "--in", str(data["images"]), "--manifest", str(data["manifest"]), "--out", "features", cwd=work
    )
    assert "featurize (pixels): " in proc.stdout and "1024 uint8" in proc.stdout
    proc = run_installed("train", "--features", "features", "--out", "models/model.joblib", cwd=work)
    assert "train: scale -> pca -> kmeans on " in proc.stdout
    proc = run_installed(
        "evaluate",
        "--features",
        "features",
        "--model",
        "models/model.joblib",
        "--images",
        str(data["images"]),
        "--metrics",
        "evaluation/metrics.json",
        "--plots",
        "evaluation/plots",
        "--predictions",
        "evaluation/predictions.csv",
        "--run-info",
        "evaluation/mlflow_run.json",
        "--no-mlflow",
        cwd=work,
    )
    assert "evaluate train: ARI " in proc.stdout and "evaluate test: ARI " in proc.stdout
    assert "mlflow" not in proc.stdout

    evaluation = work / "evaluation"
    metrics = json.loads((evaluation / "metrics.json").read_text(), parse_constant=pytest.fail)
    assert set(metrics) == {"train", "test", "originals"}
    features, index, _ = load_features(work / "features")
    model = joblib.load(work / "models" / "model.joblib")
    assert model.named_steps["pca"].n_components_ == 5
    with open(evaluation / "predictions.csv", newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert [r["file"] for r in rows] == [r["file"] for r in index]
    np.testing.assert_array_equal([int(r["cluster"]) for r in rows], model.predict(np.asarray(features)))
    for name in ("contingency.png", "scatter.png", "thumbnails.png"):
        with Image.open(evaluation / "plots" / name) as image:
            assert image.format == "PNG" and min(image.size) >= 100
    assert not (evaluation / "mlflow_run.json").exists() and not (work / "mlruns").exists()


# ------------------------------------------------------------------- dvc repro on an invalid params.yaml


def test_dvc_repro_stops_at_the_first_stage_on_a_typo(tmp_path):
    root = make_project(tmp_path / "project", resize__mode="grey")
    proc = sh("dvc", "repro", cwd=root, check=False)
    assert proc.returncode != 0
    assert "resize.mode: 'grey' is not one of 'gray', 'rgb'. Did you mean 'gray'?" in proc.stdout + proc.stderr
    assert not (root / "data" / "synthetic").exists(), "a stage did work despite invalid parameters"
    assert not (root / "dvc.lock").exists()
