"""train: fit_model (what PCA and KMeans are fitted on), check_params, and the ``imgclust train`` CLI.

Real features: the synthetic dataset through ingest -> strip_masks -> resize (32x32 gray) -> split ->
augment (honest) -> featurize (pixels).
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
from pathlib import Path

import joblib
import numpy as np
import pytest
import yaml
from sklearn.decomposition import PCA

from imgclust import config
from imgclust.core.clustering import SVD_SOLVERS, check_params, fit_model
from imgclust.core.feature_store import load_features
from imgclust.core.fit_cache import FitCache
from imgclust.errors import ParamError
from imgclust.stages.featurize import cnn_params, featurize
from support.cli import run_cli
from support.data import run_data_stages
from support.paths import REPO
from support.project import write_params

SIZE = 32
OPS = ["rot180", "flip_lr", "flip_tb", "rot90", "rot270"]
SHIPPED = config.load(path=REPO / "params.yaml")  # the project's params.yaml


def settings(
    *,
    n_components: int | None,
    whiten: bool | None = None,
    svd_solver: str | None = None,
    n_clusters: int | None = None,
    n_init: int | None = None,
    random_state: int | None = None,
    threshold: int | None = None,
    batch_size: int | None = None,
    pca_on_all: bool = False,
) -> dict:
    """fit_model's settings: the shipped train.* sections with the given values in place."""
    train = SHIPPED.train
    given = {
        "pca": {"n_components": n_components, "whiten": whiten, "svd_solver": svd_solver},
        "kmeans": {"n_clusters": n_clusters, "n_init": n_init, "random_state": random_state},
        "scalable": {"threshold": threshold, "batch_size": batch_size},
    }
    result = {
        section: {
            **getattr(train, section).model_dump(),
            **{key: value for key, value in values.items() if value is not None},
        }
        for section, values in given.items()
    }
    result["pca"]["n_components"] = n_components  # None or 0: no PCA
    return {**result, "pca_on_all": pca_on_all}


def build_features(root: Path, source: Path, mode: str = "gray", size: int = SIZE, test_size: float = 0.25) -> Path:
    """Run the real data stages and featurize (pixels) on ``source``; return the features folder."""
    data = run_data_stages(root, source, mode, size, test_size)
    featurize(
        data["images"],
        data["manifest"],
        root / "features",
        method="pixels",
        cnn_params=cnn_params(SHIPPED.featurize.cnn),
        batch_size=SHIPPED.featurize.batch_size,
    )
    return root / "features"


@pytest.fixture(scope="module")
def features_dir(synthetic_dataset, tmp_path_factory) -> Path:
    return build_features(tmp_path_factory.mktemp("train"), synthetic_dataset)


@pytest.fixture(scope="module")
def data(features_dir):
    features, index, meta = load_features(features_dir)
    is_train = np.array([row["split"] == "train" for row in index])
    assert 0 < is_train.sum() < len(index)
    return features, is_train, meta


def scaled(rows: np.ndarray) -> np.ndarray:
    return np.asarray(rows, np.float32) * np.float32(1 / 255)


# ---------------------------------------------------------------- fit_model


def test_pca_is_fitted_on_train_rows_only(data):
    features, is_train, _ = data
    pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=5))
    assert list(pipeline.named_steps) == ["scale", "pca", "kmeans"]
    pca = pipeline.named_steps["pca"]
    train_mean = scaled(features[is_train]).mean(axis=0)
    all_mean = scaled(features).mean(axis=0)
    assert np.abs(train_mean - all_mean).max() > 1e-3  # the check below can tell the two apart
    np.testing.assert_allclose(pca.mean_, train_mean, atol=1e-5)
    assert not np.allclose(pca.mean_, all_mean, atol=1e-5)
    assert pca.n_samples_ == int(is_train.sum())


def test_pca_on_all_rows_when_asked(data):
    features, is_train, _ = data
    pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=5, pca_on_all=True))
    pca = pipeline.named_steps["pca"]
    np.testing.assert_allclose(pca.mean_, scaled(features).mean(axis=0), atol=1e-5)
    assert not np.allclose(pca.mean_, scaled(features[is_train]).mean(axis=0), atol=1e-5)
    assert pca.n_samples_ == len(features)


@pytest.mark.parametrize("pca_on_all", [False, True])
def test_kmeans_is_fitted_on_train_rows_only(data, pca_on_all):
    features, is_train, _ = data
    pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=5, pca_on_all=pca_on_all))
    kmeans = pipeline.named_steps["kmeans"]
    assert kmeans.labels_.shape == (int(is_train.sum()),)
    np.testing.assert_array_equal(kmeans.labels_, pipeline.predict(features[is_train]))


def test_kmeans_and_pca_parameters_are_honoured(data):
    features, is_train, _ = data
    pipeline = fit_model(
        features,
        is_train,
        method="pixels",
        **settings(n_components=7, whiten=True, svd_solver="full", n_clusters=4, n_init=3, random_state=11),
    )
    pca, kmeans = pipeline.named_steps["pca"], pipeline.named_steps["kmeans"]
    assert (pca.n_components, pca.n_components_, pca.whiten, pca.svd_solver, pca.random_state) == (
        7,
        7,
        True,
        "full",
        11,
    )
    assert (kmeans.n_clusters, kmeans.n_init, kmeans.random_state) == (4, 3, 11)
    assert kmeans.cluster_centers_.shape == (4, 7)
    assert set(pipeline.predict(features).tolist()) <= {0, 1, 2, 3}
    # whitened components have unit variance on the rows PCA was fitted on
    embedding = pipeline[:-1].transform(features[is_train])
    np.testing.assert_allclose(embedding.var(axis=0, ddof=1), 1.0, rtol=1e-3)


@pytest.mark.parametrize("n_components", [None, 0])
def test_no_pca_step_without_components(data, n_components):
    features, is_train, _ = data
    pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=n_components, n_clusters=3))
    assert list(pipeline.named_steps) == ["scale", "kmeans"]
    kmeans = pipeline.named_steps["kmeans"]
    assert kmeans.cluster_centers_.shape == (3, features.shape[1])
    assert kmeans.labels_.shape == (int(is_train.sum()),)


def test_non_pixel_features_are_not_scaled(data):
    features, is_train, _ = data
    floats = np.asarray(features, np.float32)
    pipeline = fit_model(floats, is_train, method="cnn", **settings(n_components=None, n_clusters=3))
    assert list(pipeline.named_steps) == ["kmeans"]
    assert pipeline.named_steps["kmeans"].labels_.shape == (int(is_train.sum()),)
    with_pca = fit_model(floats, is_train, method="cnn", **settings(n_components=4))
    assert list(with_pca.named_steps) == ["pca", "kmeans"]
    np.testing.assert_allclose(with_pca.named_steps["pca"].mean_, floats[is_train].mean(axis=0), rtol=1e-4)


def test_same_seed_same_model(data):
    features, is_train, _ = data
    a = fit_model(features, is_train, method="pixels", **settings(n_components=5, random_state=3, n_init=4))
    b = fit_model(features, is_train, method="pixels", **settings(n_components=5, random_state=3, n_init=4))
    np.testing.assert_array_equal(a.predict(features), b.predict(features))
    np.testing.assert_array_equal(a.named_steps["kmeans"].cluster_centers_, b.named_steps["kmeans"].cluster_centers_)
    np.testing.assert_array_equal(a.named_steps["pca"].components_, b.named_steps["pca"].components_)


def test_randomized_and_arpack_solvers_fit(data):
    features, is_train, _ = data
    for solver in ("randomized", "arpack", "covariance_eigh"):
        pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=3, svd_solver=solver))
        assert pipeline.named_steps["pca"].components_.shape == (3, features.shape[1])


def test_scalable_solvers_above_the_threshold(data):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import PCA, IncrementalPCA
    from sklearn.metrics import adjusted_rand_score

    features, is_train, meta = data
    assert isinstance(features, np.memmap)  # streamed from the memory-mapped file, batch by batch
    kwargs = dict(n_components=5, n_clusters=3, n_init=3, random_state=0)
    scalable = fit_model(features, is_train, method="pixels", **settings(threshold=10, batch_size=16, **kwargs))
    exact = fit_model(features, is_train, method="pixels", **settings(threshold=0, **kwargs))
    assert isinstance(scalable.named_steps["pca"], IncrementalPCA)
    assert isinstance(scalable.named_steps["kmeans"], MiniBatchKMeans)
    assert type(exact.named_steps["pca"]) is PCA
    # the incremental PCA spans nearly the same subspace as the exact one: the leading directions
    # agree to 1e-2, the weakest of the five (fitted from 16-row batches) less closely
    overlap = np.linalg.svd(
        scalable.named_steps["pca"].components_ @ exact.named_steps["pca"].components_.T, compute_uv=False
    )
    assert overlap[:3].min() > 0.99 and overlap.min() > 0.8
    labels = scalable.predict(np.asarray(features))
    assert labels.shape == (len(features),) and set(labels) <= {0, 1, 2}
    # deterministic for a seed, and close to the exact clustering on this small set
    again = fit_model(features, is_train, method="pixels", **settings(threshold=10, batch_size=16, **kwargs))
    assert np.array_equal(again.predict(np.asarray(features)), labels)
    assert adjusted_rand_score(exact.predict(np.asarray(features)), labels) > 0.5


def test_embed_batches_are_sized_by_bytes_and_give_the_same_clusters(data, monkeypatch):
    """evaluate's embedding, in batches capped by the bytes of their float64 copy (which an
    IncrementalPCA's transform makes), equals the embedding in one batch up to BLAS rounding (a
    matrix product of another row count may round the last bits differently), with the same clusters."""
    from imgclust.core import clustering

    features, is_train, meta = data
    assert clustering.embed_batch_rows(190 * 190) == 232 and clustering.embed_batch_rows(1024) == 2048
    assert clustering.embed_batch_rows(10**7) == clustering.MIN_EMBED_BATCH
    kwargs = dict(n_components=5, n_clusters=3, n_init=3, random_state=0)
    for threshold in (10, 0):  # IncrementalPCA (its mean is float64), then PCA (float32)
        model = fit_model(features, is_train, method="pixels", **settings(threshold=threshold, batch_size=16, **kwargs))
        rows = np.concatenate([np.asarray(features)] * 6)  # several batches of 64 and a partial one
        whole = clustering.embed(model, rows, len(rows))
        monkeypatch.setattr(clustering, "EMBED_BATCH_BYTES", 8 * rows.shape[1] * 64)
        assert clustering.embed_batch_rows(rows.shape[1]) == 64 < len(rows) and len(rows) % 64
        batched = clustering.embed(model, rows)
        monkeypatch.undo()
        assert batched.dtype == whole.dtype and batched.shape == whole.shape
        np.testing.assert_allclose(batched, whole, rtol=0, atol=1e-5 * float(np.abs(whole).max()))
        clusterer = model.steps[-1][1]
        assert np.array_equal(clusterer.predict(batched), clusterer.predict(whole))


@pytest.mark.slow  # 780 real images through the data stages
def test_scalable_solvers_ari_within_0_01_of_the_exact_ones_on_busi256(tmp_path, busi256):
    """The shipped defaults on the 780 BUSI images at 190x190 (honest protocol, 10 % test): forcing
    IncrementalPCA + MiniBatchKMeans changes train and test ARI by at most 0.01, and the exact
    solvers give the ARI the README reports (0.097 / -0.022)."""
    from sklearn.metrics import adjusted_rand_score

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    features_dir = build_features(tmp_path, busi256, size=190, test_size=params["split"]["test_size"])
    features, index, _ = load_features(features_dir)
    is_train = np.array([row["split"] == "train" for row in index])
    classes = np.array([row["class"] for row in index])
    train = params["train"]  # the shipped pca and kmeans sections, as the train stage passes them
    ari = {}
    for name, threshold in (("exact", 0), ("scalable", 1)):
        model = fit_model(
            features,
            is_train,
            method="pixels",
            pca=train["pca"],
            kmeans=train["kmeans"],
            scalable={**train["scalable"], "threshold": threshold},
            pca_on_all=False,
        )
        labels = model.predict(features)
        ari[name] = np.array([adjusted_rand_score(classes[rows], labels[rows]) for rows in (is_train, ~is_train)])
    np.testing.assert_allclose(ari["exact"], [0.097, -0.022], atol=0.0005)
    assert np.abs(ari["scalable"] - ari["exact"]).max() <= 0.01, ari


def test_scalable_batch_smaller_than_components_is_refused(data):
    features, is_train, _ = data
    with pytest.raises(ParamError, match="batch_size"):
        fit_model(
            features, is_train, method="pixels", **settings(n_components=20, n_clusters=3, threshold=10, batch_size=8)
        )


# ---------------------------------------------------------------- check_params


def test_check_params_accepts_limits():
    assert check_params(20, 20, 100, 20, 20, "auto") is None
    assert check_params(20, 10, 100, 19, 2, "arpack") is None
    assert check_params(20, 10, 100, None, 10, "full") is None
    for solver in SVD_SOLVERS:
        assert check_params(30, 30, 8, 8 - (solver == "arpack"), 3, solver) is None


def test_check_params_n_clusters_below_two():
    with pytest.raises(ParamError, match=r"n_clusters must be >= 2, got 1"):
        check_params(20, 20, 100, 5, 1, "auto")


def test_check_params_more_clusters_than_train_images():
    with pytest.raises(ParamError, match=r"n_clusters=11 exceeds the 10 train images"):
        check_params(10, 10, 100, 5, 11, "auto")


@pytest.mark.parametrize("n_fit, n_features, n_components, limit", [(20, 100, 21, 20), (50, 8, 9, 8)])
def test_check_params_too_many_components(n_fit, n_features, n_components, limit):
    with pytest.raises(ParamError) as info:
        check_params(n_fit, n_fit, n_features, n_components, 3, "auto")
    message = str(info.value)
    assert f"n_components={n_components} is not in [1, {limit}]" in message
    assert f"{n_fit} images x {n_features} features" in message and "set it to 0" in message


def test_check_params_arpack_needs_one_component_less():
    check_params(20, 20, 100, 19, 3, "arpack")
    with pytest.raises(ParamError, match=r"not in \[1, 19\].*arpack"):
        check_params(20, 20, 100, 20, 3, "arpack")


def test_check_params_negative_components():
    with pytest.raises(ParamError, match=r"n_components=-1"):
        check_params(20, 20, 100, -1, 3, "auto")


def test_check_params_unknown_solver():
    with pytest.raises(ParamError) as info:
        check_params(20, 20, 100, 5, 3, "lapack")
    assert "'lapack'" in str(info.value) and ", ".join(SVD_SOLVERS) in str(info.value)


def test_fit_model_limits_come_from_train_rows(data):
    """Honest protocol: PCA sees only train rows, so its component limit is the train count."""
    features, is_train, _ = data
    n_train = int(is_train.sum())
    with pytest.raises(ParamError, match=rf"not in \[1, {n_train}\]"):
        fit_model(features, is_train, method="pixels", **settings(n_components=n_train + 1))
    # the tutorial protocol fits PCA on all rows, so the same value is fine there
    pipeline = fit_model(features, is_train, method="pixels", **settings(n_components=n_train + 1, pca_on_all=True))
    assert pipeline.named_steps["pca"].n_components_ == n_train + 1
    with pytest.raises(ParamError, match=rf"exceeds the {n_train} train images"):
        fit_model(features, is_train, method="pixels", **settings(n_components=0, n_clusters=n_train + 1))


# ---------------------------------------------------------------- CLI


def test_cli_train_writes_the_model(features_dir, data, tmp_path):
    features, is_train, _ = data
    work = tmp_path / "work"
    write_params(
        work,
        protocol="honest",
        train__pca__n_components=6,
        train__pca__svd_solver="full",
        train__kmeans__n_clusters=3,
        train__kmeans__n_init=2,
        train__kmeans__random_state=5,
        train__pca__whiten=False,
    )
    out = tmp_path / "models" / "model.joblib"
    proc = run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work)
    assert f"scale -> pca -> kmeans on {int(is_train.sum())} train rows" in proc.stdout
    model = joblib.load(out)
    expected = fit_model(
        features,
        is_train,
        method="pixels",
        **settings(n_components=6, svd_solver="full", n_clusters=3, n_init=2, random_state=5),
    )
    np.testing.assert_array_equal(model.predict(features), expected.predict(features))
    np.testing.assert_allclose(model.named_steps["pca"].mean_, scaled(features[is_train]).mean(axis=0), atol=1e-5)
    assert model.named_steps["pca"].whiten is False


def test_cli_train_zero_components_means_no_pca(features_dir, data, tmp_path):
    """params.yaml documents ``train.pca.n_components: 0`` as "no PCA"."""
    features, is_train, _ = data
    work = tmp_path / "work"
    write_params(work, train__pca__n_components=0, train__kmeans__n_clusters=3)
    out = tmp_path / "model.joblib"
    proc = run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work, check=False)
    assert proc.returncode == 0, proc.stderr
    model = joblib.load(out)
    assert list(model.named_steps) == ["scale", "kmeans"]
    assert model.named_steps["kmeans"].cluster_centers_.shape == (3, features.shape[1])


def test_cli_train_tutorial_protocol_fits_pca_on_all_rows(features_dir, data, tmp_path):
    features, _, _ = data
    work = tmp_path / "work"
    write_params(work, protocol="tutorial", train__pca__n_components=4, train__pca__whiten=True)
    out = tmp_path / "model.joblib"
    run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work)
    pca = joblib.load(out).named_steps["pca"]
    assert pca.whiten is True
    np.testing.assert_allclose(pca.mean_, scaled(features).mean(axis=0), atol=1e-5)


@pytest.mark.parametrize(
    "overrides, message",
    [
        # refused by params.yaml's schema, before the features are read
        (
            {"train__kmeans__n_clusters": 1},
            "train.kmeans.n_clusters: Input should be greater than or equal to 2 (got 1).",
        ),
        ({"train__pca__svd_solver": "lapack"}, "train.pca.svd_solver: 'lapack' is not one of 'auto', "),
        # refused for the data at hand
        ({"train__kmeans__n_clusters": 500}, "n_clusters=500 exceeds the"),
        ({"train__pca__n_components": 5000}, "train.pca.n_components=5000 is not in [1, "),
    ],
)
def test_cli_train_bad_params_exit_2_without_model(features_dir, tmp_path, overrides, message):
    work = tmp_path / "work"
    write_params(work, **overrides)
    out = tmp_path / "model.joblib"
    proc = run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work, check=False)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and message in proc.stderr
    assert "Traceback" not in proc.stderr
    # nothing written besides the params.yaml the test wrote
    assert not out.exists() and list(tmp_path.iterdir()) == [work]
    assert list(work.iterdir()) == [work / "params.yaml"]


def test_cli_train_missing_features_exit_2(tmp_path):
    work = tmp_path / "work"
    write_params(work)
    proc = run_cli(
        "train", "--features", str(tmp_path / "nope"), "--out", str(tmp_path / "m.joblib"), cwd=work, check=False
    )
    assert proc.returncode == 2
    assert "run the featurize stage" in proc.stderr
    assert not (tmp_path / "m.joblib").exists()


# ---------------------------------------------------------------- the fitted-PCA cache (core/fit_cache.py)


def model_bytes(model) -> bytes:
    buffer = io.BytesIO()
    joblib.dump(model, buffer)
    return buffer.getvalue()


CACHE_CASES = {
    "exact": {"n_components": 5},
    "tutorial": {"n_components": 5, "pca_on_all": True},
    "incremental": {"n_components": 5, "threshold": 10, "batch_size": 16},
    "whiten, arpack": {"n_components": 5, "whiten": True, "svd_solver": "arpack"},
}


@pytest.mark.parametrize("case", CACHE_CASES)
def test_cache_hit_gives_the_bytes_of_a_cold_fit(data, tmp_path, case):
    """A rerun that changes only the clusterer reuses the PCA and writes the same model, byte for
    byte, as a fit without the cache; so does a first fit that stores an entry."""
    features, is_train, _ = data
    cache = FitCache(tmp_path / "cache")
    for k in (3, 4):
        given = settings(**CACHE_CASES[case], n_clusters=k, n_init=2)
        cold = model_bytes(fit_model(features, is_train, method="pixels", **given))
        cached = model_bytes(fit_model(features, is_train, method="pixels", **given, cache=cache))
        assert cache.last == ("stored" if k == 3 else "hit")
        assert cached == cold
    assert len(list((tmp_path / "cache").iterdir())) == 1
    # an entry holds plain arrays and a manifest: nothing a loader would unpickle
    entry = next((tmp_path / "cache").iterdir())
    assert {p.suffix for p in entry.iterdir()} == {".npy", ".json"}
    for path in entry.glob("*.npy"):
        np.load(path, allow_pickle=False)


def test_cache_keys_on_the_features_content_and_the_pca_settings(features_dir, data, tmp_path):
    features, is_train, _ = data
    cache = FitCache(tmp_path / "cache")
    fit_model(features, is_train, method="pixels", **settings(n_components=5, n_init=1), cache=cache)
    assert cache.last == "stored"
    # another PCA setting or other train rows: another entry
    fit_model(features, is_train, method="pixels", **settings(n_components=4, n_init=1), cache=cache)
    assert cache.last == "stored"
    other_rows = is_train.copy()
    other_rows[np.flatnonzero(is_train)[0]] = False
    fit_model(features, other_rows, method="pixels", **settings(n_components=5, n_init=1), cache=cache)
    assert cache.last == "stored"
    # one pixel changed in a copy of the store: its digest differs, so no entry is reused
    changed = tmp_path / "changed"
    shutil.copytree(features_dir, changed)
    raw = np.load(changed / "features.npy", mmap_mode="r+")
    raw[0, 0] ^= 1
    raw.flush()
    del raw
    features2, _, _ = load_features(changed)
    fit_model(features2, is_train, method="pixels", **settings(n_components=5, n_init=1), cache=cache)
    assert cache.last == "stored"
    assert len(list((tmp_path / "cache").iterdir())) == 4


def _entry(folder: Path) -> tuple[Path, dict]:
    (entry,) = folder.iterdir()
    return entry, json.loads((entry / "manifest.json").read_text())


def test_damaged_or_wrong_cache_entries_are_refitted_over(data, tmp_path):
    features, is_train, _ = data
    given = settings(n_components=5, n_init=2)
    expected = model_bytes(fit_model(features, is_train, method="pixels", **given))
    cache = FitCache(tmp_path / "cache")
    fit_model(features, is_train, method="pixels", **given, cache=cache)
    entry, manifest = _entry(tmp_path / "cache")
    components = next(a for a in manifest["attributes"] if a["name"] == "components_")

    # a changed byte: its digest no longer matches
    path = entry / components["file"]
    path.write_bytes(path.read_bytes()[:-1] + b"\x01")
    assert model_bytes(fit_model(features, is_train, method="pixels", **given, cache=cache)) == expected
    assert cache.last == "stored"

    # a consistent entry (digests updated) whose PCA does not give its embedding: refused too
    entry, manifest = _entry(tmp_path / "cache")
    components = next(a for a in manifest["attributes"] if a["name"] == "components_")
    path = entry / components["file"]
    array = np.load(path)
    np.save(path, array[::-1].copy(order="A"))
    components["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    model = fit_model(features, is_train, method="pixels", **given, cache=cache)
    assert model_bytes(model) == expected and cache.last == "stored"

    # a pickled (object) array in place of the embedding: refused without unpickling it
    entry, manifest = _entry(tmp_path / "cache")
    path = entry / manifest["embedding"]["file"]
    np.save(path, np.array([{"x": 1}], dtype=object), allow_pickle=True)
    manifest["embedding"]["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    (entry / "manifest.json").write_text(json.dumps(manifest))
    cache2 = FitCache(tmp_path / "cache")
    assert cache2.load(entry.name, PCA(n_components=5)) is None
    assert cache2.last.startswith("refused: ") and "pickle" in cache2.last.lower()
    assert not entry.exists()  # a refused entry is removed


def test_cache_keeps_the_most_recently_used_entries(data, tmp_path):
    features, is_train, _ = data
    cache = FitCache(tmp_path / "cache", max_entries=2)
    for n_components in (3, 4, 5):
        fit_model(features, is_train, method="pixels", **settings(n_components=n_components, n_init=1), cache=cache)
        assert cache.last == "stored"
    assert len(list((tmp_path / "cache").iterdir())) == 2
    fit_model(features, is_train, method="pixels", **settings(n_components=4, n_init=1), cache=cache)
    assert cache.last == "hit"
    fit_model(features, is_train, method="pixels", **settings(n_components=3, n_init=1), cache=cache)
    assert cache.last == "stored"  # evicted first as the oldest


def test_cli_train_reuses_the_pca_after_a_k_change(features_dir, data, tmp_path, monkeypatch):
    """What `dvc repro` does after train.kmeans.n_clusters changes: the second train run only
    clusters, and writes the model a fit from nothing writes."""
    monkeypatch.delenv(config.CACHE_ENV)  # the project's own cache, as under dvc repro
    features, is_train, _ = data
    work = tmp_path / "work"
    out = tmp_path / "model.joblib"
    write_params(work, train__pca__n_components=5, train__kmeans__n_clusters=3)
    first = run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work)
    assert "PCA cache (.imgclust/cache/train): stored" in first.stdout
    write_params(work, train__pca__n_components=5, train__kmeans__n_clusters=4)
    second = run_cli("train", "--features", str(features_dir), "--out", str(out), cwd=work)
    assert "PCA cache (.imgclust/cache/train): hit" in second.stdout
    expected = fit_model(features, is_train, method="pixels", **settings(n_components=5, n_clusters=4))
    assert out.read_bytes() == model_bytes(expected)
    assert [p.name for p in (work / ".imgclust" / "cache").iterdir()] == ["train"]
