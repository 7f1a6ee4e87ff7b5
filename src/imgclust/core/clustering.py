"""The clustering model: (pixel scaling,) PCA (optional) and KMeans, fitted on TRAIN rows only.

``fit_model`` takes the model's settings as the sections of params.yaml's ``train`` (``pca``,
``kmeans``, ``scalable``), passed through to scikit-learn, so a new setting needs no code here.
Labels are never used to fit; ``evaluate_model`` and ``scan_k`` score against them afterwards.
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from imgclust.core.metrics import clustering_metrics
from imgclust.core.parallel import iter_batches, release_pages
from imgclust.errors import ParamError

SVD_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")


@contextmanager
def one_thread():
    """BLAS and OpenMP limited to one thread, so that the model and its results do not depend on the
    machine's thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, cores).

    With 2 threads OpenBLAS sums the long products of pixels (36,100 terms) in another order than
    with 1, so PCA's components differed in their last bits; KMeans adds its threads' partial sums in
    the order they finish, and pickles its thread count with the model. Used as a decorator too.
    """
    # threadpoolctl limits only the libraries already loaded: load them first
    import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS: PCA's SVD)
    import sklearn.cluster  # noqa: F401  (scikit-learn's OpenMP runtime: KMeans)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


def check_params(
    n_fit_pca: int, n_train: int, n_features: int, n_components: int | None, n_clusters: int, svd_solver: str
) -> None:
    """Refuse impossible settings before any fitting, with the limit the data imposes."""
    if n_clusters < 2:
        raise ParamError(f"train.kmeans.n_clusters must be >= 2, got {n_clusters}.")
    if n_clusters > n_train:
        raise ParamError(f"train.kmeans.n_clusters={n_clusters} exceeds the {n_train} train images.")
    if svd_solver not in SVD_SOLVERS:
        raise ParamError(f"unknown train.pca.svd_solver {svd_solver!r}; use one of {', '.join(SVD_SOLVERS)}.")
    if n_components is not None:
        limit = min(n_fit_pca, n_features) - (1 if svd_solver == "arpack" else 0)
        if not 1 <= n_components <= limit:
            raise ParamError(
                f"train.pca.n_components={n_components} is not in [1, {limit}] for {n_fit_pca} images x "
                f"{n_features} features (solver {svd_solver}); lower it or set it to 0 to disable PCA."
            )


@one_thread()
def fit_model(
    features: np.ndarray,
    is_train: np.ndarray,
    *,
    method: str,
    pca: dict,
    kmeans: dict,
    scalable: dict,
    pca_on_all: bool,
):
    """Return a fitted ``Pipeline``. PCA is fitted on the train rows, or on all rows when
    ``pca_on_all`` (the tutorial protocol, as the seed recipe did); KMeans always on train rows.

    ``pca``: PCA's arguments (``n_components`` 0 means no PCA); ``kmeans``: KMeans' arguments;
    ``scalable``: ``threshold`` and ``batch_size``. From ``threshold`` rows on, PCA is an
    IncrementalPCA and KMeans a MiniBatchKMeans, both fed ``batch_size`` rows at a time from the
    (memory-mapped) features, so memory stays bounded.
    """
    is_train = np.asarray(is_train, dtype=bool)
    n_fit = len(features) if pca_on_all else int(np.count_nonzero(is_train))
    if n_fit >= scalable["threshold"] > 0:
        return _fit_in_batches(
            features,
            is_train,
            method=method,
            pca=pca,
            kmeans=kmeans,
            batch_size=scalable["batch_size"],
            pca_on_all=pca_on_all,
        )
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    from imgclust.core.scaling import PixelScaler

    pca_args = dict(pca)
    n_components = pca_args.pop("n_components") or None  # 0 means no PCA, as in params.yaml
    n_train = int(is_train.sum())
    check_params(
        len(features) if pca_on_all else n_train,
        n_train,
        features.shape[1],
        n_components,
        kmeans["n_clusters"],
        pca_args.get("svd_solver", "auto"),
    )
    steps = [("scale", PixelScaler())] if method == "pixels" else []
    if n_components:
        # copy=False: PCA receives a float matrix made for this fit alone (scaled pixels or a
        # fancy-indexed copy; a read-only memory map is still copied), so it is centred in place
        # instead of being duplicated (2.6 GB for 18,000 images of 190x190)
        steps.append(
            ("pca", PCA(n_components=n_components, random_state=kmeans["random_state"], copy=False, **pca_args))
        )
    model = KMeans(**kmeans)
    pipeline = Pipeline(steps + [("kmeans", model)])
    if len(steps) == 0:
        pipeline.fit(features[is_train])
        return pipeline
    pipeline[:-1].fit(features if pca_on_all else features[is_train])
    model.fit(embed(pipeline, features[is_train]))  # batch by batch: no second full float matrix
    return pipeline


@one_thread()
def embed(pipeline, features: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """The clustering space (all steps but the clusterer) of ``features``, computed batch by batch
    so that memory-mapped features are never loaded whole."""
    transform = pipeline[:-1] if len(pipeline.steps) > 1 else None
    parts = []
    for start in range(0, len(features), batch_size):
        batch = np.asarray(features[start : start + batch_size])
        parts.append(transform.transform(batch) if transform else batch.astype(np.float32))
        release_pages(features)
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def _fit_in_batches(features, is_train, *, method, pca, kmeans, batch_size, pca_on_all):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA
    from sklearn.pipeline import Pipeline
    from tqdm import tqdm

    from imgclust.core.scaling import PixelScaler

    train_rows = np.flatnonzero(is_train)
    pca_rows = np.arange(len(features)) if pca_on_all else train_rows
    n_components = pca["n_components"] or None
    check_params(len(pca_rows), len(train_rows), features.shape[1], n_components, kmeans["n_clusters"], "auto")
    if n_components and batch_size < n_components:
        raise ParamError(f"train.scalable.batch_size={batch_size} must be >= train.pca.n_components={n_components}.")
    steps = [("scale", PixelScaler())] if method == "pixels" else []
    if n_components:
        model = IncrementalPCA(n_components=n_components, whiten=pca["whiten"], batch_size=batch_size)
        # the last batch may be smaller than n_components, which partial_fit refuses: merge it
        batches = list(iter_batches(pca_rows, batch_size))
        if len(batches) > 1 and len(batches[-1]) < n_components:
            batches[-2:] = [np.concatenate(batches[-2:])]
        for rows in tqdm(batches, desc="train: incremental PCA", unit="batch", disable=None, leave=False):
            chunk = np.asarray(features[rows])
            model.partial_fit(steps[0][1].transform(chunk) if steps else chunk)
            release_pages(features)
        steps.append(("pca", model))
    clusterer = MiniBatchKMeans(**kmeans, batch_size=batch_size)
    pipeline = Pipeline(steps + [("kmeans", clusterer)])
    # the train rows' embedding is small (n x n_components): cluster it in one go
    parts = []
    for rows in iter_batches(train_rows, batch_size):
        parts.append(embed(pipeline, np.asarray(features[rows]), batch_size))
        release_pages(features)  # fancy indexing maps the rows' pages in: let them go again
    clusterer.fit(np.concatenate(parts))
    return pipeline


@one_thread()
def evaluate_model(pipeline, features: np.ndarray, index: list[dict], *, random_state: int = 0) -> dict:
    """Cluster every row and score train and test rows separately.

    Test rows are the split's test images: originals only in the honest protocol; in the tutorial
    protocol they include augmented copies, exactly as the seed recipe scored them.
    """
    embedding = embed(pipeline, features)
    clusters = pipeline.steps[-1][1].predict(embedding)
    labels = np.array([row["class"] for row in index])
    splits = np.array([row["split"] for row in index])
    metrics = {}
    for split in ("train", "test"):
        rows = splits == split
        if rows.any():
            metrics[split] = clustering_metrics(
                clusters[rows], labels[rows], embedding[rows], random_state=random_state
            )
    return {"clusters": clusters, "embedding": embedding, "labels": labels, "splits": splits, "metrics": metrics}


@one_thread()
def scan_k(
    features: np.ndarray,
    index: list[dict],
    ks: list[int],
    *,
    method: str,
    pca: dict,
    kmeans: dict,
    scalable: dict,
    pca_on_all: bool,
) -> list[dict]:
    """Fit the transform part of the model once, then the clusterer for every k on the TRAIN rows,
    with the same settings as ``fit_model``."""
    from sklearn.base import clone
    from sklearn.metrics import adjusted_rand_score
    from tqdm import tqdm

    is_train = np.array([row["split"] == "train" for row in index])
    if not ks or min(ks) < 2 or max(ks) > int(is_train.sum()):
        raise ParamError(f"k must lie in [2, {int(is_train.sum())}] (train images), got {ks}.")
    base = fit_model(
        features,
        is_train,
        method=method,
        pca=pca,
        kmeans={**kmeans, "n_clusters": min(ks), "n_init": 1},
        scalable=scalable,
        pca_on_all=pca_on_all,
    )
    embedding = embed(base, features)
    labels = np.array([row["class"] for row in index])
    random_state = kmeans["random_state"]
    rows = []
    for k in tqdm(ks, desc="scan-k", unit="k", disable=None, leave=False):
        # the train stage's clusterer (KMeans, or MiniBatchKMeans for large data) with k clusters
        clusterer = clone(base.steps[-1][1]).set_params(n_clusters=k, n_init=kmeans["n_init"]).fit(embedding[is_train])
        train = clustering_metrics(clusterer.labels_, labels[is_train], embedding[is_train], random_state=random_state)
        row = {
            "k": k,
            "inertia": float(clusterer.inertia_),
            "silhouette": train["silhouette"],
            "ari_train": train["ari"],
        }
        if (~is_train).any():
            row["ari_test"] = float(adjusted_rand_score(labels[~is_train], clusterer.predict(embedding[~is_train])))
        rows.append(row)
    return rows
