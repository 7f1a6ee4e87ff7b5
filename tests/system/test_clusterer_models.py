"""A non-inductive clusterer (Ward, k chosen by auto) through evaluate's MLflow logging and the
installed ``imgclust predict``: the logged image-level model assigns the images the clusters
evaluate wrote (nearest cluster centre), and the feature-level model loads from its skops file."""

from __future__ import annotations

import json
from pathlib import Path

import joblib
import numpy as np
import yaml

from imgclust import config
from imgclust.core.clustering import fit_model
from imgclust.core.feature_store import FeatureStoreWriter
from imgclust.core.fsutil import read_csv
from imgclust.core.images import save_new_png
from imgclust.stages import evaluate
from support.cli import run_installed
from support.packs import pack_of
from support.paths import REPO


def test_ward_with_auto_k_is_logged_and_predicts_new_images(tmp_path, isolated_mlflow):
    monkeypatch = isolated_mlflow
    rng = np.random.default_rng(0)
    levels = {"dark": 30, "mid": 130, "light": 230}
    rows, arrays = [], []
    for cls, level in levels.items():
        for i in range(8):
            name = f"{cls}/{i}.png"
            rows.append({"file": name, "class": cls, "split": "test" if i % 4 == 0 else "train", "source": name})
            rows[-1]["op"] = "none"
            arrays.append(np.clip(level + rng.normal(scale=12, size=(8, 8)), 0, 255).astype(np.uint8))
            (tmp_path / "images" / cls).mkdir(parents=True, exist_ok=True)
            save_new_png(arrays[-1], tmp_path / "images" / name)
    features = np.stack(arrays).reshape(len(arrays), -1)
    (tmp_path / "features").mkdir()
    store = FeatureStoreWriter(tmp_path / "features", len(rows), features.shape[1], np.uint8)
    store.append(features)
    meta = {"method": "pixels", "n_samples": len(rows), "n_features": 64, "dtype": "uint8"}
    store.close(rows, {**meta, "image_shape": [8, 8], "color_mode": "gray", "extractor": {}})

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["train"].update(clusterer="ward", auto_k={"k_min": 2, "k_max": 5})
    params["train"]["kmeans"]["n_clusters"] = "auto"
    params["train"]["pca"]["n_components"] = 3
    train = config.validate(params).train
    model = fit_model(
        features,
        np.array([r["split"] == "train" for r in rows]),
        method="pixels",
        pca=train.pca.model_dump(),
        kmeans=train.kmeans.model_dump(),
        scalable=train.scalable.model_dump(),
        pca_on_all=False,
        **train.clusterer_settings(),
    )
    joblib.dump(model, tmp_path / "model.joblib")

    monkeypatch.chdir(tmp_path)
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    out = tmp_path / "evaluation"
    evaluate.run(
        tmp_path / "features",
        tmp_path / "model.joblib",
        pack_of(tmp_path / "images", tmp_path / "augmented"),  # the images as augment packs them
        out / "metrics.json",
        out / "plots",
        out / "predictions.csv",
        out / "run.json",
        [],
        config.validate(params),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["auto_k"]["k"] == 3 and metrics["originals"]["ari"] == 1.0
    run_id = json.loads((out / "run.json").read_text())["run_id"]

    expected = {r["file"]: int(r["cluster"]) for r in read_csv(out / "predictions.csv")}
    proc = run_installed(
        "predict",
        str(tmp_path / "images"),
        "--model",
        f"runs:/{run_id}/image_model",
        "--output",
        str(tmp_path / "predicted.csv"),
        cwd=tmp_path,
        env={"MLFLOW_TRACKING_URI": uri},
    )
    predicted = {
        Path(r["path"]).relative_to(tmp_path / "images").as_posix(): int(r["cluster"])
        for r in read_csv(tmp_path / "predicted.csv")
    }
    assert predicted == expected, proc.stdout

    import mlflow.sklearn

    # this process's MLflow may point elsewhere (the run was logged by evaluate's helper process)
    mlflow.set_tracking_uri(uri)
    feature_model = mlflow.sklearn.load_model(f"runs:/{run_id}/model")
    assert np.array_equal(feature_model.predict(features), np.array([expected[r["file"]] for r in rows]))
