"""Fit (pixel scaling,) PCA (optional) and KMeans on the TRAIN features; labels are never used."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import typer
from tqdm import tqdm

from imgclust.cliopts import bool_option
from imgclust.errors import InputDataError, ParamError
from imgclust.featurize import load_features

SVD_SOLVERS = ("auto", "full", "covariance_eigh", "arpack", "randomized")


def check_params(n_fit_pca: int, n_train: int, n_features: int, n_components: int | None,
                 n_clusters: int, svd_solver: str) -> None:
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


def build_and_fit(features: np.ndarray, is_train: np.ndarray, *, method: str, n_components: int | None,
                  whiten: bool = False, svd_solver: str = "auto", n_clusters: int = 3, n_init: int = 10,
                  random_state: int = 0, pca_on_all: bool = False, scalable_threshold: int = 20000,
                  batch_size: int = 256):
    """Return a fitted ``Pipeline``. PCA is fitted on the train rows, or on all rows when
    ``pca_on_all`` (the tutorial protocol, as the seed recipe did); KMeans always on train rows.

    From ``scalable_threshold`` rows on, PCA is an IncrementalPCA and KMeans a MiniBatchKMeans, both
    fed ``batch_size`` rows at a time from the (memory-mapped) features, so memory stays bounded.
    """
    n_fit = len(features) if pca_on_all else int(np.count_nonzero(is_train))
    if n_fit >= scalable_threshold > 0:
        return _fit_in_batches(features, is_train, method=method, n_components=n_components or None,
                               whiten=whiten, n_clusters=n_clusters, n_init=n_init, random_state=random_state,
                               pca_on_all=pca_on_all, batch_size=batch_size)
    from sklearn.cluster import KMeans
    from sklearn.decomposition import PCA
    from sklearn.pipeline import Pipeline

    from imgclust.features import PixelScaler

    n_components = n_components or None  # 0 means no PCA, as in params.yaml
    is_train = np.asarray(is_train, dtype=bool)
    n_train = int(is_train.sum())
    n_fit_pca = len(features) if pca_on_all else n_train
    check_params(n_fit_pca, n_train, features.shape[1], n_components, n_clusters, svd_solver)
    steps = [("scale", PixelScaler())] if method == "pixels" else []
    if n_components:
        # copy=False: PCA receives a float matrix made for this fit alone (scaled pixels or a
        # fancy-indexed copy; a read-only memory map is still copied), so it is centred in place
        # instead of being duplicated (2.6 GB for 18,000 images of 190x190)
        steps.append(("pca", PCA(n_components=n_components, whiten=whiten, svd_solver=svd_solver,
                                 random_state=random_state, copy=False)))
    kmeans = KMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state)
    pipeline = Pipeline(steps + [("kmeans", kmeans)])
    if len(steps) == 0:
        pipeline.fit(features[is_train])
        return pipeline
    pipeline[:-1].fit(features if pca_on_all else features[is_train])
    kmeans.fit(embed(pipeline, features[is_train]))  # batch by batch: no second full float matrix
    return pipeline


def embed(pipeline, features: np.ndarray, batch_size: int = 2048) -> np.ndarray:
    """The clustering space (all steps but KMeans) of ``features``, computed batch by batch so that
    memory-mapped features are never loaded whole."""

    from imgclust.featurize import release_pages

    transform = pipeline[:-1] if len(pipeline.steps) > 1 else None
    parts = []
    for start in range(0, len(features), batch_size):
        batch = np.asarray(features[start:start + batch_size])
        parts.append(transform.transform(batch) if transform else batch.astype(np.float32))
        release_pages(features)
    return np.concatenate(parts) if parts else np.empty((0, 0), np.float32)


def _fit_in_batches(features, is_train, *, method, n_components, whiten, n_clusters, n_init, random_state,
                    pca_on_all, batch_size):
    from sklearn.cluster import MiniBatchKMeans
    from sklearn.decomposition import IncrementalPCA
    from sklearn.pipeline import Pipeline

    from imgclust.featurize import release_pages
    from imgclust.features import PixelScaler
    from imgclust.parallel import iter_batches

    is_train = np.asarray(is_train, dtype=bool)
    train_rows = np.flatnonzero(is_train)
    pca_rows = np.arange(len(features)) if pca_on_all else train_rows
    check_params(len(pca_rows), len(train_rows), features.shape[1], n_components, n_clusters, "auto")
    if n_components and batch_size < n_components:
        raise ParamError(f"train.scalable.batch_size={batch_size} must be >= train.pca.n_components={n_components}.")
    steps = [("scale", PixelScaler())] if method == "pixels" else []
    if n_components:
        pca = IncrementalPCA(n_components=n_components, whiten=whiten, batch_size=batch_size)
        # the last batch may be smaller than n_components, which partial_fit refuses: merge it
        batches = list(iter_batches(pca_rows, batch_size))
        if len(batches) > 1 and len(batches[-1]) < n_components:
            batches[-2:] = [np.concatenate(batches[-2:])]
        for rows in tqdm(batches, desc="train: incremental PCA", unit="batch", disable=None, leave=False):
            chunk = np.asarray(features[rows])
            pca.partial_fit(steps[0][1].transform(chunk) if steps else chunk)
            release_pages(features)
        steps.append(("pca", pca))
    kmeans = MiniBatchKMeans(n_clusters=n_clusters, n_init=n_init, random_state=random_state,
                             batch_size=batch_size)
    pipeline = Pipeline(steps + [("kmeans", kmeans)])
    # the train rows' embedding is small (n x n_components): cluster it in one go
    parts = []
    for rows in iter_batches(train_rows, batch_size):
        parts.append(embed(pipeline, np.asarray(features[rows]), batch_size))
        release_pages(features)  # fancy indexing maps the rows' pages in: let them go again
    kmeans.fit(np.concatenate(parts))
    return pipeline


def command(
    features_dir: Path = typer.Option(Path("data/features"), "--features", help="featurize output folder."),
    out: Path = typer.Option(Path("models/model.joblib"), help="Fitted pipeline to write."),
    protocol: str = typer.Option("honest", help="honest or tutorial (PCA fitted on all rows)."),
    n_components: int = typer.Option(50, help="PCA components (0: no PCA)."),
    whiten: str = bool_option(False, "--whiten", help="Whiten PCA components."),
    svd_solver: str = typer.Option("auto", help="PCA solver."),
    n_clusters: int = typer.Option(3, help="KMeans clusters."),
    n_init: int = typer.Option(10, help="KMeans initialisations."),
    random_state: int = typer.Option(0, help="Seed of PCA and KMeans."),
    scalable_threshold: int = typer.Option(20000, help="Rows from which IncrementalPCA + MiniBatchKMeans are used (0: never)."),
    batch_size: int = typer.Option(256, help="Rows per batch for the scalable solvers (memory grows with it)."),
) -> None:
    import joblib

    from imgclust.fsutil import atomic_file

    from imgclust.augment import PROTOCOLS

    if protocol not in PROTOCOLS:
        raise ParamError(f"unknown protocol {protocol!r}; use one of {', '.join(PROTOCOLS)}.")
    features, index, meta = load_features(features_dir)
    is_train = np.array([row["split"] == "train" for row in index])
    if not is_train.any():
        raise InputDataError(f"{features_dir}: no train rows; check the split stage.")
    pipeline = build_and_fit(features, is_train, method=meta["method"], n_components=n_components or None,
                             whiten=whiten, svd_solver=svd_solver, n_clusters=n_clusters, n_init=n_init,
                             random_state=random_state, pca_on_all=protocol == "tutorial",
                             scalable_threshold=scalable_threshold, batch_size=batch_size)
    with atomic_file(out) as tmp:
        joblib.dump(pipeline, tmp)
    typer.echo(f"train: {' -> '.join(pipeline.named_steps)} on {int(is_train.sum())} train rows -> {out}")
