"""The clustering model: (pixel scaling,) PCA (optional) and a clusterer, fitted on TRAIN rows only.

``fit_model`` takes the model's settings as the sections of params.yaml's ``train`` (``pca``,
``kmeans``, ``scalable``, and for the other clusterers ``clusterer``, ``auto_k``, ``spectral``,
``gmm``, ``hdbscan``), passed through to scikit-learn, so a new setting needs little code here.
Labels are never used to fit; ``evaluate_model`` and ``scan_k`` score against them afterwards.

Clusterers: k-means (the default), Ward agglomerative, spectral on a k-nearest-neighbour graph, a
Gaussian mixture and HDBSCAN. Ward, spectral and HDBSCAN cannot place new points themselves: they
are wrapped in ``CentroidClusterer``, which assigns every row, train rows included, to the nearest
centre (the mean of a cluster's train rows) in the embedding, so the image-level model and
``predict`` treat new images exactly as the training images. ``train.kmeans.n_clusters`` is the k of
every clusterer but HDBSCAN (which finds its own); ``auto`` picks it in ``train.auto_k``'s range by
the silhouette (BIC for the Gaussian mixture).
"""

from __future__ import annotations

from contextlib import contextmanager

import numpy as np

from imgclust.core.memory import large_empty
from imgclust.core.metrics import clustering_metrics
from imgclust.core.parallel import iter_batches, release_pages
from imgclust.errors import ParamError

SVD_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")
CLUSTERERS = ("kmeans", "ward", "spectral", "gmm", "hdbscan")
COVARIANCE_TYPES = ("full", "tied", "diag", "spherical")
AUTO_K = "auto"
ORIGINALS = "originals"  # evaluate's group of every original image (train and test, no augmented copy)
# what train.auto_k maximises (silhouette) or minimises (bic) for each clusterer that takes a k
AUTO_K_CRITERIA = {"kmeans": "silhouette", "ward": "silhouette", "spectral": "silhouette", "gmm": "bic"}
EMBED_BATCH = 2048  # rows per batch where the exact path scales and embeds rows
# embed's batches: at most this many bytes for the float64 copy a PCA's transform centres (an
# IncrementalPCA's mean is float64); 2048 rows of 190x190 pixels would make it 590 MB
EMBED_BATCH_BYTES = 64 * 2**20
MIN_EMBED_BATCH = 64  # rows: a floor for very wide rows, so the batches stay matrix products, not single rows


def make_clusterer(name: str, n_clusters: int, kmeans: dict, clusterers: dict | None = None, batch_size=None):
    """An unfitted clusterer ``name`` with ``n_clusters`` clusters; ``kmeans`` is train.kmeans (its
    random_state seeds every method), ``clusterers`` the sections train.spectral/gmm/hdbscan;
    ``batch_size``: k-means as MiniBatchKMeans (the scalable path)."""
    clusterers = clusterers or {}
    if name == "kmeans":
        from sklearn.cluster import KMeans, MiniBatchKMeans

        args = {**kmeans, "n_clusters": n_clusters}
        return MiniBatchKMeans(**args, batch_size=batch_size) if batch_size else KMeans(**args)
    if name == "gmm":
        from sklearn.mixture import GaussianMixture

        return GaussianMixture(
            n_components=n_clusters, random_state=kmeans["random_state"], **clusterers.get("gmm", {})
        )
    if name not in CLUSTERERS:
        raise ParamError(f"unknown train.clusterer {name!r}; use one of {', '.join(CLUSTERERS)}.")
    options = {}
    if name == "spectral":
        options = {"n_neighbors": clusterers.get("spectral", {}).get("n_neighbors", 10)}
    if name == "hdbscan":
        hdbscan = clusterers.get("hdbscan", {})
        options = {
            "min_cluster_size": hdbscan.get("min_cluster_size", 5),
            "min_samples": hdbscan.get("min_samples") or None,  # 0: as min_cluster_size
        }
    from imgclust.core.clusterers import CentroidClusterer

    return CentroidClusterer(method=name, n_clusters=n_clusters, random_state=kmeans["random_state"], **options)


def auto_k_range(auto_k: dict | None, n_rows: int) -> list[int]:
    """The k that ``n_clusters: auto`` tries: train.auto_k's [k_min, k_max], at most n_rows - 1."""
    auto_k = auto_k or {"k_min": 2, "k_max": 10}
    k_max = min(auto_k["k_max"], n_rows - 1)
    if auto_k["k_min"] > k_max:
        raise ParamError(
            f"train.auto_k: no k in [{auto_k['k_min']}, {auto_k['k_max']}] fits {n_rows} train rows "
            f"(k must stay below the number of rows); lower train.auto_k.k_min."
        )
    return list(range(auto_k["k_min"], k_max + 1))


def fit_clusterer(
    name: str,
    embedding: np.ndarray,
    kmeans: dict,
    clusterers: dict | None = None,
    auto_k: dict | None = None,
    batch_size=None,
):
    """Fit clusterer ``name`` on ``embedding``. With ``kmeans["n_clusters"] == "auto"`` fit every k
    of ``auto_k``'s range and keep the best by AUTO_K_CRITERIA; the fitted clusterer then carries
    ``auto_k_`` = {"criterion", "k", "curve": {k: value}}."""
    from imgclust.core.metrics import silhouette

    if name == "hdbscan" or kmeans["n_clusters"] != AUTO_K:
        k = kmeans["n_clusters"] if name != "hdbscan" else 0
        return make_clusterer(name, k, kmeans, clusterers, batch_size).fit(embedding)
    criterion = AUTO_K_CRITERIA[name]
    curve, best, best_value = {}, None, None
    for k in auto_k_range(auto_k, len(embedding)):
        model = make_clusterer(name, k, kmeans, clusterers, batch_size).fit(embedding)
        if criterion == "bic":
            value = float(model.bic(np.asarray(embedding, dtype=np.float64)))
            better = best_value is None or value < best_value
        else:
            value = silhouette(model.predict(embedding), embedding, random_state=kmeans["random_state"])
            better = value == value and (best_value is None or value > best_value)
        curve[k] = value
        if better or best is None:
            best, best_value = model, (value if better else best_value)
    best.auto_k_ = {"criterion": criterion, "k": int(_n_clusters(best)), "curve": curve}
    return best


def _n_clusters(model) -> int:
    return getattr(model, "n_components", None) or getattr(model, "n_clusters", None)


@contextmanager
def one_thread():
    """BLAS and OpenMP limited to one thread, so that the model and its results do not depend on the
    machine's thread count (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, cores).

    With 2 threads OpenBLAS sums the long products of pixels (36,100 terms) in another order than
    with 1, so PCA's components differed in their last bits; KMeans adds its threads' partial sums in
    the order they finish, and pickles its thread count with the model. Used as a decorator too.
    PCA's fit runs at a fixed two BLAS threads (``pca_fit_threads``), never the machine's count.
    """
    # threadpoolctl limits only the libraries already loaded: load them first
    import scipy.linalg  # noqa: F401  (scipy's own OpenBLAS: PCA's SVD)
    import sklearn.cluster  # noqa: F401  (scikit-learn's OpenMP runtime: KMeans)
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=1):
        yield


# PCA's fit is a few long products of the float pixel matrix (16 passes over 2.6 GB at 18,000 images
# of 190 x 190): on 2 cores, 2 BLAS threads fit it in 0.6x the time of one. OpenBLAS splits a
# product among its threads by their number alone, so a fixed number gives the same bits on every
# machine: measured, the same components with 2 threads on 2 cores and on 1 (taskset), where it
# took 2.4x longer. Never the machine's core count, which would make the model depend on it.
PCA_FIT_BLAS_THREADS = 2


@contextmanager
def pca_fit_threads():
    """Inside ``one_thread``: BLAS at PCA_FIT_BLAS_THREADS threads, OpenMP (KMeans) still at one."""
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=PCA_FIT_BLAS_THREADS, user_api="blas"):
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
    clusterer: str = "kmeans",
    clusterers: dict | None = None,
    auto_k: dict | None = None,
    cache=None,
):
    """Return a fitted ``Pipeline``. PCA is fitted on the train rows, or on all rows when
    ``pca_on_all`` (the tutorial protocol, as the seed recipe did); KMeans always on train rows.

    ``pca``: PCA's arguments (``n_components`` 0 means no PCA); ``kmeans``: KMeans' arguments;
    ``scalable``: ``threshold`` and ``batch_size``. From ``threshold`` rows on, PCA is an
    IncrementalPCA and KMeans a MiniBatchKMeans, both fed ``batch_size`` rows at a time from the
    (memory-mapped) features, so memory stays bounded. ``clusterer`` (one of CLUSTERERS) with its
    sections ``clusterers`` (train.spectral/gmm/hdbscan) and ``auto_k`` (see ``fit_clusterer``).
    ``cache``: a ``core.fit_cache.FitCache`` that keeps the fitted PCA and the train rows' embedding
    (see ``_fit_transform``); the model is byte for byte the same with or without it.
    """
    is_train = np.asarray(is_train, dtype=bool)
    if clusterer not in CLUSTERERS:
        raise ParamError(f"unknown train.clusterer {clusterer!r}; use one of {', '.join(CLUSTERERS)}.")
    choice = {"clusterer": clusterer, "clusterers": clusterers, "auto_k": auto_k}
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
            cache=cache,
            **choice,
        )
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
        _checked_k(kmeans, clusterer, auto_k, n_train),
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
    if n_components:
        steps[-1:], embedding = _fit_transform(
            steps,
            features,
            is_train,
            pca_on_all,
            # the PCA gets a float matrix made for this fit alone, filled batch by batch
            lambda pipeline: _fit_pca(
                pipeline.steps[-1][1],
                _rows_matrix(
                    pipeline[:-1], features, np.arange(len(features)) if pca_on_all else np.flatnonzero(is_train)
                ),
            ),
            EMBED_BATCH,
            cache,
        )
    elif steps:
        embedding = _embed_rows(Pipeline(steps + [("none", None)]), features, np.flatnonzero(is_train), EMBED_BATCH)
    else:
        embedding = np.asarray(features[is_train])
    model = fit_clusterer(clusterer, embedding, kmeans, clusterers, auto_k)
    return Pipeline(steps + [(clusterer, model)])


def _fit_pca(pca, matrix: np.ndarray):
    with pca_fit_threads():
        return pca.fit(matrix)


def _checked_k(kmeans: dict, clusterer: str, auto_k: dict | None, n_train: int) -> int:
    """The k that check_params checks: a fixed k, or auto's smallest (its range is cut to the data)."""
    if clusterer == "hdbscan":
        return 2
    if kmeans["n_clusters"] == AUTO_K:
        return auto_k_range(auto_k, n_train)[0]
    return kmeans["n_clusters"]


def _fit_transform(steps, features, is_train, pca_on_all, fit, batch_size, cache):
    """Fit the transform ``steps`` (scaling, then the PCA: the last step, the only one with a state)
    with ``fit(Pipeline(steps))``, or restore the PCA from ``cache``; return ([("pca", fitted)],
    the train rows' embedding, computed ``batch_size`` rows at a time).

    The cache key covers all the fitted PCA and the embedding depend on: the features' content, the
    fit and train rows, the steps' classes and parameters, ``batch_size``, the library versions and
    this code (see ``core.fit_cache``), so an entry holds the bits a fit would make here. Its files
    are checked against their digests as they are read, and it is used only if the restored PCA
    maps a sample of the train rows onto the stored embedding (``_embedding_matches``).
    """
    from sklearn.base import clone
    from sklearn.pipeline import Pipeline

    from imgclust.core import fit_cache

    name, pca = steps[-1]
    train_rows = np.flatnonzero(is_train)
    key = None
    if cache is not None:
        try:
            descriptions = [fit_cache.estimator_description(step) for _, step in steps]
        except TypeError:  # a parameter a key cannot hold (e.g. a RandomState): no caching
            descriptions = None
        if descriptions is not None:
            key = fit_cache.cache_key(
                {
                    "features": fit_cache.array_digest(features),
                    "fit_rows": "all" if pca_on_all else fit_cache.rows_digest(is_train),
                    "train_rows": fit_cache.rows_digest(is_train),
                    "steps": descriptions,
                    "embed_batch": batch_size,
                    "code": fit_cache.code_version(),
                }
            )
            found = cache.load(key, clone(pca))
            if found is not None:
                restored, embedding = found
                if _embedding_matches(
                    Pipeline(steps[:-1] + [(name, restored), ("none", None)]), features, train_rows, embedding
                ):
                    return [(name, restored)], embedding
                cache.last = "refused: its embedding is not the features' own"
                cache.discard(key)
    fit(Pipeline(steps))
    # batch by batch: no second full float matrix
    embedding = _embed_rows(Pipeline(steps + [("none", None)]), features, train_rows, batch_size)
    if key is not None:
        cache.store(key, pca, embedding)
    return [(name, pca)], embedding


def _embedding_matches(transform, features, train_rows: np.ndarray, embedding: np.ndarray, n_sample: int = 64) -> bool:
    """Whether ``transform`` maps ``n_sample`` train rows spread over all of them onto their rows of
    ``embedding``, to float32 rounding (in one small batch, so not bit for bit: the stored embedding
    was computed in larger batches)."""
    if embedding.shape[0] != len(train_rows) or not len(train_rows):
        return False
    sample = np.unique(np.linspace(0, len(train_rows) - 1, min(n_sample, len(train_rows))).astype(np.int64))
    again = _embed_rows(transform, features, train_rows[sample], len(sample))
    if again.shape != embedding[sample].shape:
        return False
    tolerance = 1e-4 * float(np.abs(embedding[sample]).max()) + 1e-6
    return bool(np.abs(again.astype(np.float64) - embedding[sample]).max() <= tolerance)


def _rows_matrix(transform, features, rows: np.ndarray, batch_size: int = EMBED_BATCH) -> np.ndarray:
    """``transform.transform(features[rows])`` (elementwise steps, maybe none) as one new matrix,
    filled batch by batch: no full copy of the raw rows next to it."""
    if not len(transform):
        return np.asarray(features[rows])  # a copy: fancy indexing
    scaler = _only_pixel_scaler(transform)
    raw, out = None, None
    for start in range(0, len(rows), batch_size):
        raw = _read_rows(features, rows[start : start + batch_size], raw)
        if scaler is not None:
            if out is None:
                out = large_empty((len(rows), features.shape[1]), np.float32)
            scaler.transform_into(raw, out[start : start + len(raw)])
        else:
            part = transform.transform(raw)
            if out is None:
                out = large_empty((len(rows), part.shape[1]), part.dtype)
            out[start : start + len(part)] = part
        release_pages(features)
    return out


def _only_pixel_scaler(transform):
    """The PixelScaler when it is ``transform``'s only step, else None."""
    from imgclust.core.scaling import PixelScaler

    steps = transform.steps
    return steps[0][1] if len(steps) == 1 and type(steps[0][1]) is PixelScaler else None


def _read_rows(features, rows, buffer: np.ndarray | None) -> np.ndarray:
    """``features[rows]`` (rows: a sorted index array) in ``buffer`` when it is large enough (reused
    from batch to batch), else in a new array."""
    n = len(rows)
    if buffer is None or len(buffer) < n:
        buffer = np.empty((n, features.shape[1]), features.dtype)
    return np.take(features, rows, axis=0, out=buffer[:n], mode="clip")  # "raise" buffers its output


def _embed_rows(transform, features, rows: np.ndarray, batch_size: int) -> np.ndarray:
    """``embed`` of ``features[rows]``, bit for bit, without copying all those rows at once."""
    parts, raw = [], None
    apply = _batch_transform(transform[:-1] if len(transform.steps) > 1 else None)
    for start in range(0, len(rows), batch_size):
        raw = _read_rows(features, rows[start : start + batch_size], raw)
        parts.append(apply(raw))
        release_pages(features)  # the rows' pages mapped in: let them go again
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def _batch_transform(transform):
    """``transform.transform`` (None: float32 rows) for batch after batch, bit for bit; a leading
    pixel scaling writes into one buffer reused by every batch, and the result is always a new array."""
    if transform is None:
        return lambda batch: batch.astype(np.float32)
    from imgclust.core.scaling import PixelScaler

    scaler = transform.steps[0][1]
    if type(scaler) is not PixelScaler:
        return transform.transform
    rest = transform[1:] if len(transform.steps) > 1 else None
    buffers = []

    def apply(batch):
        batch = np.asarray(batch)
        if not buffers or buffers[0].shape[0] < len(batch) or buffers[0].shape[1:] != batch.shape[1:]:
            buffers[:] = [np.empty(batch.shape, np.float32)]
        scaled = scaler.transform_into(batch, buffers[0][: len(batch)])
        return rest.transform(scaled) if rest is not None else scaled.copy()

    return apply


def embed_batch_rows(n_features: int) -> int:
    """``embed``'s rows per batch for rows of ``n_features``: EMBED_BATCH, fewer for wide rows."""
    return max(MIN_EMBED_BATCH, min(EMBED_BATCH, EMBED_BATCH_BYTES // (8 * max(n_features, 1))))


@one_thread()
def embed(pipeline, features: np.ndarray, batch_size: int | None = None) -> np.ndarray:
    """The clustering space (all steps but the clusterer) of ``features``, computed batch by batch
    (``embed_batch_rows`` unless given) so that memory-mapped features are never loaded whole."""
    batch_size = batch_size or embed_batch_rows(features.shape[1])
    apply = _batch_transform(pipeline[:-1] if len(pipeline.steps) > 1 else None)
    parts = []
    for start in range(0, len(features), batch_size):
        parts.append(apply(np.asarray(features[start : start + batch_size])))
        release_pages(features)
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def _fit_in_batches(
    features, is_train, *, method, pca, kmeans, batch_size, pca_on_all, clusterer, clusterers, auto_k, cache
):
    from sklearn.decomposition import IncrementalPCA
    from sklearn.pipeline import Pipeline
    from tqdm import tqdm

    from imgclust.core.scaling import PixelScaler

    train_rows = np.flatnonzero(is_train)
    pca_rows = np.arange(len(features)) if pca_on_all else train_rows
    n_components = pca["n_components"] or None
    n_clusters = _checked_k(kmeans, clusterer, auto_k, len(train_rows))
    check_params(len(pca_rows), len(train_rows), features.shape[1], n_components, n_clusters, "auto")
    if n_components and batch_size < n_components:
        raise ParamError(f"train.scalable.batch_size={batch_size} must be >= train.pca.n_components={n_components}.")
    steps = [("scale", PixelScaler())] if method == "pixels" else []

    def fit_in_batches(pipeline):
        model = pipeline.steps[-1][1]
        # the last batch may be smaller than n_components, which partial_fit refuses: merge it
        batches = list(iter_batches(pca_rows, batch_size))
        if len(batches) > 1 and len(batches[-1]) < n_components:
            batches[-2:] = [np.concatenate(batches[-2:])]
        apply = _batch_transform(pipeline[:-1]) if len(pipeline) > 1 else None
        raw = None
        for rows in tqdm(batches, desc="train: incremental PCA", unit="batch", disable=None, leave=False):
            raw = _read_rows(features, rows, raw)
            model.partial_fit(apply(raw) if apply else raw)
            release_pages(features)

    if n_components:
        steps.append(("pca", IncrementalPCA(n_components=n_components, whiten=pca["whiten"], batch_size=batch_size)))
        # the train rows' embedding is small (n x n_components): cluster it in one go
        steps[-1:], embedding = _fit_transform(steps, features, is_train, pca_on_all, fit_in_batches, batch_size, cache)
    else:
        embedding = _embed_rows(Pipeline(steps + [("none", None)]), features, train_rows, batch_size)
    # k-means as MiniBatchKMeans; the others cluster the (small) embedding as they are
    model = fit_clusterer(clusterer, embedding, kmeans, clusterers, auto_k, batch_size=batch_size)
    return Pipeline(steps + [(clusterer, model)])


@one_thread()
def evaluate_model(pipeline, features: np.ndarray, index: list[dict], *, random_state: int = 0) -> dict:
    """Cluster every row and score train rows, test rows and all original images separately.

    Test rows are the split's test images: originals only in the honest protocol; in the tutorial
    protocol they include augmented copies, exactly as the seed recipe scored them. ``originals``
    are the train and test images that are no augmented copy (op ``none``): with a test split of a
    few dozen images, the steadier figure. ``rows`` holds each scored group's row mask.
    """
    embedding = embed(pipeline, features)
    clusters = pipeline.steps[-1][1].predict(embedding)
    labels = np.array([row["class"] for row in index])
    splits = np.array([row["split"] for row in index])
    groups = {split: splits == split for split in ("train", "test")}
    groups[ORIGINALS] = np.array([row.get("op", "none") == "none" for row in index], dtype=bool)
    metrics, rows_of = {}, {}
    for name, rows in groups.items():
        if rows.any():
            rows_of[name] = rows
            metrics[name] = clustering_metrics(clusters[rows], labels[rows], embedding[rows], random_state=random_state)
    return {
        "clusters": clusters,
        "embedding": embedding,
        "labels": labels,
        "splits": splits,
        "metrics": metrics,
        "rows": rows_of,
    }


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
    cache=None,
) -> list[dict]:
    """Fit the transform part of the model once (or take it from ``cache``, as ``fit_model``), then
    the clusterer for every k on the TRAIN rows, with the same settings as ``fit_model``."""
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
        cache=cache,
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
