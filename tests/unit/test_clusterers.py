"""Clusterers (kmeans, ward, spectral, gmm, hdbscan), nearest-centre assignment, n_clusters: auto,
their params.yaml keys, and evaluate's metrics over all original images."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import yaml
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score

from imgclust import config
from imgclust.core.clustering import CLUSTERERS, ORIGINALS, evaluate_model, fit_clusterer, fit_model, make_clusterer
from imgclust.errors import ParamError
from imgclust.stages.evaluate import auto_k_metrics, metric_warnings
from support.packs import pack_folder
from support.paths import REPO

SHIPPED = yaml.safe_load((REPO / "params.yaml").read_text())
TRAIN = SHIPPED["train"]
SECTIONS = {name: TRAIN[name] for name in ("spectral", "gmm", "hdbscan")}
CENTRES = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0], [10.0, 10.0]])


def blobs(n_per: int, k: int = 3, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    points = np.concatenate([CENTRES[i] + rng.normal(scale=0.6, size=(n_per, 2)) for i in range(k)])
    return points, np.repeat(np.arange(k), n_per)


def kmeans(n_clusters) -> dict:
    return {**TRAIN["kmeans"], "n_clusters": n_clusters, "n_init": 2}  # 2 restarts: enough for blobs, fast


# well-separated blobs make a disconnected kNN graph: scikit-learn says so, and clusters them right
@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("name", CLUSTERERS)
def test_each_clusterer_finds_blobs_and_places_new_points(name):
    points, truth = blobs(20)
    model = fit_clusterer(name, points, kmeans(3), SECTIONS)
    assert adjusted_rand_score(truth, model.predict(points)) == 1.0
    # new points next to each blob's centre join that blob's cluster
    fresh = CENTRES[:3] + 0.3
    assert [int(c) for c in model.predict(fresh)] == [int(model.predict(points[truth == i][:1])[0]) for i in range(3)]
    again = pickle.loads(pickle.dumps(model))
    assert np.array_equal(again.predict(fresh), model.predict(fresh))
    assert clone(model).get_params() == model.get_params()


@pytest.mark.filterwarnings("ignore:Graph is not fully connected")
@pytest.mark.parametrize("name", ["ward", "spectral", "hdbscan"])
def test_non_inductive_methods_assign_the_nearest_centre(name):
    points, _ = blobs(15)
    model = make_clusterer(name, 3, kmeans(3), SECTIONS).fit(points)
    centres = model.cluster_centers_
    for c, centre in enumerate(centres):  # each centre is its cluster's mean
        assert np.allclose(centre, points[model.labels_ == c].mean(axis=0))
    rng = np.random.default_rng(1)
    new = rng.uniform(-5, 15, size=(50, 2))
    nearest = np.argmin(((new[:, None, :] - centres[None]) ** 2).sum(-1), axis=1)
    assert np.array_equal(model.predict(new), nearest)
    assert np.array_equal(model.labels_, model.predict(points))


def test_hdbscan_that_finds_nothing_names_the_key():
    points = np.random.default_rng(0).uniform(size=(12, 2))  # uniform: all noise
    with pytest.raises(ParamError, match=r"all noise\); lower train.hdbscan.min_cluster_size"):
        fit_clusterer("hdbscan", points, kmeans(3), {"hdbscan": {"min_cluster_size": 6, "min_samples": 0}})
    with pytest.raises(ParamError, match="train.hdbscan.min_cluster_size=20 exceeds the 12 train rows"):
        fit_clusterer("hdbscan", points, kmeans(3), {"hdbscan": {"min_cluster_size": 20, "min_samples": 0}})


@pytest.mark.parametrize("name, criterion", [("kmeans", "silhouette"), ("ward", "silhouette"), ("gmm", "bic")])
def test_auto_k_picks_the_number_of_blobs_and_keeps_the_curve(name, criterion):
    points, truth = blobs(25, k=4)
    model = fit_clusterer(name, points, kmeans("auto"), SECTIONS, {"k_min": 2, "k_max": 6})
    assert model.auto_k_["criterion"] == criterion and model.auto_k_["k"] == 4
    assert sorted(model.auto_k_["curve"]) == [2, 3, 4, 5, 6]
    assert adjusted_rand_score(truth, model.predict(points)) == 1.0
    metrics = auto_k_metrics(model.auto_k_)
    assert metrics["k"] == 4 and set(metrics) == {"k", *(f"{criterion}_k{k}" for k in range(2, 7))}


def test_auto_k_range_is_cut_to_the_rows_and_refused_when_empty():
    points, _ = blobs(2, k=3)  # 6 rows: k up to 5
    assert sorted(
        fit_clusterer("kmeans", points, kmeans("auto"), auto_k={"k_min": 2, "k_max": 10}).auto_k_["curve"]
    ) == [
        2,
        3,
        4,
        5,
    ]
    with pytest.raises(ParamError, match="train.auto_k"):
        fit_clusterer("kmeans", points, kmeans("auto"), auto_k={"k_min": 6, "k_max": 10})


@pytest.mark.parametrize("threshold", [0, 10])
def test_fit_model_with_another_clusterer_and_auto_k(threshold):
    points, truth = blobs(20, k=4)
    features = np.hstack([points, np.random.default_rng(2).normal(scale=0.01, size=(len(points), 3))])
    is_train = np.arange(len(points)) % 5 != 0
    model = fit_model(
        features,
        is_train,
        method="cnn",
        pca={"n_components": 2, "whiten": False, "svd_solver": "auto"},
        kmeans=kmeans("auto"),
        scalable={"threshold": threshold, "batch_size": 16},
        pca_on_all=False,
        clusterer="ward",
        clusterers=SECTIONS,
        auto_k={"k_min": 2, "k_max": 6},
    )
    assert list(model.named_steps) == ["pca", "ward"]
    assert model.named_steps["ward"].auto_k_["k"] == 4
    assert adjusted_rand_score(truth, model.predict(features)) == 1.0


def test_unknown_clusterer_is_refused():
    with pytest.raises(ParamError, match="train.clusterer"):
        fit_model(
            np.zeros((6, 2)),
            np.ones(6, bool),
            method="cnn",
            pca={"n_components": 0},
            kmeans=kmeans(2),
            scalable={"threshold": 0, "batch_size": 4},
            pca_on_all=False,
            clusterer="dbscan",
        )


def test_params_yaml_keys():
    def problems(**changes) -> str:
        params = yaml.safe_load((REPO / "params.yaml").read_text())
        for dotted, value in changes.items():
            *parents, leaf = dotted.split("__")
            node = params
            for key in parents:
                node = node[key]
            node[leaf] = value
        with pytest.raises(ParamError) as info:
            config.validate(params)
        return str(info.value)

    shipped = config.validate(SHIPPED)
    assert shipped.train.clusterer == "kmeans" and shipped.train.kmeans.n_clusters == 3
    auto = yaml.safe_load((REPO / "params.yaml").read_text())
    auto["train"]["kmeans"]["n_clusters"] = "auto"
    assert config.validate(auto).train.clusterer_settings()["auto_k"] == TRAIN["auto_k"]
    assert "did you mean 'auto'" in problems(train__kmeans__n_clusters="Auto").lower()
    assert "k_min (9) must not exceed k_max" in problems(train__auto_k__k_min=9, train__auto_k__k_max=4)
    assert "train.clusterer: 'dbscan' is not one of" in problems(train__clusterer="dbscan")
    assert "train.gmm.covariance_type" in problems(train__gmm__covariance_type="ful")


def test_metrics_over_all_originals():
    points, truth = blobs(6)
    labels = np.array(["a", "b", "c"])[truth]
    # 18 originals (6 of them test) and 18 train copies
    index = [{"class": c, "split": "test" if i % 3 == 0 else "train", "op": "none"} for i, c in enumerate(labels)]
    index += [{"class": c, "split": "train", "op": "rot180"} for c in labels]
    features = np.concatenate([points, points + 0.1]).astype(np.float32)  # as CNN features are
    model = fit_model(
        features,
        np.array([r["split"] == "train" for r in index]),
        method="cnn",
        pca={"n_components": 0},
        kmeans=kmeans(3),
        scalable={"threshold": 0, "batch_size": 4},
        pca_on_all=False,
    )
    result = evaluate_model(model, features, index)
    assert set(result["metrics"]) == {"train", "test", ORIGINALS}
    assert result["metrics"][ORIGINALS]["n_samples"] == 18
    assert result["metrics"]["train"]["n_samples"] == 30 and result["metrics"]["test"]["n_samples"] == 6
    assert result["metrics"][ORIGINALS]["ari"] == 1.0
    assert np.array_equal(result["rows"][ORIGINALS], np.arange(36) < 18)
    assert metric_warnings(result) == []


def test_evaluate_writes_the_chosen_k_and_all_originals(tmp_path):
    """The evaluate stage on a model with n_clusters: auto: metrics.json holds train, test,
    originals and auto_k (the chosen k and the silhouette per k)."""
    import json

    import joblib

    from imgclust.core.feature_store import FeatureStoreWriter
    from imgclust.core.images import save_new_png
    from imgclust.stages import evaluate

    points, truth = blobs(6)
    rows = []
    for i, cls in enumerate(truth):
        rows.append({"file": f"c{cls}/{i}.png", "class": f"c{cls}", "split": "test" if i % 3 == 0 else "train"})
        rows[-1].update(source=rows[-1]["file"], op="none")
        (tmp_path / "images" / f"c{cls}").mkdir(parents=True, exist_ok=True)
        save_new_png(np.full((4, 4), 40 * cls, np.uint8), tmp_path / "images" / rows[-1]["file"])
    pack_folder(tmp_path / "images")  # the pack augment writes
    (tmp_path / "features").mkdir()
    store = FeatureStoreWriter(tmp_path / "features", len(rows), 2, np.float32)
    store.append(points.astype(np.float32))
    store.close(rows, {"method": "cnn", "n_samples": len(rows), "n_features": 2})
    is_train = np.array([r["split"] == "train" for r in rows])
    model = fit_model(
        points.astype(np.float32),
        is_train,
        method="cnn",
        pca={"n_components": 0},
        kmeans=kmeans("auto"),
        scalable={"threshold": 0, "batch_size": 4},
        pca_on_all=False,
        auto_k={"k_min": 2, "k_max": 4},
    )
    joblib.dump(model, tmp_path / "model.joblib")
    params = config.validate({**SHIPPED, "evaluate": {"thumbnails": 1}})
    out = tmp_path / "evaluation"
    evaluate.run(
        tmp_path / "features",
        tmp_path / "model.joblib",
        tmp_path / "images",
        out / "metrics.json",
        out / "plots",
        out / "predictions.csv",
        out / "run.json",
        [],
        params,
        mlflow_log=False,
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics) == {"train", "test", ORIGINALS, "auto_k"}
    assert metrics[ORIGINALS]["n_samples"] == 18 and metrics[ORIGINALS]["ari"] == 1.0
    assert metrics["auto_k"]["k"] == 3 and set(metrics["auto_k"]) == {
        "k",
        "silhouette_k2",
        "silhouette_k3",
        "silhouette_k4",
    }
    assert metrics["auto_k"]["silhouette_k3"] == max(v for k, v in metrics["auto_k"].items() if k != "k")


@pytest.mark.parametrize("name", ["ward", "gmm"])
def test_the_image_level_model_assigns_new_images_like_the_feature_model(name, tmp_path):
    """ImageLoader -> PixelFeatures -> scale -> PCA -> clusterer, as evaluate logs it and predict
    loads it (joblib): new images get the clusters the feature-level model gives their pixels."""
    import joblib

    from imgclust.core.extractors import ImageLoader, PixelFeatures, image_pipeline

    rng = np.random.default_rng(0)
    levels = np.repeat([30, 130, 230], 8)
    images = [np.clip(level + rng.normal(scale=10, size=(6, 6)), 0, 255).astype(np.uint8) for level in levels]
    features = PixelFeatures().transform(images)
    model = fit_model(
        features,
        np.arange(len(images)) % 4 != 0,
        method="pixels",
        pca={"n_components": 3, "whiten": False, "svd_solver": "full"},
        kmeans=kmeans(3),
        scalable={"threshold": 0, "batch_size": 8},
        pca_on_all=False,
        clusterer=name,
        clusterers=SECTIONS,
    )
    joblib.dump(image_pipeline(ImageLoader(6, 6, "gray"), PixelFeatures(), model), tmp_path / "image.joblib")
    loaded = joblib.load(tmp_path / "image.joblib")
    assert np.array_equal(loaded.predict(images), model.predict(features))
    assert adjusted_rand_score(levels, loaded.predict(images)) == 1.0
