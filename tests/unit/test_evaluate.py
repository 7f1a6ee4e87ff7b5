"""evaluate: evaluate_model on a fitted pipeline, the plots' inputs (scatter_coordinates,
thumbnails_by_cluster), and ``imgclust evaluate --no-mlflow`` outputs.

Real data: the synthetic dataset through ingest -> strip_masks -> resize (32x32 gray) -> split ->
augment (honest) -> featurize (pixels) -> train (fit_model). MLflow logging is covered by
tests/system/test_tracking.py.
"""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import joblib
import numpy as np
import pytest
from PIL import Image

from imgclust import config
from imgclust.core.clustering import evaluate_model, fit_model
from imgclust.core.feature_store import INDEX_FIELDS, load_features
from imgclust.core.fsutil import read_csv, write_csv
from imgclust.core.metrics import METRIC_KEYS, clustering_metrics
from imgclust.core.plots import scatter_coordinates, thumbnails_by_cluster
from imgclust.stages.evaluate import PREDICTION_FIELDS
from imgclust.stages.featurize import cnn_params, featurize
from support.cli import run_cli
from support.data import run_data_stages
from support.paths import REPO
from support.project import write_params

SIZE = 32
OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
SHIPPED = config.load(path=REPO / "params.yaml")  # the project's params.yaml


def fit(features: np.ndarray, is_train: np.ndarray, method: str, n_components: int, n_clusters: int, n_init: int = 10):
    """The train stage's model (honest protocol) with these settings, the others as shipped."""
    return fit_model(
        features,
        is_train,
        method=method,
        pca={**SHIPPED.train.pca.model_dump(), "n_components": n_components},
        kmeans={**SHIPPED.train.kmeans.model_dump(), "n_clusters": n_clusters, "n_init": n_init},
        scalable=SHIPPED.train.scalable.model_dump(),
        pca_on_all=False,
    )


def build_features(
    root: Path, source: Path, mode: str = "gray", size: int = SIZE, test_size: float = 0.25
) -> dict[str, Path]:
    """Run the real data stages and featurize (pixels) on ``source``; return the paths."""
    data = run_data_stages(root, source, mode, size, test_size)
    featurize(
        data["images"],
        data["manifest"],
        root / "features",
        method="pixels",
        cnn_params=cnn_params(SHIPPED.featurize.cnn),
        batch_size=SHIPPED.featurize.batch_size,
    )
    return {"images": data["images"], "features": root / "features", "split": data["split"]}


@pytest.fixture(scope="module")
def project(synthetic_dataset, tmp_path_factory):
    root = tmp_path_factory.mktemp("evaluate")
    paths = build_features(root, synthetic_dataset)
    features, index, meta = load_features(paths["features"])
    is_train = np.array([r["split"] == "train" for r in index])
    pipeline = fit(features, is_train, "pixels", n_components=5, n_clusters=3, n_init=4)
    paths["model"] = root / "model.joblib"
    joblib.dump(pipeline, paths["model"])
    return {**paths, "pipeline": pipeline, "features_array": np.asarray(features), "index": index, "meta": meta}


@pytest.fixture(scope="module")
def result(project):
    return evaluate_model(project["pipeline"], project["features_array"], project["index"])


def strict_json(path: Path):
    def refuse(constant):
        raise ValueError(f"{path}: non-standard JSON constant {constant}")

    return json.loads(path.read_text(), parse_constant=refuse)


def read_predictions(path: Path) -> tuple[list[str], list[dict]]:
    with open(path, newline="", encoding="utf-8") as fh:
        reader = csv.DictReader(fh)
        return list(reader.fieldnames or []), list(reader)


def check_png(path: Path) -> None:
    assert path.is_file() and path.stat().st_size > 1000, path
    with Image.open(path) as image:
        image.load()
        assert image.format == "PNG" and min(image.size) >= 100
        assert len(np.unique(np.asarray(image.convert("RGB")).reshape(-1, 3), axis=0)) > 10


# ---------------------------------------------------------------- evaluate_model


def result_is_train(project) -> np.ndarray:
    return np.array([r["split"] == "train" for r in project["index"]])


def test_metrics_for_train_and_test(result, project):
    metrics = result["metrics"]
    assert set(metrics) == {"train", "test", "originals"}
    index = project["index"]
    for split in ("train", "test"):
        assert tuple(metrics[split]) == METRIC_KEYS
        assert metrics[split]["n_samples"] == sum(r["split"] == split for r in index)
        assert 1 <= metrics[split]["n_clusters_found"] <= 3
        assert 0.0 <= metrics[split]["cluster_accuracy"] <= 1.0
        assert -1.0 <= metrics[split]["ari"] <= 1.0


def test_test_rows_are_the_split_originals(result, project):
    """Honest protocol: the scored test rows are exactly the split's test images, none augmented."""
    test_split = sorted(r["path"] for r in read_csv(project["split"]) if r["split"] == "test")
    test_index = [r for r in project["index"] if r["split"] == "test"]
    assert sorted(r["file"] for r in test_index) == test_split
    assert {r["op"] for r in test_index} == {"none"}
    assert result["metrics"]["test"]["n_samples"] == len(test_split)
    assert result["metrics"]["train"]["n_samples"] == len(project["index"]) - len(test_split)


def test_metrics_match_the_metrics_module(result, project):
    splits, labels = result["splits"], result["labels"]
    for split in ("train", "test"):
        rows = splits == split
        expected = clustering_metrics(result["clusters"][rows], labels[rows], result["embedding"][rows])
        assert result["metrics"][split] == pytest.approx(expected, nan_ok=True)


def test_clusters_equal_pipeline_predict(result, project):
    pipeline, features = project["pipeline"], project["features_array"]
    np.testing.assert_array_equal(result["clusters"], pipeline.predict(features))
    np.testing.assert_allclose(result["embedding"], pipeline[:-1].transform(features), rtol=1e-6)
    assert result["embedding"].shape == (len(features), 5)
    assert result["labels"].tolist() == [r["class"] for r in project["index"]]
    assert result["splits"].tolist() == [r["split"] for r in project["index"]]


def test_evaluate_model_kmeans_only_pipeline(project):
    """A model without scaling or PCA (e.g. cnn features with n_components 0) clusters the raw rows."""
    features = project["features_array"].astype(np.float32)
    is_train = result_is_train(project)
    pipeline = fit(features, is_train, "cnn", n_components=0, n_clusters=3)
    out = evaluate_model(pipeline, features, project["index"])
    np.testing.assert_array_equal(out["clusters"], pipeline.predict(features))
    assert out["embedding"].dtype == np.float32 and out["embedding"].shape == features.shape


def test_evaluate_model_pixels_without_pca(project):
    """params.yaml's ``train.pca.n_components: 0``: a scale -> kmeans model must evaluate too."""
    from sklearn.cluster import KMeans
    from sklearn.pipeline import Pipeline

    from imgclust.core.scaling import PixelScaler

    features = project["features_array"]
    is_train = result_is_train(project)
    pipeline = Pipeline([("scale", PixelScaler()), ("kmeans", KMeans(3, n_init=2, random_state=0))])
    pipeline.fit(features[is_train])
    out = evaluate_model(pipeline, features, project["index"])
    np.testing.assert_array_equal(out["clusters"], pipeline.predict(features))
    np.testing.assert_allclose(out["embedding"], features / 255.0, atol=1e-6)


def test_evaluate_model_without_test_rows(project):
    index = [dict(r, split="train") for r in project["index"]]
    out = evaluate_model(project["pipeline"], project["features_array"], index)
    assert set(out["metrics"]) == {"train", "originals"}
    assert out["metrics"]["train"]["n_samples"] == len(index)


def test_scatter_coordinates(result):
    emb = result["embedding"]
    np.testing.assert_array_equal(scatter_coordinates(emb, True), emb[:, :2])
    xy = scatter_coordinates(emb, False)
    assert xy.shape == (len(emb), 2) and np.isfinite(xy).all()


def test_thumbnails_prefer_originals_of_each_cluster(result, project):
    images, captions = thumbnails_by_cluster(project["index"], result["clusters"], project["images"], 3)
    assert set(images) == set(result["clusters"].tolist())
    assert sum(len(v) for v in images.values()) >= 2
    index = project["index"]
    for cluster, arrays in images.items():
        members = [i for i, r in enumerate(index) if result["clusters"][i] == cluster]
        originals = [i for i in members if index[i]["op"] == "none"]
        # originals first; copies (captioned with their op) only fill a cluster short of originals
        assert len(arrays) == min(3, len(members)) and len(captions[cluster]) == len(arrays)
        n_originals_shown = min(3, len(originals))
        for position, (array, caption) in enumerate(zip(arrays, captions[cluster], strict=True)):
            assert array.shape == (SIZE, SIZE) and array.dtype == np.uint8
            pool = originals if position < n_originals_shown else [i for i in members if i not in originals]
            # every thumbnail is the pixels of a member of that cluster, captioned with its class (and op)
            matches = [i for i in pool if np.array_equal(project["features_array"][i], array.reshape(-1))]
            assert matches, f"thumbnail {position} of cluster {cluster} is not one of its members"
            expected = {
                index[i]["class"] + ("" if index[i]["op"] == "none" else f" ({index[i]['op']})") for i in matches
            }
            assert caption in expected


def test_cluster_of_copies_only_shows_copies_with_their_op(project):
    index = project["index"]
    copies = [i for i, r in enumerate(index) if r["op"] != "none"]
    assert copies, "the fixture must hold augmented copies"
    clusters = np.zeros(len(index), dtype=int)
    clusters[copies] = 1  # cluster 1: augmented copies only, as rot180 copies of sector images form
    images, captions = thumbnails_by_cluster(index, clusters, project["images"], 3)
    assert len(images[1]) == min(3, len(copies))
    assert all(caption.endswith(")") and "(" in caption for caption in captions[1])
    assert all(caption in {r["class"] for r in index} for caption in captions[0])


# ---------------------------------------------------------------- CLI --no-mlflow


def evaluate_cli(project, out: Path, features_dir: Path | None = None, check: bool = True):
    """``imgclust evaluate --no-mlflow`` in ``out`` (whose params.yaml sets evaluate.thumbnails 3),
    writing the stage's outputs under ``out/evaluation`` as dvc.yaml does."""
    write_params(out, evaluate__thumbnails=3)
    return run_cli(
        "evaluate",
        "--features",
        str(features_dir or project["features"]),
        "--model",
        str(project["model"]),
        "--images",
        str(project["images"]),
        "--metrics",
        str(out / "evaluation" / "metrics.json"),
        "--plots",
        str(out / "evaluation" / "plots"),
        "--predictions",
        str(out / "evaluation" / "predictions.csv"),
        "--run-info",
        str(out / "evaluation" / "mlflow_run.json"),
        "--no-mlflow",
        cwd=out,
        check=check,
    )


@pytest.fixture(scope="module")
def cli_outputs(project, tmp_path_factory):
    out = tmp_path_factory.mktemp("evaluate_cli")
    proc = evaluate_cli(project, out)
    return out / "evaluation", proc


def test_cli_metrics_json(cli_outputs, result):
    out, proc = cli_outputs
    metrics = strict_json(out / "metrics.json")
    assert set(metrics) == {"train", "test", "originals"}
    for split in ("train", "test"):
        expected = {
            k: (None if isinstance(v, float) and math.isnan(v) else v) for k, v in result["metrics"][split].items()
        }
        assert metrics[split] == pytest.approx(expected)
        assert f"evaluate {split}: ARI {result['metrics'][split]['ari']:.4f}" in proc.stdout
    assert "mlflow" not in proc.stdout
    assert not (out / "mlflow_run.json").exists() and not (out.parent / "mlruns").exists()


def test_cli_predictions_csv(cli_outputs, project):
    out, _ = cli_outputs
    fields, rows = read_predictions(out / "predictions.csv")
    assert fields == list(PREDICTION_FIELDS) == ["file", "class", "split", "op", "cluster"]
    index = project["index"]
    assert [(r["file"], r["class"], r["split"], r["op"]) for r in rows] == [
        (r["file"], r["class"], r["split"], r["op"]) for r in index
    ]
    np.testing.assert_array_equal(
        [int(r["cluster"]) for r in rows], project["pipeline"].predict(project["features_array"])
    )


@pytest.mark.parametrize("name", ["contingency.png", "scatter.png", "thumbnails.png"])
def test_cli_plots(cli_outputs, name):
    out, _ = cli_outputs
    check_png(out / "plots" / name)


def test_cli_metrics_json_is_strict_when_a_metric_is_nan(project, tmp_path):
    """A single test row has no silhouette (NaN): metrics.json must hold null, not NaN."""
    features_dir = tmp_path / "features"
    features_dir.mkdir()
    for name in ("features.npy", "meta.json"):
        (features_dir / name).write_bytes((project["features"] / name).read_bytes())
    index = [dict(r) for r in project["index"]]
    test_rows = [i for i, r in enumerate(index) if r["split"] == "test"]
    for i in test_rows[1:]:
        index[i]["split"] = "train"
    write_csv(features_dir / "index.csv", index, INDEX_FIELDS)
    evaluate_cli(project, tmp_path, features_dir)
    metrics_path = tmp_path / "evaluation" / "metrics.json"
    metrics = strict_json(metrics_path)
    assert metrics["test"]["n_samples"] == 1
    assert metrics["test"]["silhouette"] is None
    assert isinstance(metrics["train"]["silhouette"], float)
    assert "NaN" not in metrics_path.read_text()


def test_cli_missing_model_exits_2(project, tmp_path):
    write_params(tmp_path)
    proc = run_cli(
        "evaluate",
        "--features",
        str(project["features"]),
        "--model",
        str(tmp_path / "none.joblib"),
        "--images",
        str(project["images"]),
        "--metrics",
        str(tmp_path / "metrics.json"),
        "--plots",
        str(tmp_path / "plots"),
        "--predictions",
        str(tmp_path / "predictions.csv"),
        "--run-info",
        str(tmp_path / "mlflow_run.json"),
        "--no-mlflow",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "none.joblib: not found; run the train stage" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_cli_missing_features_exits_2(project, tmp_path):
    write_params(tmp_path)
    proc = run_cli(
        "evaluate",
        "--features",
        str(tmp_path / "nofeatures"),
        "--model",
        str(project["model"]),
        "--images",
        str(project["images"]),
        "--metrics",
        str(tmp_path / "metrics.json"),
        "--plots",
        str(tmp_path / "plots"),
        "--predictions",
        str(tmp_path / "predictions.csv"),
        "--run-info",
        str(tmp_path / "mlflow_run.json"),
        "--no-mlflow",
        cwd=tmp_path,
        check=False,
    )
    assert proc.returncode == 2
    assert "run the featurize stage" in proc.stderr
    assert not (tmp_path / "metrics.json").exists()


def test_training_images_of_pixel_features_are_the_decoded_images(project, monkeypatch):
    """For pixel features the profile reads the store's rows, which are the images decoded: the
    same profile as decoding the pack (augmented copies left out, rgb or gray alike)."""
    from imgclust.stages import evaluate as evaluate_stage

    features, index, meta = load_features(project["features"])
    assert any(r["op"] != "none" for r in index)
    decoded = evaluate_stage.training_images(index, project["images"], None, meta, "lanczos")
    monkeypatch.setattr(evaluate_stage, "PROFILE_IMAGES", 4)  # a sample of the originals, the same on both routes
    sampled = evaluate_stage.training_images(index, project["images"], None, meta, "lanczos")
    monkeypatch.undo()
    assert evaluate_stage.training_images(index, project["images"], None, meta, "lanczos", features) == decoded
    monkeypatch.setattr(evaluate_stage, "PROFILE_IMAGES", 4)
    assert evaluate_stage.training_images(index, project["images"], None, meta, "lanczos", features) == sampled
    assert sampled["n_images"] <= 4 < decoded["n_images"] == sum(r["op"] == "none" for r in index)
    monkeypatch.undo()
    monkeypatch.setattr(evaluate_stage, "PAGE_RELEASE_ROWS", 1)  # pages let go after every row: rows unchanged
    assert evaluate_stage.training_images(index, project["images"], None, meta, "lanczos", features) == decoded
