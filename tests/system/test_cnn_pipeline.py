"""The CNN recipe through DVC and MLflow: pretrained MobileNet-0.25 features, image-level model."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from support.cli import run_installed
from support.packs import unpacked
from support.project import make_project, mlflow_runs, sh, write_params

FRESH_PROCESS_PREDICT = """
import json, sys
import mlflow, pandas as pd
mlflow.set_tracking_uri(sys.argv[1])
model = mlflow.pyfunc.load_model(f"runs:/{sys.argv[2]}/image_model")
paths = json.loads(sys.argv[3])
print(json.dumps([int(c) for c in model.predict(pd.DataFrame({"path": paths}))]))
"""


@pytest.fixture
def keras_home() -> str:
    home = os.environ.get("KERAS_HOME")
    if not home or not (Path(home) / "models" / "mobilenet_2_5_224_tf_no_top.h5").is_file():
        pytest.skip("no Keras home with the MobileNet-0.25 ImageNet weights (../shared/keras)")
    return home


def test_cnn_experiment_logs_an_image_model_that_matches_evaluate(tmp_path, keras_home):
    root = make_project(tmp_path / "project", synthesize__n_images=40, resize__width=96, resize__height=96)
    sh(
        "dvc",
        "exp",
        "run",
        "-n",
        "cnn",
        "-S",
        "featurize.method=cnn",
        "-S",
        "featurize.cnn.backbone=mobilenet",
        "-S",
        "featurize.cnn.alpha=0.25",
        cwd=root,
    )
    meta = json.loads((root / "data" / "features" / "meta.json").read_text())
    assert meta["method"] == "cnn" and meta["dtype"] == "float32" and meta["n_features"] == 256
    (run,) = mlflow_runs(root)
    assert run["tags"]["dvc_exp_name"] == "cnn"
    assert run["tags"]["featurize.method"] == "cnn"
    assert run["params"]["featurize.cnn.alpha"] == "0.25"
    assert "test_ari" in run["metrics"]

    with open(root / "evaluation" / "predictions.csv", newline="") as fh:
        test_rows = [r for r in csv.DictReader(fh) if r["split"] == "test"]
    assert test_rows
    # the ORIGINAL files (before resize) of the test images, so the model's own loading is exercised
    stripped = unpacked(root / "data" / "stripped")
    paths = [str(next(stripped.glob(f"{Path(r['file']).with_suffix('').as_posix()}.*"))) for r in test_rows]
    proc = subprocess.run(
        [
            sys.executable,
            "-c",
            FRESH_PROCESS_PREDICT,
            f"sqlite:///{root / 'mlruns' / 'mlflow.db'}",
            run["run_id"],
            json.dumps(paths),
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env={**os.environ, "KERAS_HOME": keras_home},
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    predicted = json.loads(proc.stdout.strip().splitlines()[-1])
    assert predicted == [int(r["cluster"]) for r in test_rows]


def test_missing_weights_fail_before_work_with_a_clear_message(tmp_path):
    """featurize.method cnn with a backbone whose weights the Keras home lacks: exit 2 naming the
    file, the folder searched and the fixes, before any output is written. Keras reads KERAS_HOME
    once, when first imported, so the installed command runs in a fresh process."""
    empty_home = tmp_path / "keras-home"
    (empty_home / "models").mkdir(parents=True)
    work = tmp_path / "work"
    write_params(work, featurize__method="cnn", featurize__cnn__backbone="mobilenet_v2")
    out = tmp_path / "features"
    proc = run_installed(
        "featurize",
        "--in",
        str(tmp_path / "no-images"),
        "--manifest",
        str(tmp_path / "none.csv"),
        "--out",
        str(out),
        cwd=work,
        env={"KERAS_HOME": str(empty_home)},
        check=False,
    )
    assert proc.returncode == 2
    message = proc.stderr
    for part in (
        "mobilenet_v2",
        "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_1.0_224_no_top.h5",
        str(empty_home / "models"),
        "KERAS_HOME",
        "featurize.cnn.weights",
    ):
        assert part in message, part
    assert not out.exists()
